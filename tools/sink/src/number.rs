//! Phone numbers as the sink sees them: opaque strings that only need matching and masking.
//!
//! The sink deliberately does not validate or reformat numbers; a fake provider that
//! "fixed" numbers would hide bugs in the sender.

/// The form two numbers are compared in.
///
/// Senders and test clients disagree on the leading `+`, and a `+` written unescaped in a
/// query string arrives decoded as a space, so both are dropped along with surrounding
/// whitespace.
pub(crate) fn normalise(number: &str) -> &str {
    let trimmed = number.trim();
    trimmed.strip_prefix('+').unwrap_or(trimmed).trim_start()
}

/// A number fit for logs: the first four and last two digits survive, the rest become `*`.
///
/// Numbers too short to keep anything hidden are masked entirely.
pub(crate) fn mask(number: &str) -> String {
    const KEEP_HEAD: usize = 4;
    const KEEP_TAIL: usize = 2;
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let reveal = digits > KEEP_HEAD + KEEP_TAIL;
    let mut seen = 0;
    number
        .chars()
        .map(|c| {
            if !c.is_ascii_digit() {
                return c;
            }
            let index = seen;
            seen += 1;
            if reveal && (index < KEEP_HEAD || index >= digits - KEEP_TAIL) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{mask, normalise};

    #[test]
    fn leading_plus_is_ignored_when_comparing() {
        assert_eq!(normalise("+14155550100"), normalise("14155550100"));
    }

    #[test]
    fn a_plus_decoded_as_space_is_ignored_too() {
        assert_eq!(normalise(" 14155550100"), "14155550100");
        assert_eq!(normalise("  +14155550100 "), "14155550100");
    }

    #[test]
    fn only_one_leading_plus_is_stripped() {
        assert_eq!(normalise("++1"), "+1");
    }

    #[test]
    fn masking_keeps_four_leading_and_two_trailing_digits() {
        assert_eq!(mask("+14155550100"), "+1415*****00");
        assert_eq!(mask("14155550100"), "1415*****00");
    }

    #[test]
    fn masking_leaves_formatting_characters_alone() {
        assert_eq!(mask("+1 (415) 555-0100"), "+1 (415) ***-**00");
    }

    #[test]
    fn short_numbers_are_masked_entirely() {
        assert_eq!(mask("123456"), "******");
        assert_eq!(mask(""), "");
    }
}
