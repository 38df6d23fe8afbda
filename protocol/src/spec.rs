//! What a pin asks of the cluster: [`PinSpec`] and its validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How much of the DAG below a CID to pin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// The CID and every block below it.
    #[default]
    Recursive,
    /// The CID's own block only.
    Direct,
}

impl PinMode {
    fn is_default(&self) -> bool {
        *self == PinMode::Recursive
    }
}

impl fmt::Display for PinMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        })
    }
}

impl std::str::FromStr for PinMode {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "recursive" => Ok(PinMode::Recursive),
            "direct" => Ok(PinMode::Direct),
            other => Err(SpecError::Mode(other.to_string())),
        }
    }
}

/// Replication factor meaning "every peer".
pub const EVERYWHERE: i32 = -1;

/// Limits that keep one pin's delta far below a batch's size limit.
pub mod limits {
    pub const NAME_BYTES: usize = 255;
    pub const METADATA_ENTRIES: usize = 64;
    pub const METADATA_KEY_BYTES: usize = 128;
    pub const METADATA_VALUE_BYTES: usize = 1024;
    pub const ALLOCATIONS: usize = 64;
    pub const ORIGINS: usize = 16;
    /// Peer ids and multiaddrs, as text.
    pub const ADDRESS_BYTES: usize = 512;
    /// Options of newer releases kept per pin.
    pub const UNKNOWN_FIELDS: usize = 16;
    /// A replication factor above this is surely a typo.
    pub const REPLICATION: i32 = 1024;
}

/// The options of one pin. Every field has a default and defaults are not encoded, so a pin with
/// a short name and nothing else costs a few bytes beyond its CID.
///
/// Encoded as a CBOR map from field number to value (0 `name` .. 7 `origins`). Fields a later
/// release adds take the next numbers; this release keeps them in [`unknown`](Self::unknown)
/// and encodes them again as they came, so a batch written by a newer agent still verifies
/// here and the state digest still agrees (see the README's "Upgrading").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PinSpec {
    /// Human name; free text, may be empty.
    pub name: String,
    pub mode: PinMode,
    /// Fewest peers that should hold the pin; -1 = every peer.
    pub replication_min: i32,
    /// Most peers that should hold the pin; -1 = every peer.
    pub replication_max: i32,
    /// Peer ids (text) that should hold the pin first.
    pub allocations: Vec<String>,
    /// Unix seconds after which the pin is removed.
    pub expire_at: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    /// Multiaddrs (text) of peers known to have the content.
    pub origins: Vec<String>,
    /// Fields of a newer release, kept as they came.
    pub unknown: UnknownFields,
}

/// Numbered fields this release does not know, with their values, kept so that they are
/// stored, relayed, signed and hashed exactly as their writer encoded them.
///
/// A field a later release adds must therefore encode the same way through a generic CBOR
/// value: integers, text, bytes, booleans, arrays, and maps with integer keys (packed structs);
/// not text-keyed maps (a generic value orders map keys by length first, a `BTreeMap<String,
/// _>` alphabetically). `unknown_fields_round_trip_byte_for_byte` checks the shapes allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnknownFields(pub BTreeMap<u64, serde_cbor::Value>);

impl UnknownFields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::hash::Hash for UnknownFields {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for (key, value) in &self.0 {
            key.hash(state);
            serde_cbor::to_vec(value).unwrap_or_default().hash(state);
        }
    }
}

/// The field numbers of [`PinSpec`].
mod field {
    pub const NAME: u64 = 0;
    pub const MODE: u64 = 1;
    pub const REPLICATION_MIN: u64 = 2;
    pub const REPLICATION_MAX: u64 = 3;
    pub const ALLOCATIONS: u64 = 4;
    pub const EXPIRE_AT: u64 = 5;
    pub const METADATA: u64 = 6;
    pub const ORIGINS: u64 = 7;
}

impl Serialize for PinSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let present = [
            !self.name.is_empty(),
            !self.mode.is_default(),
            !is_everywhere(&self.replication_min),
            !is_everywhere(&self.replication_max),
            !self.allocations.is_empty(),
            self.expire_at.is_some(),
            !self.metadata.is_empty(),
            !self.origins.is_empty(),
        ];
        let len = present.iter().filter(|p| **p).count() + self.unknown.0.len();
        let mut map = s.serialize_map(Some(len))?;
        if present[0] {
            map.serialize_entry(&field::NAME, &self.name)?;
        }
        if present[1] {
            map.serialize_entry(&field::MODE, &self.mode)?;
        }
        if present[2] {
            map.serialize_entry(&field::REPLICATION_MIN, &self.replication_min)?;
        }
        if present[3] {
            map.serialize_entry(&field::REPLICATION_MAX, &self.replication_max)?;
        }
        if present[4] {
            map.serialize_entry(&field::ALLOCATIONS, &self.allocations)?;
        }
        if let Some(at) = &self.expire_at {
            map.serialize_entry(&field::EXPIRE_AT, at)?;
        }
        if present[6] {
            map.serialize_entry(&field::METADATA, &self.metadata)?;
        }
        if present[7] {
            map.serialize_entry(&field::ORIGINS, &self.origins)?;
        }
        // Newer fields have higher numbers, so they follow the known ones as their writer
        // put them.
        for (key, value) in &self.unknown.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for PinSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PinSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of pin options by field number")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PinSpec, A::Error> {
                use serde::de::Error;
                let mut spec = PinSpec::default();
                let mut last = None;
                while let Some(key) = map.next_key::<u64>()? {
                    // One canonical encoding: ascending field numbers, each once.
                    if last.is_some_and(|l| key <= l) {
                        return Err(A::Error::custom(format!(
                            "pin option {key} out of order or repeated"
                        )));
                    }
                    last = Some(key);
                    match key {
                        field::NAME => spec.name = map.next_value()?,
                        field::MODE => spec.mode = map.next_value()?,
                        field::REPLICATION_MIN => spec.replication_min = map.next_value()?,
                        field::REPLICATION_MAX => spec.replication_max = map.next_value()?,
                        field::ALLOCATIONS => spec.allocations = map.next_value()?,
                        field::EXPIRE_AT => spec.expire_at = map.next_value()?,
                        field::METADATA => spec.metadata = map.next_value()?,
                        field::ORIGINS => spec.origins = map.next_value()?,
                        other => {
                            spec.unknown.0.insert(other, map.next_value()?);
                        }
                    }
                }
                Ok(spec)
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn is_everywhere(n: &i32) -> bool {
    *n == EVERYWHERE
}

