//! The JSON bodies of Kubo's RPC answers, as far as this client reads them. Field names are
//! Kubo's; numbers may come as strings ([`Flex`]).

use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(rename = "Message")]
    pub(super) message: String,
}

#[derive(Deserialize)]
pub(super) struct IdBody {
    #[serde(rename = "ID")]
    pub(super) id: String,
    #[serde(rename = "Addresses")]
    pub(super) addresses: Option<Vec<String>>,
    #[serde(rename = "AgentVersion")]
    pub(super) agent_version: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct PinAddLine {
    #[serde(rename = "Pins")]
    pub(super) pins: Option<Vec<String>>,
    #[serde(rename = "Progress")]
    pub(super) progress: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct AddLine {
    #[serde(rename = "Name")]
    pub(super) name: Option<String>,
    #[serde(rename = "Hash")]
    pub(super) hash: Option<String>,
    #[serde(rename = "Size")]
    pub(super) size: Option<Flex>,
}

#[derive(Deserialize)]
pub(super) struct PinLsLine {
    #[serde(rename = "Cid")]
    pub(super) cid: Option<String>,
    #[serde(rename = "Keys", default)]
    pub(super) keys: std::collections::BTreeMap<String, serde_json::Value>,
}

/// One line of a streamed answer: `T`, or the error the node reported mid-stream.
#[derive(Deserialize)]
pub(super) struct Line<T> {
    #[serde(rename = "Message")]
    pub(super) message: Option<String>,
    #[serde(flatten)]
    pub(super) body: T,
}

#[derive(Deserialize)]
pub(super) struct RepoStatBody {
    #[serde(rename = "RepoSize")]
    pub(super) repo_size: Flex,
    #[serde(rename = "StorageMax")]
    pub(super) storage_max: Flex,
    #[serde(rename = "RepoPath", default)]
    pub(super) repo_path: Option<String>,
}

/// A u64 sent as a JSON number or as a string of digits (nodes differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flex(pub(super) u64);

impl<'de> Deserialize<'de> for Flex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(Flex(n)),
            Either::Text(t) => t
                .trim()
                .parse()
                .map(Flex)
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number"))),
        }
    }
}
