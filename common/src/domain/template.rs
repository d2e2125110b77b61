//! Message templates: names, locales and bodies that always render the code.
//!
//! A body is compiled with upon and test-rendered when it is saved. Rendering goes through
//! a value function that records every variable the body reads, so a body that does not
//! read `code` can never be stored, and the set of other variables it needs is known up
//! front. Blocks (`{% … %}`) are refused: SMS texts need substitution only, and without
//! blocks a render is a single linear pass over the text.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use upon::{Engine, Value, ValueAccess, ValueMember};
use utoipa::ToSchema;

use super::variables::{
    Variables, describe_unsafe, is_forbidden_control, is_identifier, is_invisible_formatting,
};

/// Longest template body, in characters (enough for several concatenated SMS).
pub const MAX_BODY_LEN: usize = 1_000;
/// Longest template name.
pub const MAX_NAME_LEN: usize = 100;
/// Longest template description.
pub const MAX_DESCRIPTION_LEN: usize = 500;

/// Why a template or its rendering was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template text is empty")]
    EmptyBody,
    #[error("the template text is longer than {MAX_BODY_LEN} characters")]
    BodyTooLong,
    #[error("the template text must contain {{{{code}}}}")]
    MissingCode,
    #[error("the template text contains a control character")]
    ControlCharacter,
    /// A bidirectional control or an invisible character, which could reorder or hide the
    /// text around the code.
    #[error(
        "the template text contains {}, which could disguise the text around the code",
        describe_unsafe(*.0)
    )]
    UnsafeCharacter(char),
    #[error("blocks ({{% … %}}) are not supported in SMS templates; use {{{{variable}}}} only")]
    BlocksNotAllowed,
    #[error("the template text does not compile: {0}")]
    Syntax(String),
    #[error("{{{{{0}}}}} is not a plain variable name; use letters, digits and '_' only")]
    InvalidVariable(String),
    #[error("the template needs the variable {0:?}, which was not supplied")]
    MissingVariable(String),
    #[error("the template name must be 1-{MAX_NAME_LEN} characters")]
    InvalidName,
    #[error(
        "the description must be at most {MAX_DESCRIPTION_LEN} characters without control characters"
    )]
    DescriptionTooLong,
    #[error("the locale must look like \"en\" or \"pt-BR\"")]
    InvalidLocale,
}

/// Identifies a stored template. Always positive: stored ids come from the table's
/// identity column, and an id given in a request is checked before it is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(transparent)]
pub struct TemplateId(i64);

/// A number that cannot be a template id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("template ids are positive integers, not {0}")]
pub struct InvalidTemplateId(pub i64);

impl TryFrom<i64> for TemplateId {
    type Error = InvalidTemplateId;

    fn try_from(id: i64) -> Result<Self, InvalidTemplateId> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(InvalidTemplateId(id))
        }
    }
}

impl TemplateId {
    /// The id as stored.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for TemplateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A new engine configured the way every template is compiled and rendered.
pub fn new_template_engine() -> Engine<'static> {
    Engine::new()
}

/// Built-in variables Verify fills in itself.
pub const BUILT_IN_VARIABLES: [&str; 2] = ["code", "ttl_minutes"];

/// The text used when a verification names no template, by language.
pub fn default_template_text(language: &str) -> Option<&'static str> {
    Some(match language {
        "en" => "Your verification code is {{code}}. It expires in {{ttl_minutes}} minutes.",
        "es" => "Tu código de verificación es {{code}}. Caduca en {{ttl_minutes}} minutos.",
        "pt" => "Seu código de verificação é {{code}}. Expira em {{ttl_minutes}} minutos.",
        "fr" => "Votre code de vérification est {{code}}. Il expire dans {{ttl_minutes}} minutes.",
        "de" => "Ihr Bestätigungscode lautet {{code}}. Er läuft in {{ttl_minutes}} Minuten ab.",
        "it" => "Il tuo codice di verifica è {{code}}. Scade tra {{ttl_minutes}} minuti.",
        "nl" => "Uw verificatiecode is {{code}}. Deze verloopt over {{ttl_minutes}} minuten.",
        _ => return None,
    })
}

/// A template's display name: 1–100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateName(String);

