//! How an SMS text is encoded on the air, how many segments it costs, and the cap on
//! segments a message may take.
//!
//! GSM 03.38 text packs 160 characters into one SMS (153 per part when concatenated);
//! characters from the extension table cost two. Anything outside the GSM alphabet forces
//! UCS-2: 70 UTF-16 units in one SMS, 67 per part. A part never splits an extension
//! character from its escape, nor a surrogate pair, so a part may end a unit short.

use std::fmt;
use std::num::NonZeroU8;

use serde::Serialize;
use utoipa::ToSchema;

/// The character set an SMS will be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum SmsEncoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl SmsEncoding {
    /// The name used in answers and messages: `GSM-7` or `UCS-2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gsm7 => "GSM-7",
            Self::Ucs2 => "UCS-2",
        }
    }

    /// Units that fit one SMS alone, and one part of a concatenated SMS (the rest of a
    /// part carries the header that numbers the parts).
    fn capacity(self) -> (usize, usize) {
        match self {
            Self::Gsm7 => (160, 153),
            Self::Ucs2 => (70, 67),
        }
    }
}

impl fmt::Display for SmsEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encoding, length and segment count of one message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SmsShape {
    pub encoding: SmsEncoding,
    /// Characters as the user sees them (Unicode scalar values).
    pub characters: usize,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2) the text occupies.
    pub units: usize,
    pub segments: usize,
}

/// Septets a character takes in GSM-7 (the GSM 03.38 default alphabet and its extension
/// table), or `None` outside it. A `match` rather than a search of the table: it runs
/// for every character of every message a start renders.
fn gsm_septets(c: char) -> Option<usize> {
    match c {
        '[' | '\\' | ']' | '^' | '{' | '|' | '}' | '~' | '€' | '\u{c}' => Some(2),
        '`' => None,
        ' '..='~' | '\n' | '\r' => Some(1),
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' | 'Δ' | 'Φ' | 'Γ'
        | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä'
        | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => Some(1),
        _ => None,
    }
}

impl SmsShape {
    /// Measures a text.
    pub fn of(text: &str) -> Self {
        let characters = text.chars().count();
        let gsm_units: Option<usize> = text.chars().map(gsm_septets).sum();
        let (encoding, units) = match gsm_units {
            Some(units) => (SmsEncoding::Gsm7, units),
            None => (SmsEncoding::Ucs2, text.encode_utf16().count()),
        };
        let (single, part) = encoding.capacity();
        let segments = if units <= single {
            1
        } else {
            let cost = |c: char| match encoding {
                SmsEncoding::Gsm7 => gsm_septets(c).unwrap_or(1),
                SmsEncoding::Ucs2 => c.len_utf16(),
            };
            count_parts(text.chars().map(cost), part)
        };
        Self {
            encoding,
            characters,
            units,
            segments,
        }
    }
}

/// Parts of `part` units needed for characters of the given costs, each character whole
/// in one part (an escaped GSM character or a surrogate pair cannot be split).
fn count_parts(costs: impl Iterator<Item = usize>, part: usize) -> usize {
    let mut parts = 1;
    let mut used = 0;
    for cost in costs {
        if used + cost > part {
            parts += 1;
            used = 0;
        }
        used += cost;
    }
    parts
}

/// The most segments one rendered message may take: 1 to 255, since a concatenated SMS
/// numbers its parts in one byte. Every message Verify sends is measured against it, so
/// no variable can make a code cost a hundred SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCap(NonZeroU8);

/// Why a segment cap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the segment cap must be 1 to 255, got {0}")]
pub struct SegmentCapError(pub String);

impl SegmentCap {
    /// # Errors
    /// [`SegmentCapError`] for anything but a whole number from 1 to 255.
    pub fn parse(input: &str) -> Result<Self, SegmentCapError> {
        input
            .trim()
            .parse::<NonZeroU8>()
            .map(Self)
            .map_err(|_| SegmentCapError(input.to_owned()))
    }

    /// The cap as a count of segments.
    pub fn get(self) -> usize {
        usize::from(self.0.get())
    }

    /// Measures `text` and returns its shape if it fits.
    ///
    /// # Errors
    /// [`SmsTooLong`] with the shape, when it takes more segments than the cap.
    pub fn admit(self, text: &str) -> Result<SmsShape, SmsTooLong> {
        let shape = SmsShape::of(text);
        if shape.segments > self.get() {
            Err(SmsTooLong { shape, cap: self })
        } else {
            Ok(shape)
        }
    }
}

impl fmt::Display for SegmentCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message that takes more segments than its [`SegmentCap`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the message takes {} SMS segments ({}, {} characters); the cap is {}",
    shape.segments, shape.encoding, shape.characters, cap
)]
pub struct SmsTooLong {
    pub shape: SmsShape,
    pub cap: SegmentCap,
}

#[cfg(test)]
mod tests {
    use super::{SegmentCap, SmsEncoding, SmsShape, SmsTooLong, gsm_septets};

