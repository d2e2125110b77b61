//! Phone numbers in E.164 form, checked against libphonenumber's numbering plans.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use crate::domain::numbering::NumberClass;

/// Why a string is not an acceptable phone number. Each variant maps to a stable API
/// error, so callers match on it rather than on text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("the phone number is empty")]
    Empty,
    #[error(
        "the phone number must be in international form, starting with '+' and the country code"
    )]
    MissingPlus,
    #[error("the phone number contains an invalid character {0:?}")]
    InvalidCharacter(char),
    #[error("the phone number has {0} digits; E.164 numbers have 8 to 15")]
    WrongLength(usize),
    #[error("the phone number's country code is not assigned")]
    UnknownCountryCode,
    #[error("the phone number is not a valid number in its country's numbering plan")]
    NotValidInCountry,
}

/// A phone number in E.164 form: `+`, a country code without a leading 0, 8–15 digits in
/// all, and valid in that country's numbering plan. `Debug` and [`PhoneNumber::masked`]
/// hide the middle digits so logs do not leak who is being verified.
///
/// Its type and region ([`PhoneNumber::class`]) are known from parsing, which classifies
/// the number to validate it anyway; a number read back from storage classifies itself
/// the first time it is asked. Equality and hashing look at the E.164 text only.
#[derive(Clone)]
pub struct PhoneNumber {
    e164: String,
    class: OnceLock<Option<NumberClass>>,
}

impl PartialEq for PhoneNumber {
    fn eq(&self, other: &Self) -> bool {
        self.e164 == other.e164
    }
}

impl Eq for PhoneNumber {}

impl Hash for PhoneNumber {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.e164.hash(state);
    }
}

/// Separators people type inside numbers; they carry no meaning and are dropped.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}')
}

impl PhoneNumber {
    /// Parses a number written in international form (`+44 7911 123456`, `+1 (415) 555-0100`).
    ///
    /// # Errors
    /// A [`PhoneNumberError`] naming the first problem found.
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        let Some(rest) = trimmed.strip_prefix('+') else {
            return Err(PhoneNumberError::MissingPlus);
        };
        Self::parse_digits(rest)
    }

    /// Parses a number that may come without the leading `+` but is always international
    /// (country code first), as in PortaText's `/number_verify/14155550100` paths.
    ///
    /// # Errors
    /// A [`PhoneNumberError`] naming the first problem found.
    pub fn parse_international(input: &str) -> Result<Self, PhoneNumberError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        Self::parse_digits(trimmed.strip_prefix('+').unwrap_or(trimmed))
    }

    fn parse_digits(rest: &str) -> Result<Self, PhoneNumberError> {
        let mut digits = String::with_capacity(16);
        for c in rest.chars().filter(|c| !is_separator(*c)) {
            if !c.is_ascii_digit() {
                return Err(PhoneNumberError::InvalidCharacter(c));
            }
            digits.push(c);
        }
        if digits.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(PhoneNumberError::WrongLength(digits.len()));
        }
        if digits.starts_with('0') {
            return Err(PhoneNumberError::UnknownCountryCode);
        }
        let e164 = format!("+{digits}");
        let parsed = parse_metadata(&e164)?;
        let class = NumberClass::of(&parsed).ok_or(PhoneNumberError::NotValidInCountry)?;
        // Re-format so that numbers typed with a national trunk prefix after the country
        // code (e.g. `+44 (0)20…`) still end up in one canonical form.
        let canonical = parsed.format().mode(phonenumber::Mode::E164).to_string();
        Ok(Self {
            e164: canonical,
            class: OnceLock::from(Some(class)),
        })
    }

    /// Wraps a number read back from the database, where only parsed numbers are written.
    pub fn from_trusted_storage(e164: String) -> Self {
        Self {
            e164,
            class: OnceLock::new(),
        }
    }

    /// The E.164 string, `+` included.
    pub fn as_str(&self) -> &str {
        &self.e164
    }

    /// The number with its middle digits replaced by `*`, for logs.
    pub fn masked(&self) -> String {
        mask(&self.e164)
    }

    /// The number without its last four digits (`+1415555` for `+14155550100`): the
    /// range a pumping attack walks through. The conversion breaker groups numbers the
    /// same way in SQL (`db::abuse`), so the two must agree.
    pub fn prefix(&self) -> &str {
        // E.164 numbers have at least 8 digits, so four remain after the cut, and every
        // character is ASCII.
        &self.e164[..self.e164.len() - 4]
    }

    /// The number's type and region in its numbering plan. Always known for a number
    /// that was parsed; `None` only for a number read back from storage that the numbering
    /// plans of this build no longer recognise.
    pub fn class(&self) -> Option<NumberClass> {
        *self.class.get_or_init(|| {
            parse_metadata(&self.e164)
                .ok()
                .and_then(|parsed| NumberClass::of(&parsed))
        })
    }
}

/// Parses E.164 text with libphonenumber.
fn parse_metadata(e164: &str) -> Result<phonenumber::PhoneNumber, PhoneNumberError> {
    phonenumber::parse(None, e164).map_err(|error| match error {
        phonenumber::ParseError::InvalidCountryCode => PhoneNumberError::UnknownCountryCode,
        _ => PhoneNumberError::NotValidInCountry,
    })
}