impl TemplateName {
    /// # Errors
    /// [`TemplateError::InvalidName`].
    pub fn parse(input: &str) -> Result<Self, TemplateError> {
        let trimmed = input.trim();
        let len = trimmed.chars().count();
        if len == 0 || len > MAX_NAME_LEN || trimmed.chars().any(char::is_control) {
            return Err(TemplateError::InvalidName);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text describing a template, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateDescription(String);

impl TemplateDescription {
    /// # Errors
    /// [`TemplateError::DescriptionTooLong`].
    pub fn parse(input: &str) -> Result<Self, TemplateError> {
        if input.chars().count() > MAX_DESCRIPTION_LEN || input.chars().any(is_forbidden_control) {
            return Err(TemplateError::DescriptionTooLong);
        }
        Ok(Self(input.trim().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A language tag such as `en` or `pt-BR`, normalised to lower-case language and
/// upper-case region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateLocale(String);

impl TemplateLocale {
    /// # Errors
    /// [`TemplateError::InvalidLocale`].
    pub fn parse(input: &str) -> Result<Self, TemplateError> {
        let mut parts = input.trim().split(['-', '_']);
        let language = parts.next().unwrap_or_default();
        let region = parts.next();
        let language_ok =
            (2..=3).contains(&language.len()) && language.chars().all(|c| c.is_ascii_alphabetic());
        let region_ok = region.is_none_or(|r| {
            (r.len() == 2 && r.chars().all(|c| c.is_ascii_alphabetic()))
                || (r.len() == 3 && r.chars().all(|c| c.is_ascii_digit()))
        });
        if !language_ok || !region_ok || parts.next().is_some() {
            return Err(TemplateError::InvalidLocale);
        }
        let mut tag = language.to_ascii_lowercase();
        if let Some(region) = region {
            tag.push('-');
            tag.push_str(&region.to_ascii_uppercase());
        }
        Ok(Self(tag))
    }

    /// The language part (`pt` of `pt-BR`).
    pub fn language(&self) -> &str {
        self.0.split('-').next().unwrap_or(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A template body that compiles, contains no blocks, no bidirectional controls or
/// invisible characters, and reads `{{code}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateBody {
    text: String,
    /// Variables the body reads other than the built-in ones, in name order.
    variables: Vec<String>,
}

/// Sample values used for test renders and previews.
const SAMPLE_CODE: &str = "123456";

impl TemplateBody {
    /// Compiles and test-renders a body.
    ///
    /// # Errors
    /// [`TemplateError`] naming what is wrong with the text.
    pub fn parse(engine: &Engine<'_>, text: &str) -> Result<Self, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::EmptyBody);
        }
        if text.chars().count() > MAX_BODY_LEN {
            return Err(TemplateError::BodyTooLong);
        }
        if text.contains("{%") {
            return Err(TemplateError::BlocksNotAllowed);
        }
        if text.chars().any(is_forbidden_control) {
            return Err(TemplateError::ControlCharacter);
        }
        if let Some(character) = text.chars().find(|c| is_invisible_formatting(*c)) {
            return Err(TemplateError::UnsafeCharacter(character));
        }
        let template = engine
            .compile(text)
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let mut read = BTreeSet::new();
        let mut invalid = None;
        template
            .render_from_fn(engine, |path: &[ValueMember<'_>]| {
                match plain_name(path) {
                    Some(name) => {
                        read.insert(name.to_owned());
                    }
                    None => invalid = Some(describe_path(path)),
                }
                Ok(Value::String("x".to_owned()))
            })
            .to_string()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        if let Some(path) = invalid {
            return Err(TemplateError::InvalidVariable(path));
        }
        if !read.contains("code") {
            return Err(TemplateError::MissingCode);
        }
        let variables = read
            .into_iter()
            .filter(|name| !BUILT_IN_VARIABLES.contains(&name.as_str()))
            .collect();
        Ok(Self {
            text: text.to_owned(),
            variables,
        })
    }

    /// The template source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Caller-supplied variables the body needs.
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The first variable the body needs that `supplied` lacks.
    pub fn first_missing_variable(&self, supplied: &Variables) -> Option<&str> {
        self.variables
            .iter()
            .map(String::as_str)
            .find(|name| supplied.get(name).is_none())
    }

    /// Renders the body with a code, its lifetime and the verification's own variables
    /// (nothing else is reachable from a template).
    ///
    /// # Errors
    /// [`TemplateError::MissingVariable`] when the body reads a variable not supplied.
    pub fn render(
        &self,
        engine: &Engine<'_>,
        code: &str,
        ttl_minutes: u64,
        variables: &Variables,
    ) -> Result<String, TemplateError> {
        if let Some(missing) = self.first_missing_variable(variables) {
            return Err(TemplateError::MissingVariable(missing.to_owned()));
        }
        self.render_with(engine, code, ttl_minutes, |name| variables.get(name))
    }

    /// Renders the body with every caller-supplied variable empty: the shortest text any
    /// verification using it can get with this code and lifetime.
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] only if the body stopped compiling, which a parsed body
    /// cannot.
    pub fn render_with_empty_variables(
        &self,
        engine: &Engine<'_>,
        code: &str,
        ttl_minutes: u64,
    ) -> Result<String, TemplateError> {
        self.render_with(engine, code, ttl_minutes, |_| Some(""))
    }

    fn render_with<'v>(
        &self,
        engine: &Engine<'_>,
        code: &str,
        ttl_minutes: u64,
        variable: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, TemplateError> {
        let template = engine
            .compile(self.text.as_str())
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let mut missing = None;
        let rendered = template
            .render_from_fn(engine, |path: &[ValueMember<'_>]| {
                let value = match plain_name(path) {
                    Some("code") => Some(code.to_owned()),
                    Some("ttl_minutes") => Some(ttl_minutes.to_string()),
                    Some(name) => variable(name).map(str::to_owned),
                    None => None,
                };
                value.map(Value::String).ok_or_else(|| {
                    let name = describe_path(path);
                    missing = Some(name.clone());
                    format!("missing variable {name}")
                })
            })
            .to_string();
        match (rendered, missing) {
            (Ok(text), _) => Ok(text),
            (Err(_), Some(name)) => Err(TemplateError::MissingVariable(name)),
            (Err(e), None) => Err(TemplateError::Syntax(e.to_string())),
        }
    }

    /// Renders with a sample code and the given variables, for previews.
    ///
    /// # Errors
    /// As [`TemplateBody::render`].
    pub fn render_sample(
        &self,
        engine: &Engine<'_>,
        ttl_minutes: u64,
        variables: &Variables,
    ) -> Result<String, TemplateError> {
        self.render(engine, SAMPLE_CODE, ttl_minutes, variables)
    }
}

fn plain_name<'a>(path: &[ValueMember<'a>]) -> Option<&'a str> {
    match path {
        [
            ValueMember {
                access: ValueAccess::Key(name),
                ..
            },
        ] if is_identifier(name) => Some(name),
        _ => None,
    }
}

fn describe_path(path: &[ValueMember<'_>]) -> String {
    path.iter()
        .map(|m| match m.access {
            ValueAccess::Key(k) => k.to_owned(),
            ValueAccess::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::{
        InvalidTemplateId, TemplateBody, TemplateError, TemplateId, TemplateLocale, TemplateName,
        default_template_text, new_template_engine,
    };
    use crate::domain::Variables;
    use serde_json::json;

    #[test]
    fn a_body_with_code_and_variables_compiles_and_lists_its_variables() {
        let engine = new_template_engine();
        let body = TemplateBody::parse(
            &engine,
            "{{brand}}: your code is {{ code }}. It expires in {{ttl_minutes}} minutes.",
        )
        .unwrap();
        assert_eq!(body.variables(), ["brand".to_owned()]);
        let vars = Variables::parse(&json!({"brand": "Acme"})).unwrap();
        let text = body.render(&engine, "424242", 10, &vars).unwrap();
        assert_eq!(text, "Acme: your code is 424242. It expires in 10 minutes.");
    }

    #[test]
    fn bodies_that_cannot_deliver_a_code_are_refused() {
        let engine = new_template_engine();
        let long = format!("{{{{code}}}}{}", "x".repeat(1_000));
        let cases: [(&str, TemplateError); 12] = [
            ("", TemplateError::EmptyBody),
            ("   ", TemplateError::EmptyBody),
            ("Hello {{name}}", TemplateError::MissingCode),
            (&long, TemplateError::BodyTooLong),
            (
                "{% if code %}{{code}}{% endif %}",
                TemplateError::BlocksNotAllowed,
            ),
            (
                "{{user.name}} {{code}}",
                TemplateError::InvalidVariable("user.name".into()),
            ),
            (
                "{{code}} {{x.0}}",
                TemplateError::InvalidVariable("x.0".into()),
            ),
            ("{{code}}\u{0}", TemplateError::ControlCharacter),
            (
                "Your code is {{code}}\u{202E}",
                TemplateError::UnsafeCharacter('\u{202E}'),
            ),
            (
                "\u{2067}{{code}}\u{2069}",
                TemplateError::UnsafeCharacter('\u{2067}'),
            ),
            (
                "Code:\u{200B} {{code}}",
                TemplateError::UnsafeCharacter('\u{200B}'),
            ),
            (
                "\u{FEFF}{{code}}",
                TemplateError::UnsafeCharacter('\u{FEFF}'),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                TemplateBody::parse(&engine, text),
                Err(expected),
                "text {text:?}"
            );
        }
        assert!(matches!(
            TemplateBody::parse(&engine, "{{code"),
            Err(TemplateError::Syntax(_))
        ));
        assert!(matches!(
            TemplateBody::parse(&engine, "{{code | shout}}"),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn line_breaks_and_any_script_are_ordinary_template_text() {
        let engine = new_template_engine();
        for text in [
            "Acme\n{{code}}",
            "Acme\r\nCode:\t{{code}}",
            "קוד האימות שלך: {{code}}",
            "رمزك هو {{code}}",
        ] {
            assert!(TemplateBody::parse(&engine, text).is_ok(), "text {text:?}");
        }
    }

    #[test]
    fn rendering_without_a_needed_variable_names_it() {
        let engine = new_template_engine();
        let body = TemplateBody::parse(&engine, "{{brand}} {{code}}").unwrap();
        assert_eq!(
            body.render(&engine, "1", 1, &Variables::default()),
            Err(TemplateError::MissingVariable("brand".into()))
        );
    }

    #[test]
    fn rendering_with_empty_variables_keeps_only_the_text_the_code_and_the_lifetime() {
        let engine = new_template_engine();
        let body = TemplateBody::parse(
            &engine,
            "{{brand}}: {{code}} ({{ttl_minutes}} min) {{brand}}",
        )
        .unwrap();
        assert_eq!(
            body.render_with_empty_variables(&engine, "123456", 10),
            Ok(": 123456 (10 min) ".to_owned())
        );
    }

    #[test]
    fn every_built_in_default_text_is_a_valid_body() {
        let engine = new_template_engine();
        for lang in ["en", "es", "pt", "fr", "de", "it", "nl"] {
            let text = default_template_text(lang).unwrap();
            let body = TemplateBody::parse(&engine, text).unwrap();
            assert!(body.variables().is_empty(), "{lang}");
        }
        assert_eq!(default_template_text("xx"), None);
    }

    #[test]
    fn template_ids_are_positive() {
        assert_eq!(TemplateId::try_from(7).map(TemplateId::get), Ok(7));
        for bad in [0, -1, i64::MIN] {
            assert_eq!(TemplateId::try_from(bad), Err(InvalidTemplateId(bad)));
        }
    }

    #[test]
    fn names_and_locales_are_normalised_or_refused() {
        assert_eq!(
            TemplateName::parse("  Welcome ").unwrap().as_str(),
            "Welcome"
        );
        assert_eq!(TemplateName::parse(""), Err(TemplateError::InvalidName));
        assert_eq!(TemplateName::parse("a\nb"), Err(TemplateError::InvalidName));
        assert_eq!(TemplateLocale::parse("pt_br").unwrap().as_str(), "pt-BR");
        assert_eq!(TemplateLocale::parse("es-419").unwrap().language(), "es");
        for bad in ["", "e", "english", "en-", "en-US-x", "12"] {
            assert_eq!(
                TemplateLocale::parse(bad),
                Err(TemplateError::InvalidLocale),
                "{bad}"
            );
        }
    }
}
