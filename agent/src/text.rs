//! Serde helpers that write typed identifiers (CIDs, peer ids, multiaddrs) in their text form.
//!
//! Inside the agent these stay typed; the text form is what the HTTP API shows and what stored
//! records have always held, whatever the serializer (CBOR would otherwise write bytes). Use as
//! `#[serde(with = "crate::text")]`, [`option`] for options, or [`list`] / [`lenient_list`] for
//! vectors.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

pub fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: Display,
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
}

/// A vector of values in text form; one that does not parse fails the whole value.
pub mod list {
    use super::*;

    pub fn serialize<T: Display, S: Serializer>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(deserializer)?
            .into_iter()
            .map(|text| {
                text.parse()
                    .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
            })
            .collect()
    }
}

/// A vector of values in text form that skips the ones it cannot parse: for what a newer
/// version may have written (a multiaddr protocol this build does not know).
pub mod lenient_list {
    use super::*;

    pub use super::list::serialize;

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        D: Deserializer<'de>,
    {
        Ok(Vec::<String>::deserialize(deserializer)?
            .into_iter()
            .filter_map(|text| text.parse().ok())
            .collect())
    }
}

/// An optional value in text form (`null` when absent).
pub mod option {
    use super::*;

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                text.parse()
                    .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use libp2p::{Multiaddr, PeerId};
    use pinmesh_protocol::{Cid, codec};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Typed {
        #[serde(with = "super")]
        cid: Cid,
        #[serde(with = "super")]
        peer: PeerId,
        #[serde(with = "super::list")]
        strict: Vec<Multiaddr>,
        #[serde(with = "super::lenient_list")]
        lenient: Vec<Multiaddr>,
    }

    const CID: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

    fn sample() -> Typed {
        Typed {
            cid: CID.parse().expect("test value"),
            peer: PeerId::random(),
            strict: vec!["/ip4/127.0.0.1/tcp/4001".parse().expect("test value")],
            lenient: vec!["/ip4/10.0.0.1/tcp/1".parse().expect("test value")],
        }
    }

    #[test]
    fn json_and_cbor_hold_the_text_form() {
        let value = sample();
        let json = serde_json::to_value(&value).expect("test value");
        assert_eq!(json["cid"], CID);
        assert_eq!(json["peer"], value.peer.to_string());
        assert_eq!(json["strict"][0], "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(
            serde_json::from_value::<Typed>(json).expect("test value"),
            value
        );

        // The storage encoding (packed CBOR) holds text too, readable without these types.
        #[derive(Deserialize)]
        struct Plain {
            cid: String,
            _peer: String,
            strict: Vec<String>,
            _lenient: Vec<String>,
        }
        let stored = codec::encode_stored(&value);
        let plain: Plain = codec::decode_stored(&stored).expect("test value");
        assert_eq!(plain.cid, CID);
        assert_eq!(plain.strict, ["/ip4/127.0.0.1/tcp/4001"]);
        assert_eq!(
            codec::decode_stored::<Typed>(&stored).expect("test value"),
            value
        );
    }

    #[test]
    fn strict_values_refuse_bad_text_and_lenient_lists_skip_it() {
        let mut json = serde_json::to_value(sample()).expect("test value");
        json["lenient"] = serde_json::json!(["/future-protocol/1", "/ip4/10.0.0.2/tcp/2"]);
        let read: Typed = serde_json::from_value(json.clone()).expect("test value");
        assert_eq!(
            read.lenient,
            vec![
                "/ip4/10.0.0.2/tcp/2"
                    .parse::<Multiaddr>()
                    .expect("test value")
            ]
        );

        json["strict"] = serde_json::json!(["/future-protocol/1"]);
        let err = serde_json::from_value::<Typed>(json.clone())
            .expect_err("bad text")
            .to_string();
        assert!(err.contains("/future-protocol/1"), "{err}");

        json["strict"] = serde_json::json!([]);
        json["cid"] = serde_json::json!("not-a-cid");
        let err = serde_json::from_value::<Typed>(json)
            .expect_err("bad text")
            .to_string();
        assert!(err.contains("not-a-cid"), "{err}");
    }
}