/// Masks all but the first four and last two characters of a phone number.
pub fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let keep_end = chars.len() - 2;
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 4 || i >= keep_end { *c } else { '*' })
        .collect()
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.e164
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::{PhoneNumber, PhoneNumberError};
    use crate::domain::numbering::NumberType;

    #[test]
    fn a_numbers_prefix_is_its_e164_form_without_the_last_four_digits() {
        let number = PhoneNumber::parse("+1 415 555 0100").unwrap();
        assert_eq!(number.prefix(), "+1415555");
        let short = PhoneNumber::parse("+49 30 901820").unwrap();
        assert_eq!(short.prefix(), "+493090");
    }

    #[test]
    fn valid_numbers_in_common_notations_normalise_to_e164() {
        let cases = [
            ("+14155550100", "+14155550100"),
            ("+1 (415) 555-0100", "+14155550100"),
            (" +44 7911 123456 ", "+447911123456"),
            ("+49 30 901820", "+4930901820"),
            ("+34 612 345 678", "+34612345678"),
        ];
        for (input, expected) in cases {
            let parsed = PhoneNumber::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.as_str(), expected, "input {input:?}");
        }
    }

    #[test]
    fn bad_numbers_are_rejected_with_the_reason() {
        let cases = [
            ("", PhoneNumberError::Empty),
            ("   ", PhoneNumberError::Empty),
            ("4155550100", PhoneNumberError::MissingPlus),
            ("+1415555010a", PhoneNumberError::InvalidCharacter('a')),
            (
                "+1 415 555 0100 ext 2",
                PhoneNumberError::InvalidCharacter('e'),
            ),
            ("+1234", PhoneNumberError::WrongLength(4)),
            ("+1234567890123456", PhoneNumberError::WrongLength(16)),
            ("+0123456789", PhoneNumberError::UnknownCountryCode),
            ("+99912345678", PhoneNumberError::UnknownCountryCode),
            ("+10000000000", PhoneNumberError::NotValidInCountry),
        ];
        for (input, expected) in cases {
            assert_eq!(PhoneNumber::parse(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn international_digits_without_plus_are_accepted_where_allowed() {
        let parsed = PhoneNumber::parse_international("14155550100").unwrap();
        assert_eq!(parsed.as_str(), "+14155550100");
        assert_eq!(
            PhoneNumber::parse_international("+14155550100")
                .unwrap()
                .as_str(),
            "+14155550100"
        );
    }

    #[test]
    fn debug_and_display_mask_the_middle_digits() {
        let number = PhoneNumber::parse("+14155550100").unwrap();
        assert_eq!(format!("{number:?}"), "PhoneNumber(+141******00)");
        assert_eq!(number.to_string(), "+141******00");
        assert!(!format!("{number:?}").contains("5550"));
    }

    #[test]
    fn every_generated_north_american_number_parses_and_round_trips() {
        // A deterministic sweep stands in for a property test: numbers built from real
        // area codes with varying exchanges and lines must all parse to themselves.
        let areas = ["212", "415", "617", "646", "312", "206"];
        for n in 0..600u32 {
            let area = areas[(n as usize) % areas.len()];
            let exchange = 200 + (n * 37) % 800;
            let line = (n * 7_919) % 10_000;
            let e164 = format!("+1{area}{exchange}{line:04}");
            let parsed = PhoneNumber::parse(&e164).unwrap_or_else(|e| panic!("{e164}: {e}"));
            assert_eq!(parsed.as_str(), e164);
            assert_eq!(PhoneNumber::parse(parsed.as_str()).unwrap(), parsed);
        }
    }

    #[test]
    fn numbers_carry_the_type_and_region_of_their_numbering_plan() {
        // Example numbers of libphonenumber's metadata for each type.
        let cases = [
            ("+18002345678", NumberType::TollFree, "US"),
            ("+19002345678", NumberType::PremiumRate, "US"),
            ("+12015550123", NumberType::FixedLineOrMobile, "US"),
            ("+449012345678", NumberType::PremiumRate, "GB"),
            ("+448001234567", NumberType::TollFree, "GB"),
            ("+447640123456", NumberType::Pager, "GB"),
            ("+445512345678", NumberType::Uan, "GB"),
            ("+445612345678", NumberType::Voip, "GB"),
            ("+447012345678", NumberType::PersonalNumber, "GB"),
            ("+447400123456", NumberType::Mobile, "GB"),
            ("+4918012345", NumberType::SharedCost, "DE"),
            ("+49177991234567", NumberType::Voicemail, "DE"),
            ("+4915123456789", NumberType::Mobile, "DE"),
            ("+33891123456", NumberType::PremiumRate, "FR"),
            ("+33884012345", NumberType::SharedCost, "FR"),
            ("+80012345678", NumberType::TollFree, "001"),
            ("+883510012345", NumberType::Voip, "001"),
            ("+2348021234567", NumberType::Mobile, "NG"),
            // Italian fixed lines keep a leading 0 after the country code.
            ("+390236618300", NumberType::FixedLine, "IT"),
            ("+390669812345", NumberType::FixedLine, "VA"),
        ];
        let mut wrong = Vec::new();
        for (input, number_type, region) in cases {
            let class = PhoneNumber::parse(input)
                .unwrap_or_else(|e| panic!("{input}: {e}"))
                .class()
                .unwrap_or_else(|| panic!("{input} has no class"));
            if (class.number_type, class.region.as_str()) != (number_type, region) {
                wrong.push(format!(
                    "{input}: {} in {}, expected {number_type} in {region}",
                    class.number_type, class.region
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn a_number_read_back_from_storage_classifies_itself_like_a_parsed_one() {
        let stored = PhoneNumber::from_trusted_storage("+449012345678".to_owned());
        assert_eq!(
            stored.class(),
            PhoneNumber::parse("+449012345678").unwrap().class()
        );
        assert_eq!(stored, PhoneNumber::parse("+44 901 234 5678").unwrap());
    }
}
