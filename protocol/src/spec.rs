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
    /// A replication factor above this is surely a typo.
    pub const REPLICATION: i32 = 1024;
}

/// The options of one pin. Every field has a default and defaults are not encoded, so a pin with
/// a short name and nothing else costs a few bytes beyond its CID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct PinSpec {
    /// Human name; free text, may be empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "PinMode::is_default")]
    pub mode: PinMode,
    /// Fewest peers that should hold the pin; -1 = every peer.
    #[serde(skip_serializing_if = "is_everywhere")]
    pub replication_min: i32,
    /// Most peers that should hold the pin; -1 = every peer.
    #[serde(skip_serializing_if = "is_everywhere")]
    pub replication_max: i32,
    /// Peer ids (text) that should hold the pin first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<String>,
    /// Unix seconds after which the pin is removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Multiaddrs (text) of peers known to have the content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
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