    /// The GSM 03.38 default alphabet in table order (without the escape), and its
    /// extension table.
    const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

    #[test]
    fn the_septet_lookup_agrees_with_the_gsm_tables_for_every_character() {
        assert_eq!(GSM_BASIC.chars().count(), 127);
        let mut disagreements = Vec::new();
        for c in (0..=0x3000)
            .chain(0x1F600..=0x1F64F)
            .filter_map(char::from_u32)
        {
            let expected = if GSM_BASIC.contains(c) {
                Some(1)
            } else if GSM_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            if gsm_septets(c) != expected {
                disagreements.push((c, gsm_septets(c), expected));
            }
        }
        assert!(disagreements.is_empty(), "{disagreements:?}");
    }

    #[test]
    fn plain_text_is_gsm7_and_fits_160_characters_in_one_segment() {
        let shape = SmsShape::of(&"a".repeat(160));
        assert_eq!(shape.encoding, SmsEncoding::Gsm7);
        assert_eq!(shape.segments, 1);
        assert_eq!(SmsShape::of(&"a".repeat(161)).segments, 2);
        assert_eq!(SmsShape::of(&"a".repeat(306)).segments, 2);
        assert_eq!(SmsShape::of(&"a".repeat(307)).segments, 3);
        assert_eq!(SmsShape::of(&"a".repeat(459)).segments, 3);
        assert_eq!(SmsShape::of(&"a".repeat(460)).segments, 4);
    }

    #[test]
    fn extension_characters_cost_two_septets() {
        let shape = SmsShape::of("€€");
        assert_eq!(shape.encoding, SmsEncoding::Gsm7);
        assert_eq!(shape.units, 4);
        assert_eq!(shape.characters, 2);
        assert_eq!(SmsShape::of(&"€".repeat(80)).segments, 1);
        assert_eq!(SmsShape::of(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn an_extension_character_is_never_split_across_two_parts() {
        // 306 septets would fill two parts exactly, but the euro sign's two septets
        // cannot straddle the end of the first part, which therefore ends one short.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        let shape = SmsShape::of(&text);
        assert_eq!(shape.units, 306);
        assert_eq!(shape.segments, 3);
    }

    #[test]
    fn any_character_outside_gsm_forces_ucs2() {
        let shape = SmsShape::of("Código: 123456 ✓");
        assert_eq!(shape.encoding, SmsEncoding::Ucs2);
        assert_eq!(SmsShape::of(&"ж".repeat(70)).segments, 1);
        assert_eq!(SmsShape::of(&"ж".repeat(71)).segments, 2);
        assert_eq!(SmsShape::of(&"ж".repeat(201)).segments, 3);
        assert_eq!(SmsShape::of(&"ж".repeat(202)).segments, 4);
        assert_eq!(SmsShape::of("😀").units, 2);
    }

    #[test]
    fn one_character_outside_gsm_turns_a_three_part_text_into_seven() {
        let gsm = "a".repeat(459);
        let ucs2 = format!("ж{}", "a".repeat(458));
        assert_eq!(SmsShape::of(&gsm).segments, 3);
        let shape = SmsShape::of(&ucs2);
        assert_eq!((shape.encoding, shape.units), (SmsEncoding::Ucs2, 459));
        assert_eq!(shape.segments, 7);
    }

    #[test]
    fn ucs2_counts_utf16_units_and_never_splits_a_surrogate_pair() {
        let shape = SmsShape::of(&"😀".repeat(35));
        assert_eq!((shape.characters, shape.units, shape.segments), (35, 70, 1));
        assert_eq!(SmsShape::of(&"😀".repeat(36)).segments, 2);
        let straddling = format!("{}😀{}", "ж".repeat(66), "ж".repeat(66));
        let shape = SmsShape::of(&straddling);
        assert_eq!(shape.units, 134);
        assert_eq!(shape.segments, 3);
    }

    #[test]
    fn an_empty_text_is_one_segment() {
        assert_eq!(SmsShape::of("").segments, 1);
    }

    #[test]
    fn a_segment_cap_is_a_whole_number_from_1_to_255() {
        assert_eq!(SegmentCap::parse("3").unwrap().get(), 3);
        assert_eq!(SegmentCap::parse("255").unwrap().get(), 255);
        for bad in ["0", "256", "-1", "", "three", "2.5"] {
            assert!(SegmentCap::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cap_admits_a_text_at_the_cap_and_refuses_one_segment_more() {
        let cap = SegmentCap::parse("3").unwrap();
        assert_eq!(cap.admit(&"a".repeat(459)).unwrap().segments, 3);
        let refused = cap.admit(&"a".repeat(460)).unwrap_err();
        assert_eq!(
            refused,
            SmsTooLong {
                shape: SmsShape::of(&"a".repeat(460)),
                cap
            }
        );
        assert_eq!(
            refused.to_string(),
            "the message takes 4 SMS segments (GSM-7, 460 characters); the cap is 3"
        );
    }
}
