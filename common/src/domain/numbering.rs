//! What libphonenumber's numbering plans say about a number: its type (mobile, toll-free,
//! premium-rate, …) and the region it belongs to. Both come from the metadata of the
//! `phonenumber` crate, never from leading digits written by hand.

use std::fmt;
use std::str::FromStr;

use phonenumber::Metadata;
use phonenumber::metadata::{DATABASE, Database, Descriptor};

/// The kind of line a number belongs to, as its country's numbering plan classifies it.
/// Where a plan cannot tell fixed lines from mobiles (the North American plan), the type
/// is [`NumberType::FixedLineOrMobile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NumberType {
    FixedLine,
    Mobile,
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    PersonalNumber,
    Voip,
    Pager,
    /// Universal access ("company") numbers.
    Uan,
    /// Voicemail access numbers.
    Voicemail,
}

impl NumberType {
    /// Every type, in a fixed order.
    pub const ALL: [NumberType; 11] = [
        Self::FixedLine,
        Self::Mobile,
        Self::FixedLineOrMobile,
        Self::TollFree,
        Self::PremiumRate,
        Self::SharedCost,
        Self::PersonalNumber,
        Self::Voip,
        Self::Pager,
        Self::Uan,
        Self::Voicemail,
    ];

    /// The stable text form, as in rule ids and API answers (`premium_rate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FixedLine => "fixed_line",
            Self::Mobile => "mobile",
            Self::FixedLineOrMobile => "fixed_line_or_mobile",
            Self::TollFree => "toll_free",
            Self::PremiumRate => "premium_rate",
            Self::SharedCost => "shared_cost",
            Self::PersonalNumber => "personal_number",
            Self::Voip => "voip",
            Self::Pager => "pager",
            Self::Uan => "uan",
            Self::Voicemail => "voicemail",
        }
    }
}

impl fmt::Display for NumberType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for NumberType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl FromStr for NumberType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a number type"))
    }
}

/// The numbering plan's metadata, loaded once per process by the `phonenumber` crate.
fn database() -> &'static Database {
    &DATABASE
}

/// A region of libphonenumber's metadata: an ISO 3166-1 alpha-2 country code (`GB`, `US`)
/// or `001` for the non-geographic ranges (international freephone, satellite and
/// international networks such as +800, +881, +882, +883). Only regions the metadata
/// knows can exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(&'static str);

/// Why a text is not a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a region of the numbering plans: use an ISO 3166-1 alpha-2 code such as GB, or 001 for non-geographic numbers"
)]
pub struct RegionError(pub String);

impl Region {
    /// Accepts a region code in any letter case (`gb`, `GB`, `001`).
    ///
    /// # Errors
    /// [`RegionError`] when the metadata has no such region.
    pub fn parse(text: &str) -> Result<Self, RegionError> {
        let wanted = text.trim().to_ascii_uppercase();
        database()
            .by_id(wanted.as_str())
            .map(|metadata| Self::from_metadata(metadata.id()))
            .ok_or_else(|| RegionError(text.to_owned()))
    }

    /// The region of metadata found for a number; `id` lives as long as the database.
    fn from_metadata(id: &'static str) -> Self {
        Self(id)
    }

    /// The region code (`GB`, `001`).
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

/// A number's type and region, as its numbering plan gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberClass {
    pub number_type: NumberType,
    pub region: Region,
}

impl NumberClass {
    /// Classifies a parsed number; `None` when it is not valid in its numbering plan
    /// (libphonenumber's validity test is exactly "its type is known").
    ///
    /// This follows libphonenumber's own steps (find the region's metadata, then test the
    /// type patterns in its order) rather than calling the `phonenumber` crate's
    /// `PhoneNumber::number_type`, because that drops the national number's leading zeros
    /// (Italy's fixed lines and some premium ranges begin with 0) and then misses the
    /// region and the type; the crate's `is_valid`, which keeps them, agrees with this.
    pub(crate) fn of(number: &phonenumber::PhoneNumber) -> Option<Self> {
        let national = number.national().to_string();
        let metadata = metadata_for(number.code().value(), &national)?;
        let number_type = type_in(metadata, &national)?;
        Some(Self {
            number_type,
            region: Region::from_metadata(metadata.id()),
        })
    }
}

/// The metadata of the region a national number of country code `code` belongs to.
fn metadata_for(code: u16, national: &str) -> Option<&'static Metadata> {
    let database = database();
    let regions = database.region(&code)?;
    if let [only] = regions.as_slice() {
        // Non-geographic codes (+800, +882, …) share the region id 001, one metadata each.
        return if *only == "001" {
            database.by_code(&code)?.into_iter().next()
        } else {
            database.by_id(*only)
        };
    }
    regions
        .into_iter()
        .filter_map(|region| database.by_id(region))
        .find(|metadata| match metadata.leading_digits() {
            Some(pattern) => pattern
                .find(national)
                .is_some_and(|found| found.start() == 0),
            None => type_in(metadata, national).is_some(),
        })
}

/// The type of `national` in `metadata`'s plan, testing patterns in libphonenumber's order;
/// `None` when the number is not valid there.
fn type_in(metadata: &Metadata, national: &str) -> Option<NumberType> {
    let descriptors = metadata.descriptors();
    let matches =
        |descriptor: Option<&Descriptor>| descriptor.is_some_and(|d| d.is_match(national));
    if !descriptors.general().is_match(national) {
        return None;
    }
    let ordered = [
        (descriptors.premium_rate(), NumberType::PremiumRate),
        (descriptors.toll_free(), NumberType::TollFree),
        (descriptors.shared_cost(), NumberType::SharedCost),
        (descriptors.voip(), NumberType::Voip),
        (descriptors.personal_number(), NumberType::PersonalNumber),
        (descriptors.pager(), NumberType::Pager),
        (descriptors.uan(), NumberType::Uan),
        (descriptors.voicemail(), NumberType::Voicemail),
    ];
    if let Some((_, kind)) = ordered
        .into_iter()
        .find(|(descriptor, _)| matches(*descriptor))
    {
        return Some(kind);
    }
    if matches(descriptors.fixed_line()) {
        let same_patterns = descriptors
            .fixed_line()
            .map(|d| d.national_number().as_str())
            == descriptors.mobile().map(|d| d.national_number().as_str());
        return Some(if same_patterns || matches(descriptors.mobile()) {
            NumberType::FixedLineOrMobile
        } else {
            NumberType::FixedLine
        });
    }
    matches(descriptors.mobile()).then_some(NumberType::Mobile)
}

#[cfg(test)]
mod tests {
    use super::{NumberType, Region};

    #[test]
    fn every_number_type_reads_back_from_its_text() {
        for kind in NumberType::ALL {
            assert_eq!(kind.as_str().parse::<NumberType>(), Ok(kind));
        }
        assert!("premium".parse::<NumberType>().is_err());
    }

    #[test]
    fn regions_are_the_metadatas_own_in_any_letter_case() {
        assert_eq!(Region::parse("gb").unwrap().as_str(), "GB");
        assert_eq!(Region::parse(" US ").unwrap().as_str(), "US");
        assert_eq!(Region::parse("001").unwrap().as_str(), "001");
        for bad in ["", "UK", "G", "GBR", "999", "../"] {
            assert!(Region::parse(bad).is_err(), "{bad:?}");
        }
    }
}
