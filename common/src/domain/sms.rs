//! How an SMS text is encoded on the air and how many segments it costs.
//!
//! GSM 03.38 text packs 160 characters into one SMS (153 per part when concatenated);
//! characters from the extension table cost two. Anything outside the GSM alphabet forces
//! UCS-2: 70 UTF-16 units in one SMS, 67 per part.

use serde::Serialize;

/// The character set an SMS will be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SmsEncoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
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

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

impl SmsShape {
    /// Measures a text.
    pub fn of(text: &str) -> Self {
        let characters = text.chars().count();
        let gsm_units: Option<usize> = text
            .chars()
            .map(|c| {
                if GSM_BASIC.contains(c) {
                    Some(1)
                } else if GSM_EXTENSION.contains(c) {
                    Some(2)
                } else {
                    None
                }
            })
            .sum();
        let (encoding, units, single, multi) = match gsm_units {
            Some(units) => (SmsEncoding::Gsm7, units, 160, 153),
            None => (SmsEncoding::Ucs2, text.encode_utf16().count(), 70, 67),
        };
        let segments = if units <= single {
            1
        } else {
            units.div_ceil(multi)
        };
        Self {
            encoding,
            characters,
            units,
            segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SmsEncoding, SmsShape};

    #[test]
    fn plain_text_is_gsm7_and_fits_160_characters_in_one_segment() {
        let shape = SmsShape::of(&"a".repeat(160));
        assert_eq!(shape.encoding, SmsEncoding::Gsm7);
        assert_eq!(shape.segments, 1);
        assert_eq!(SmsShape::of(&"a".repeat(161)).segments, 2);
        assert_eq!(SmsShape::of(&"a".repeat(306)).segments, 2);
        assert_eq!(SmsShape::of(&"a".repeat(307)).segments, 3);
    }

    #[test]
    fn extension_characters_cost_two_septets() {
        let shape = SmsShape::of("€€");
        assert_eq!(shape.encoding, SmsEncoding::Gsm7);
        assert_eq!(shape.units, 4);
        assert_eq!(shape.characters, 2);
    }

    #[test]
    fn any_character_outside_gsm_forces_ucs2() {
        let shape = SmsShape::of("Código: 123456 ✓");
        assert_eq!(shape.encoding, SmsEncoding::Ucs2);
        assert_eq!(SmsShape::of(&"ж".repeat(70)).segments, 1);
        assert_eq!(SmsShape::of(&"ж".repeat(71)).segments, 2);
        assert_eq!(SmsShape::of("😀").units, 2);
    }

    #[test]
    fn an_empty_text_is_one_segment() {
        assert_eq!(SmsShape::of("").segments, 1);
    }
}
