//! The allow list: numbers, number prefixes and API keys that the counting rules (velocity
//! limits, the conversion breaker) leave alone, for QA numbers and known-good traffic.
//! Number types and countries still apply to them.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::phone_number::{PhoneNumber, PhoneNumberError};

/// Longest note kept with an allow-list entry.
pub const MAX_ALLOW_NOTE_CHARS: usize = 200;

/// What an allow-list entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllowKind {
    /// One number, in E.164.
    Number,
    /// Every number whose E.164 form starts with this (`+44791`).
    Prefix,
    /// Every request made with this stored API key (its id, as `verify-api keys list`
    /// prints it).
    ApiKey,
}

impl AllowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Number => "number",
            Self::Prefix => "prefix",
            Self::ApiKey => "api_key",
        }
    }
}

impl FromStr for AllowKind {
    type Err = AllowEntryError;

    fn from_str(text: &str) -> Result<Self, AllowEntryError> {
        match text {
            "number" => Ok(Self::Number),
            "prefix" => Ok(Self::Prefix),
            "api_key" => Ok(Self::ApiKey),
            _ => Err(AllowEntryError::Kind),
        }
    }
}

impl fmt::Display for AllowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an allow-list entry is refused; each variant names one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowEntryError {
    #[error("the kind must be number, prefix or api_key")]
    Kind,
    #[error("{0}")]
    Number(PhoneNumberError),
    #[error("a prefix is '+' and 1 to 14 digits, the first not 0 (+44791)")]
    Prefix,
    #[error("an API key is named by its id, a UUID as `verify-api keys list` prints it")]
    ApiKey,
    #[error(
        "the note may have at most {MAX_ALLOW_NOTE_CHARS} characters and no control characters"
    )]
    Note,
}

impl AllowEntryError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Kind => "kind",
            Self::Number(_) | Self::Prefix | Self::ApiKey => "value",
            Self::Note => "note",
        }
    }
}

/// A valid allow-list entry: its kind, its value in canonical form and a note for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    kind: AllowKind,
    value: String,
    note: String,
}

impl AllowEntry {
    /// Reads an entry. Numbers are normalised to E.164, API key ids to lower-case UUIDs.
    ///
    /// # Errors
    /// [`AllowEntryError`] naming the field that is wrong.
    pub fn parse(kind: &str, value: &str, note: Option<&str>) -> Result<Self, AllowEntryError> {
        let kind: AllowKind = kind.parse()?;
        let value = match kind {
            AllowKind::Number => PhoneNumber::parse(value)
                .map_err(AllowEntryError::Number)?
                .as_str()
                .to_owned(),
            AllowKind::Prefix => {
                let digits = value
                    .trim()
                    .strip_prefix('+')
                    .ok_or(AllowEntryError::Prefix)?;
                let shaped = (1..=14).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0');
                if !shaped {
                    return Err(AllowEntryError::Prefix);
                }
                format!("+{digits}")
            }
            AllowKind::ApiKey => Uuid::parse_str(value.trim())
                .map_err(|_| AllowEntryError::ApiKey)?
                .to_string(),
        };
        let note = note.unwrap_or_default().trim();
        if note.chars().count() > MAX_ALLOW_NOTE_CHARS || note.chars().any(char::is_control) {
            return Err(AllowEntryError::Note);
        }
        Ok(Self {
            kind,
            value,
            note: note.to_owned(),
        })
    }

    pub fn kind(&self) -> AllowKind {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    pub fn note(&self) -> &str {
        &self.note
    }
}

/// The allow list as every API process holds it, for asking whether a request is on it.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    numbers: HashSet<String>,
    prefixes: HashSet<String>,
    api_keys: HashSet<String>,
}

impl AllowList {
    /// The list of `entries`, each a kind and a value in canonical form (as
    /// [`AllowEntry::parse`] leaves it and as stored).
    pub fn new<'a>(entries: impl IntoIterator<Item = (AllowKind, &'a str)>) -> Self {
        let mut list = Self::default();
        for (kind, value) in entries {
            let set = match kind {
                AllowKind::Number => &mut list.numbers,
                AllowKind::Prefix => &mut list.prefixes,
                AllowKind::ApiKey => &mut list.api_keys,
            };
            set.insert(value.to_owned());
        }
        list
    }

    /// Which kind of entry allows a request to `to` made with the API key `api_key` (its
    /// stored id), if any: the number, a prefix of it, or the key.
    pub fn allows(&self, to: &PhoneNumber, api_key: &str) -> Option<AllowKind> {
        let number = to.as_str();
        if self.numbers.contains(number) {
            return Some(AllowKind::Number);
        }
        // At most 15 lookups: one per leading part of the number, `+` and one digit first.
        if !self.prefixes.is_empty()
            && (2..=number.len()).any(|end| self.prefixes.contains(&number[..end]))
        {
            return Some(AllowKind::Prefix);
        }
        self.api_keys.contains(api_key).then_some(AllowKind::ApiKey)
    }
}

#[cfg(test)]
mod tests {
    use super::{AllowEntry, AllowEntryError, AllowKind, AllowList};
    use crate::domain::PhoneNumber;

    #[test]
    fn the_list_allows_its_numbers_their_prefixes_and_its_api_keys() {
        let key = "0190c0de-0000-7000-8000-000000000001";
        let list = AllowList::new([
            (AllowKind::Number, "+14155550100"),
            (AllowKind::Prefix, "+44791"),
            (AllowKind::ApiKey, key),
        ]);
        let number = |text: &str| PhoneNumber::parse(text).unwrap();
        assert_eq!(
            list.allows(&number("+14155550100"), "other"),
            Some(AllowKind::Number)
        );
        assert_eq!(
            list.allows(&number("+447911123456"), "other"),
            Some(AllowKind::Prefix)
        );
        assert_eq!(
            list.allows(&number("+14155550101"), key),
            Some(AllowKind::ApiKey)
        );
        assert_eq!(list.allows(&number("+14155550101"), "other"), None);
        assert_eq!(list.allows(&number("+447811123456"), "other"), None);
    }

    #[test]
    fn entries_are_normalised() {
        let number = AllowEntry::parse("number", "+1 (415) 555-0100", Some(" QA ")).unwrap();
        assert_eq!(
            (number.kind(), number.value(), number.note()),
            (AllowKind::Number, "+14155550100", "QA")
        );
        let prefix = AllowEntry::parse("prefix", "+44791", None).unwrap();
        assert_eq!(prefix.value(), "+44791");
        let key =
            AllowEntry::parse("api_key", "0190C0DE-0000-7000-8000-000000000001", None).unwrap();
        assert_eq!(key.value(), "0190c0de-0000-7000-8000-000000000001");
    }

    #[test]
    fn bad_entries_name_their_field() {
        let long_note = "n".repeat(201);
        let cases = [
            ("phone", "+14155550100", None, "kind"),
            ("number", "14155550100", None, "value"),
            ("prefix", "44791", None, "value"),
            ("prefix", "+0791", None, "value"),
            ("prefix", "+", None, "value"),
            ("prefix", "+123456789012345", None, "value"),
            ("api_key", "key-1", None, "value"),
            ("prefix", "+44", Some(long_note.as_str()), "note"),
            ("prefix", "+44", Some("line\nbreak"), "note"),
        ];
        for (kind, value, note, field) in cases {
            let error: AllowEntryError = AllowEntry::parse(kind, value, note).unwrap_err();
            assert_eq!(error.field(), field, "{kind} {value:?} {note:?}");
        }
    }
}