impl Default for PinSpec {
    fn default() -> Self {
        PinSpec {
            name: String::new(),
            mode: PinMode::Recursive,
            replication_min: EVERYWHERE,
            replication_max: EVERYWHERE,
            allocations: Vec::new(),
            expire_at: None,
            metadata: BTreeMap::new(),
            origins: Vec::new(),
            unknown: UnknownFields::default(),
        }
    }
}

/// Why a [`PinSpec`] is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("pin name is {0} bytes; the limit is {max}", max = limits::NAME_BYTES)]
    NameTooLong(usize),
    #[error("unknown pin mode {0:?}: expected recursive or direct")]
    Mode(String),
    #[error(
        "replication min {min} / max {max} is invalid: use -1 for every peer, or 1 <= min <= max <= {limit}",
        limit = limits::REPLICATION
    )]
    Replication { min: i32, max: i32 },
    #[error("{what}: {count} items; the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what} {value:?} is longer than {max} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
}

impl PinSpec {
    /// How many peers must hold the pin for it to count as replicated: its minimum factor,
    /// at least one (a minimum of "every peer" with allocations means one).
    pub fn min_copies(&self) -> usize {
        usize::try_from(self.replication_min).unwrap_or(1).max(1)
    }

    /// Whether the peer `peer` (its peer id as text) should hold the pin: it is named in the
    /// allocations, or there are none (factors of -1, and pins written before allocation).
    pub fn allocated_to(&self, peer: &str) -> bool {
        self.allocations.is_empty() || self.allocations.iter().any(|p| p == peer)
    }

    /// A spec with only a name.
    pub fn named(name: impl Into<String>) -> Self {
        PinSpec {
            name: name.into(),
            ..PinSpec::default()
        }
    }

    /// Checks the limits. Everything a replica accepts from the network or a user passes this.
    pub fn validate(&self) -> Result<(), SpecError> {
        use limits::*;
        if self.name.len() > NAME_BYTES {
            return Err(SpecError::NameTooLong(self.name.len()));
        }
        let (min, max) = (self.replication_min, self.replication_max);
        let valid_factor = |n: i32| n == EVERYWHERE || (1..=REPLICATION).contains(&n);
        let ordered = max == EVERYWHERE || (min != EVERYWHERE && min <= max);
        if !valid_factor(min) || !valid_factor(max) || !ordered {
            return Err(SpecError::Replication { min, max });
        }
        check_count("allocations", self.allocations.len(), ALLOCATIONS)?;
        check_count("origins", self.origins.len(), ORIGINS)?;
        check_count("metadata", self.metadata.len(), METADATA_ENTRIES)?;
        check_count("unknown options", self.unknown.0.len(), UNKNOWN_FIELDS)?;
        for a in &self.allocations {
            check_len("allocation", a, ADDRESS_BYTES)?;
        }
        for o in &self.origins {
            check_len("origin", o, ADDRESS_BYTES)?;
        }
        for (k, v) in &self.metadata {
            check_len("metadata key", k, METADATA_KEY_BYTES)?;
            check_len("metadata value", v, METADATA_VALUE_BYTES)?;
        }
        Ok(())
    }
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), SpecError> {
    if count > max {
        return Err(SpecError::TooMany { what, count, max });
    }
    Ok(())
}

fn check_len(what: &'static str, value: &str, max: usize) -> Result<(), SpecError> {
    if value.len() > max {
        return Err(SpecError::TooLong {
            what,
            value: value.chars().take(40).collect(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_rules() {
        let spec = |min, max| PinSpec {
            replication_min: min,
            replication_max: max,
            ..PinSpec::default()
        };
        for (min, max) in [(-1, -1), (1, 1), (2, 5), (3, -1)] {
            assert_eq!(spec(min, max).validate(), Ok(()), "{min} {max}");
        }
        for (min, max) in [(0, 1), (5, 2), (-1, 3), (-2, -1), (1, 5000)] {
            assert!(spec(min, max).validate().is_err(), "{min} {max}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = PinSpec::named("x".repeat(256));
        assert_eq!(long.validate(), Err(SpecError::NameTooLong(256)));
        let mut meta = PinSpec::default();
        for i in 0..65 {
            meta.metadata.insert(format!("k{i}"), "v".into());
        }
        assert!(matches!(
            meta.validate(),
            Err(SpecError::TooMany {
                what: "metadata",
                ..
            })
        ));
        assert_eq!("direct".parse::<PinMode>(), Ok(PinMode::Direct));
        assert!("deep".parse::<PinMode>().is_err());
    }
}
