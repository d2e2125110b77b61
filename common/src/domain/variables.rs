//! The caller-supplied values a template may read, besides the code itself.

use std::collections::BTreeMap;

use serde::Serialize;

/// Most variables one verification may carry.
pub const MAX_VARIABLES: usize = 20;
/// Longest variable name.
pub const MAX_NAME_LEN: usize = 40;
/// Longest variable value, in characters.
pub const MAX_VALUE_LEN: usize = 200;
/// Names filled in by Verify itself, which callers may not set.
pub const RESERVED_NAMES: [&str; 2] = ["code", "ttl_minutes"];

/// Why a set of variables was refused. [`VariableError::field`] names the offending key
/// for the API's error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    #[error("variables must be a JSON object of names to text values")]
    NotAnObject,
    #[error("at most {MAX_VARIABLES} variables are allowed, got {0}")]
    TooMany(usize),
    #[error(
        "variable name {0:?} is not allowed: use 1-{MAX_NAME_LEN} letters, digits or '_', starting with a letter or '_'"
    )]
    InvalidName(String),
    #[error("variable {0:?} is set by Verify and cannot be supplied")]
    Reserved(String),
    #[error("variable {0:?} must be a string or a number")]
    NotText(String),
    #[error("variable {0:?} is longer than {MAX_VALUE_LEN} characters")]
    TooLong(String),
    #[error("variable {0:?} contains a control character")]
    ControlCharacter(String),
}

impl VariableError {
    /// The request field the error is about, such as `variables.brand`.
    pub fn field(&self) -> String {
        match self {
            Self::NotAnObject | Self::TooMany(_) => "variables".to_owned(),
            Self::InvalidName(name)
            | Self::Reserved(name)
            | Self::NotText(name)
            | Self::TooLong(name)
            | Self::ControlCharacter(name) => format!("variables.{name}"),
        }
    }
}

/// Checked template variables: at most [`MAX_VARIABLES`] names that are identifiers, not
/// reserved, each with a text value of at most [`MAX_VALUE_LEN`] characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Variables(BTreeMap<String, String>);

/// Control characters refused in any stored text: they have no place in an SMS, and
/// Postgres cannot store U+0000 at all. Line breaks and tabs are ordinary SMS text.
pub fn is_forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\r' | '\t')
}

/// True when `name` is a template identifier Verify accepts.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN
}

impl Variables {
    /// Parses a JSON object; numbers and booleans are accepted and kept as their text.
    ///
    /// # Errors
    /// [`VariableError`] for the first offending entry.
    pub fn parse(value: &serde_json::Value) -> Result<Self, VariableError> {
        let object = match value {
            serde_json::Value::Null => return Ok(Self::default()),
            serde_json::Value::Object(object) => object,
            _ => return Err(VariableError::NotAnObject),
        };
        if object.len() > MAX_VARIABLES {
            return Err(VariableError::TooMany(object.len()));
        }
        let mut map = BTreeMap::new();
        for (name, value) in object {
            if !is_identifier(name) {
                return Err(VariableError::InvalidName(name.clone()));
            }
            if RESERVED_NAMES.contains(&name.as_str()) {
                return Err(VariableError::Reserved(name.clone()));
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(VariableError::NotText(name.clone())),
            };
            if text.chars().count() > MAX_VALUE_LEN {
                return Err(VariableError::TooLong(name.clone()));
            }
            if text.chars().any(is_forbidden_control) {
                return Err(VariableError::ControlCharacter(name.clone()));
            }
            map.insert(name.clone(), text);
        }
        Ok(Self(map))
    }

    /// Rebuilds variables stored by [`Variables::to_json`]; anything malformed is dropped,
    /// which a later render reports as a missing variable.
    pub fn from_trusted_storage(value: &serde_json::Value) -> Self {
        Self::parse(value).unwrap_or_default()
    }

    /// The value of one variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The variables as a JSON object, for storage.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    /// Iterates over names and values in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::{VariableError, Variables};
    use serde_json::json;

    #[test]
    fn text_numbers_and_booleans_are_accepted() {
        let vars = Variables::parse(&json!({"brand": "Acme", "n": 3, "vip": true})).unwrap();
        assert_eq!(vars.get("brand"), Some("Acme"));
        assert_eq!(vars.get("n"), Some("3"));
        assert_eq!(vars.get("vip"), Some("true"));
        assert_eq!(
            Variables::parse(&json!(null)).unwrap(),
            Variables::default()
        );
    }

    #[test]
    fn bad_variables_name_the_offending_field() {
        let long = "x".repeat(201);
        let many: serde_json::Map<String, serde_json::Value> =
            (0..21).map(|i| (format!("v{i}"), json!("x"))).collect();
        let cases = [
            (json!([1]), VariableError::NotAnObject, "variables"),
            (json!(many), VariableError::TooMany(21), "variables"),
            (
                json!({"1abc": "x"}),
                VariableError::InvalidName("1abc".into()),
                "variables.1abc",
            ),
            (
                json!({"a.b": "x"}),
                VariableError::InvalidName("a.b".into()),
                "variables.a.b",
            ),
            (
                json!({"code": "1"}),
                VariableError::Reserved("code".into()),
                "variables.code",
            ),
            (
                json!({"o": {"x": 1}}),
                VariableError::NotText("o".into()),
                "variables.o",
            ),
            (
                json!({"t": long}),
                VariableError::TooLong("t".into()),
                "variables.t",
            ),
        ];
        for (input, error, field) in cases {
            let got = Variables::parse(&input).unwrap_err();
            assert_eq!(got, error, "input {input}");
            assert_eq!(got.field(), field, "input {input}");
        }
    }
}
