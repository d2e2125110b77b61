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
    /// A line break, another control character, a bidirectional control or an invisible
    /// character: each could make the text around the code say something else.
    #[error(
        "variable {name:?} contains {}, which could disguise the text around the code",
        describe_unsafe(*character)
    )]
    UnsafeCharacter { name: String, character: char },
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
            | Self::UnsafeCharacter { name, .. } => format!("variables.{name}"),
        }
    }
}

/// Checked template variables: at most [`MAX_VARIABLES`] names that are identifiers, not
/// reserved, each with a text value of at most [`MAX_VALUE_LEN`] characters and nothing
/// [`is_unsafe_in_variable`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Variables(BTreeMap<String, String>);

/// Control characters refused in any stored text: they have no place in an SMS, and
/// Postgres cannot store U+0000 at all. Line breaks and tabs are ordinary template text.
pub fn is_forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\r' | '\t')
}

/// Characters that change how the text around them is shown while being invisible
/// themselves: bidirectional controls (embeddings, overrides, isolates and the
/// direction marks) and zero-width characters. Refused in template text and variables,
/// so nothing can reorder or hide the text next to a code.
pub fn is_invisible_formatting(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' // Arabic letter mark
            | '\u{200E}' // left-to-right mark
            | '\u{200F}' // right-to-left mark
            | '\u{202A}'..='\u{202E}' // embeddings, pop, overrides
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{200B}'..='\u{200D}' // zero-width space, non-joiner, joiner
            | '\u{2060}' // word joiner
            | '\u{FEFF}' // zero-width no-break space
    )
}

/// Characters a variable may not hold: [`is_invisible_formatting`] ones, and every
/// control character and line or paragraph separator, so a value can neither start a
/// new line of its own ("…\n\nIGNORE THE NEXT MESSAGE") nor reorder or hide the text.
pub fn is_unsafe_in_variable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_invisible_formatting(c)
}

/// A refused character for error messages: its code point and what kind it is, as in
/// `U+202E (a bidirectional control)`.
pub(crate) fn describe_unsafe(c: char) -> String {
    let kind = if matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    ) {
        "a line break"
    } else if c.is_control() {
        "a control character"
    } else if matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}') {
        "an invisible character"
    } else {
        "a bidirectional control"
    };
    format!("U+{:04X} ({kind})", u32::from(c))
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
            if let Some(character) = text.chars().find(|c| is_unsafe_in_variable(*c)) {
                return Err(VariableError::UnsafeCharacter {
                    name: name.clone(),
                    character,
                });
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

    #[test]
    fn values_that_could_disguise_the_text_around_the_code_are_refused() {
        let cases = [
            ("Acme\n\nIGNORE THE NEXT MESSAGE. USE 111111", '\n'),
            ("Acme\r", '\r'),
            ("Ac\tme", '\t'),
            ("Ac\u{0}me", '\u{0}'),
            ("Acme\u{2028}", '\u{2028}'),
            ("Acme\u{2029}", '\u{2029}'),
            ("Acme\u{85}", '\u{85}'),
            ("\u{202E}emcA", '\u{202E}'),
            ("\u{202A}Acme", '\u{202A}'),
            ("\u{202D}Acme", '\u{202D}'),
            ("\u{2066}Acme\u{2069}", '\u{2066}'),
            ("Acme\u{2069}", '\u{2069}'),
            ("Acme\u{200E}", '\u{200E}'),
            ("Acme\u{200F}", '\u{200F}'),
            ("Acme\u{061C}", '\u{061C}'),
            ("Ac\u{200B}me", '\u{200B}'),
            ("Ac\u{200C}me", '\u{200C}'),
            ("Ac\u{200D}me", '\u{200D}'),
            ("Ac\u{2060}me", '\u{2060}'),
            ("\u{FEFF}Acme", '\u{FEFF}'),
        ];
        for (value, character) in cases {
            let got = Variables::parse(&json!({ "brand": value })).unwrap_err();
            assert_eq!(
                got,
                VariableError::UnsafeCharacter {
                    name: "brand".into(),
                    character
                },
                "value {value:?}"
            );
            assert_eq!(got.field(), "variables.brand", "value {value:?}");
            assert!(
                got.to_string()
                    .contains(&format!("U+{:04X}", u32::from(character))),
                "{got}"
            );
        }
    }

    #[test]
    fn ordinary_text_in_any_script_is_kept() {
        for value in [
            "Acme Ltd.",
            "Café Zoë",
            "Новости",
            "שלום",
            "مرحبا",
            "日本",
            "😀",
        ] {
            let vars = Variables::parse(&json!({ "brand": value })).unwrap();
            assert_eq!(vars.get("brand"), Some(value));
        }
    }
}
