//! The phone numbers a run sends to: distinct, valid for the API's number check, and
//! different from run to run.
//!
//! The API allows only a few sends per number per window, so every POST of a run needs a
//! number of its own, and back-to-back runs must not reuse each other's. The numbers come
//! from a fixed space of US numbers (`+1 NPA NXX XXXX` for a list of big-city area codes and
//! every exchange from 200 to 999), which libphonenumber accepts in full; a run walks it
//! from a random start, or from `--numbers-from`.

use std::fmt;

/// Area codes whose every exchange 200–999 libphonenumber accepts (checked by a test).
const AREA_CODES: [u16; 20] = [
    201, 202, 206, 212, 213, 214, 215, 303, 305, 310, 312, 404, 415, 503, 602, 617, 646, 713, 718,
    773,
];
/// Numbers behind one area code: exchanges 200–999, each with lines 0000–9999.
const PER_AREA_CODE: u64 = 800 * 10_000;
/// How many numbers there are to walk through.
pub const SPACE_SIZE: u64 = AREA_CODES.len() as u64 * PER_AREA_CODE;

/// Where a run's numbers start. The `n`th number of a run is the `n`th after the start,
/// wrapping at the end of the space, so a run's numbers are distinct as long as it sends
/// fewer than [`SPACE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberSequence {
    start: u64,
}

/// A `--numbers-from` value outside the space the tool can walk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not `+1` followed by ten digits.
    #[error("`{0}` is not a US number of the form +1NPANXXXXXX")]
    NotUsNumber(String),
    /// A US number whose area code or exchange the tool does not use.
    #[error(
        "`{0}` is outside the numbers this tool sends to: +1, one of the area codes {AREA_CODES:?}, then an exchange from 200 to 999 and any four digits"
    )]
    OutsideSpace(String),
}

impl NumberSequence {
    /// A sequence starting at a random place, so that runs against the same deployment
    /// practically never share numbers.
    pub fn random() -> NumberSequence {
        NumberSequence {
            start: rand::random_range(0..SPACE_SIZE),
        }
    }

    /// A sequence whose first number is `first`, such as `+12122000000`.
    ///
    /// # Errors
    /// [`NumberError`] when `first` is not one of the numbers the tool sends to.
    pub fn starting_from(first: &str) -> Result<NumberSequence, NumberError> {
        let digits = first
            .trim()
            .strip_prefix("+1")
            .filter(|d| d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| NumberError::NotUsNumber(first.to_owned()))?;
        let outside = || NumberError::OutsideSpace(first.to_owned());
        let area: u16 = digits[..3].parse().map_err(|_| outside())?;
        let exchange: u64 = digits[3..6].parse().map_err(|_| outside())?;
        let line: u64 = digits[6..].parse().map_err(|_| outside())?;
        let area_index = AREA_CODES
            .iter()
            .position(|&a| a == area)
            .ok_or_else(outside)?;
        if exchange < 200 {
            return Err(outside());
        }
        Ok(NumberSequence {
            start: area_index as u64 * PER_AREA_CODE + (exchange - 200) * 10_000 + line,
        })
    }

    /// The `n`th number of the sequence (the first is `nth(0)`), in E.164.
    pub fn nth(&self, n: u64) -> String {
        number_at((self.start + n % SPACE_SIZE) % SPACE_SIZE)
    }
}

impl fmt::Display for NumberSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.nth(0))
    }
}

/// The number at `index` in the space: area codes in list order, then exchanges, then lines.
fn number_at(index: u64) -> String {
    let area = AREA_CODES[usize::try_from(index / PER_AREA_CODE).unwrap_or(0) % AREA_CODES.len()];
    let within = index % PER_AREA_CODE;
    let exchange = 200 + within / 10_000;
    let line = within % 10_000;
    format!("+1{area}{exchange}{line:04}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use verify_common::domain::PhoneNumber;

    use super::{AREA_CODES, NumberError, NumberSequence, PER_AREA_CODE, SPACE_SIZE, number_at};

    #[test]
    fn every_area_code_and_exchange_passes_the_apis_number_check() {
        for (a, _) in AREA_CODES.iter().enumerate() {
            for exchange in 0..800_u64 {
                // Vary the line so different digits of the last four are exercised too.
                let line = (exchange * 7_919 + a as u64 * 104_729) % 10_000;
                let number = number_at(a as u64 * PER_AREA_CODE + exchange * 10_000 + line);
                let parsed = PhoneNumber::parse(&number)
                    .unwrap_or_else(|e| panic!("{number} is refused: {e:?}"));
                assert_eq!(parsed.as_str(), number, "{number} is not in canonical form");
            }
        }
    }

    #[test]
    fn a_run_gets_distinct_numbers_even_across_the_end_of_the_space() {
        let near_end = NumberSequence {
            start: SPACE_SIZE - 5_000,
        };
        let numbers: HashSet<String> = (0..100_000).map(|n| near_end.nth(n)).collect();
        assert_eq!(numbers.len(), 100_000);
        assert_eq!(near_end.nth(5_000), number_at(0));
    }

    #[test]
    fn the_first_number_names_the_sequence() {
        let sequence = NumberSequence::starting_from("+12122000000").unwrap();
        assert_eq!(sequence.nth(0), "+12122000000");
        assert_eq!(sequence.nth(1), "+12122000001");
        assert_eq!(sequence.nth(10_000), "+12122010000");
        for n in [0, 1, 9_999, PER_AREA_CODE - 1, SPACE_SIZE - 1] {
            let number = number_at(n);
            assert_eq!(
                NumberSequence::starting_from(&number).unwrap(),
                NumberSequence { start: n },
                "{number}"
            );
        }
    }

    #[test]
    fn random_sequences_print_their_first_number() {
        let sequence = NumberSequence::random();
        let first = sequence.to_string();
        assert_eq!(NumberSequence::starting_from(&first).unwrap(), sequence);
    }

    #[test]
    fn numbers_outside_the_space_are_refused() {
        assert!(matches!(
            NumberSequence::starting_from("+447700900000"),
            Err(NumberError::NotUsNumber(_))
        ));
        assert!(matches!(
            NumberSequence::starting_from("+1212200000"),
            Err(NumberError::NotUsNumber(_))
        ));
        assert!(matches!(
            NumberSequence::starting_from("+19992000000"),
            Err(NumberError::OutsideSpace(_))
        ));
        assert!(matches!(
            NumberSequence::starting_from("+12121990000"),
            Err(NumberError::OutsideSpace(_))
        ));
    }
}
