//! The agent's configuration: `DIR/config.toml`, parsed into typed structs and validated.
//!
//! Every key has a default except the cluster secret; `config/example.toml` lists them all and
//! a test parses it so it cannot rot. Durations are written like `"30s"` or `"250ms"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use pinmesh_protocol::metric::{MAX_TAG_NAME, MAX_TAG_VALUE, MAX_TAGS};
use serde::{Deserialize, Serialize};

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub ipfs: IpfsConfig,
    /// Present in a follower's home (`pinmesh follow NAME init`): the agent follows the
    /// cluster read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follower: Option<FollowerConfig>,
}

/// What makes an agent a follower: it takes the pinset from the trusted writers, pins every
/// pin whatever its allocations (or its share of them), writes nothing and is never
/// allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowerConfig {
    /// Where the follow configuration came from: a file or an http(s) URL.
    pub source: String,
    /// The trusted writer whose signature it was checked against.
    pub writer: String,
    /// Hold only this share of the pins, "K/N" (`follow NAME run --share K/N` sets it).
    /// Absent: every pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Stop taking new pins once the IPFS node holds this much ("100GB"; `follow NAME run
    /// --max-storage SIZE` sets it). Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_size")]
    pub max_storage: Option<bytesize::ByteSize>,
}

/// A follower's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    pub writer: libp2p::PeerId,
    pub share: Option<pinmesh_protocol::share::Share>,
    /// Bytes its node may hold before it stops taking new pins.
    pub max_storage: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name: part of the gossip topic, so clusters sharing a secret stay apart.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// The 32-byte shared secret, 64 hex digits. Peers without it fail the handshake.
    pub secret: String,
    /// Peer ids allowed to write the pinset. Empty: every member may. When set, batches by
    /// anyone else are rejected and snapshots are taken only from these peers; an agent not in
    /// the list replicates read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_writers: Vec<String>,
    /// This agent's tags (`region = "eu"`), published in its allocation metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// How often an agent with an IPFS node publishes its allocation metric (free space, pins
    /// allocated, tags). A metric holds for three intervals; a peer without a live one is
    /// down for allocation.
    #[serde(default = "default_metrics_interval", with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// Replication factors of a pin written without any: -1 is every peer (the default).
    #[serde(default = "every_peer")]
    pub replication_min: i32,
    #[serde(default = "every_peer")]
    pub replication_max: i32,
    /// Tags whose values a pin's replicas spread across, in order (`["region", "rack"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocate_by: Vec<String>,
    /// A pin whose allocated peer has been down this long, with fewer than `replication_min`
    /// peers not lost, is allocated again by one live peer. Zero: never.
    #[serde(default = "default_repin_after", with = "humantime_serde")]
    pub repin_after: Duration,
    /// Pins re-allocated per second at most, by one agent.
    #[serde(default = "default_repin_rate")]
    pub repin_rate: u32,
    /// A peer down this long no longer counts as allocatable.
    #[serde(default = "default_peer_forget_after", with = "humantime_serde")]
    pub peer_forget_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// libp2p listen addresses (TCP only: other transports would bypass the secret).
    pub listen: Vec<String>,
    /// Peers to dial at start, with `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Control API address. Loopback by default: the API has full control of the agent.
    pub listen: String,
    /// Connections served at once; more are closed as soon as they are accepted. Every
    /// connection counts, with or without a token: it bounds what clients can hold.
    pub max_connections: usize,
    /// A client must send a request's headers within this long, also on an idle kept-alive
    /// connection; otherwise the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A streamed answer (`pin ls`, `status`) whose client takes no data for this long is cut.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Streamed listings at once; more are refused with 503 until one ends.
    pub max_listings: usize,
    /// Serve the follow configuration, without a token, at `http://ADDR/follow-config`, for
    /// `pinmesh follow NAME init URL`. Off by default: it publishes the cluster's secret.
    /// Only a trusted writer, in a cluster with trusted writers, may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_config_listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// How often the agent announces its digests to its peers.
    #[serde(with = "humantime_serde")]
    pub beacon_interval: Duration,
    /// How long a hole in an origin's sequence may wait for gossip before it is pulled.
    #[serde(with = "humantime_serde")]
    pub repair_delay: Duration,
    /// Deltas kept per origin in the log, to serve repairs; older ones are served by snapshot.
    pub log_retention: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Memory redb may use to cache database pages, in MiB. The pinset lives on disk; this
    /// bounds how much of it stays in memory.
    pub cache_mib: u64,
    /// How often the stored pinset is checked against its digest (also once at every start).
    /// A mismatch stops the agent, which then says how to recover (`run --resync`).
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpfsConfig {
    /// A Kubo-compatible RPC API (`http://127.0.0.1:5001`) to pin in. Unset: the agent runs
    /// its own embedded IPFS node (unless `embedded = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Without `api`: run an IPFS node inside the agent (repo under `DIR/ipfs/`). `false`: drive
    /// no IPFS node at all; the pinset still replicates.
    pub embedded: bool,
    /// The embedded node's TCP listen addresses (other IPFS nodes fetch from it here).
    pub listen: Vec<String>,
    /// `bearer:TOKEN` or `basic:USER:PASSWORD`, when the API requires authorization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// IPFS calls at once.
    pub concurrency: usize,
    /// A pin that reports no progress for this long is abandoned and retried.
    #[serde(with = "humantime_serde")]
    pub pin_stall_timeout: Duration,
    /// Longest a pin may take in all (also the node-side `timeout=`).
    #[serde(with = "humantime_serde")]
    pub pin_timeout: Duration,
    /// Limit on every other call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How often the node's pins are listed and compared with the pinset in full.
    #[serde(with = "humantime_serde")]
    pub relist_interval: Duration,
    /// Longest wait between retries of a failed pin or unpin (the wait doubles per attempt).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Space the node may use for pins (`"500 GB"`), published for allocation. Unset: Kubo's
    /// `Datastore.StorageMax`, and never more than the free space of the repo's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "exact_size")]
    pub storage_max: Option<bytesize::ByteSize>,
}

impl Default for IpfsConfig {
    fn default() -> Self {
        IpfsConfig {
            api: None,
            embedded: true,
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            auth: None,
            concurrency: 10,
            pin_stall_timeout: Duration::from_secs(120),
            pin_timeout: Duration::from_secs(24 * 3600),
            call_timeout: Duration::from_secs(60),
            relist_interval: Duration::from_secs(600),
            retry_max: Duration::from_secs(300),
            storage_max: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_mib: 64,
            scrub_interval: Duration::from_secs(24 * 3600),
        }
    }
}

fn default_cluster_name() -> String {
    "default".into()
}

impl ClusterConfig {
    /// A cluster's settings with every default.
    pub fn new(name: String, secret: String) -> Self {
        ClusterConfig {
            name,
            secret,
            trusted_writers: Vec::new(),
            tags: BTreeMap::new(),
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            replication_min: every_peer(),
            replication_max: every_peer(),
            allocate_by: Vec::new(),
            repin_after: default_repin_after(),
            repin_rate: default_repin_rate(),
            peer_forget_after: default_peer_forget_after(),
        }
    }
}

/// `cluster.metrics_interval` when unset.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);

fn default_metrics_interval() -> Duration {
    DEFAULT_METRICS_INTERVAL
}

fn default_repin_after() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_repin_rate() -> u32 {
    1000
}

fn default_peer_forget_after() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn every_peer() -> i32 {
    pinmesh_protocol::spec::EVERYWHERE
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/9096".into()],
            bootstrap: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:9094".into(),
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_listings: 16,
            follow_config_listen: None,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            beacon_interval: Duration::from_secs(5),
            repair_delay: Duration::from_millis(500),
            log_retention: 100_000,
        }
    }
}

/// A configuration checked for use: parsed addresses and the secret's bytes.
#[derive(Debug, Clone)]
pub struct Validated {
    pub raw: Config,
    pub secret: [u8; 32],
    /// Empty: every member may write.
    pub trusted_writers: std::collections::HashSet<libp2p::PeerId>,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub api_listen: SocketAddr,
    /// Where the follow configuration is served, if it is.
    pub follow_config_listen: Option<SocketAddr>,
    /// The embedded IPFS node's listen addresses.
    pub ipfs_listen: Vec<Multiaddr>,
    /// `Some`: this agent is a follower.
    pub follower: Option<Follower>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Validated, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Validated, ConfigError> {
        let parse_error = |message: String, span: Option<std::ops::Range<usize>>| {
            let line = span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Parse {
                path: origin.to_string(),
                message: match line {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            }
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| parse_error(e.message().into(), e.span()))?;
        let raw: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = if path.is_empty() || path == "." {
                inner.message().to_string()
            } else {
                format!("{path}: {}", inner.message())
            };
            parse_error(message, inner.span())
        })?;
        raw.validate(origin)
    }

    pub fn validate(self, origin: &str) -> Result<Validated, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        let secret = parse_secret(&self.cluster.secret).map_err(|m| invalid(m.to_string()))?;
        let trusted_writers = self
            .cluster
            .trusted_writers
            .iter()
            .map(|p| {
                p.parse::<libp2p::PeerId>().map_err(|_| {
                    invalid(format!("cluster.trusted_writers: {p:?} is not a peer id"))
                })
            })
            .collect::<Result<_, _>>()?;
        if self.cluster.name.is_empty() || self.cluster.name.len() > 64 {
            return Err(invalid("cluster.name must be 1 to 64 characters".into()));
        }
        let listen_list = |key: &str, addrs: &[String]| {
            addrs
                .iter()
                .map(|a| parse_listen(a).map_err(|m| invalid(format!("{key}: {m}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let listen = listen_list("network.listen", &self.network.listen)?;
        if listen.is_empty() {
            return Err(invalid("network.listen needs at least one address".into()));
        }
        let bootstrap = self
            .network
            .bootstrap
            .iter()
            .map(|a| parse_peer_addr(a).map_err(|m| invalid(format!("network.bootstrap: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let api_listen: SocketAddr = self.api.listen.parse().map_err(|_| {
            invalid(format!(
                "api.listen {:?} is not an address like 127.0.0.1:9094",
                self.api.listen
            ))
        })?;
        let follow_config_listen = (self.api.follow_config_listen.as_deref())
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    invalid(format!(
                        "api.follow_config_listen {a:?} is not an address like 0.0.0.0:9097"
                    ))
                })
            })
            .transpose()?;
        if follow_config_listen.is_some() && self.cluster.trusted_writers.is_empty() {
            return Err(invalid(
                "api.follow_config_listen: this cluster has no cluster.trusted_writers, so it \
                 has no follow configuration (a follower would not be read-only)"
                    .into(),
            ));
        }
        if self.api.max_connections == 0 || self.api.max_listings == 0 {
            return Err(invalid(
                "api.max_connections and api.max_listings must be at least 1".into(),
            ));
        }
        if self.api.header_timeout.is_zero() || self.api.send_timeout.is_zero() {
            return Err(invalid(
                "api.header_timeout and api.send_timeout must be longer than 0s".into(),
            ));
        }
        if self.cluster.metrics_interval < Duration::from_millis(100) {
            return Err(invalid(
                "cluster.metrics_interval must be at least 100ms".into(),
            ));
        }
        if self.cluster.repin_rate == 0 {
            return Err(invalid(
                "cluster.repin_rate must be at least 1 (repin_after = \"0s\" turns repinning off)"
                    .into(),
            ));
        }
        if self.cluster.peer_forget_after < self.cluster.repin_after {
            return Err(invalid(
                "cluster.peer_forget_after must be at least cluster.repin_after".into(),
            ));
        }
        let mut factors = pinmesh_protocol::PinSpec::default();
        (factors.replication_min, factors.replication_max) =
            (self.cluster.replication_min, self.cluster.replication_max);
        if let Err(err) = factors.validate() {
            return Err(invalid(format!(
                "cluster.replication_min/max: {err} (-1 is every peer)"
            )));
        }
        if self.cluster.allocate_by.len() > MAX_TAGS {
            return Err(invalid(format!(
                "cluster.allocate_by: at most {MAX_TAGS} tags"
            )));
        }
        if self.cluster.tags.len() > MAX_TAGS {
            return Err(invalid(format!("cluster.tags: at most {MAX_TAGS} tags")));
        }
        for (name, value) in &self.cluster.tags {
            if name.is_empty() || name.len() > MAX_TAG_NAME || value.len() > MAX_TAG_VALUE {
                return Err(invalid(format!(
                    "cluster.tags: {name:?} = {value:?}: names are 1 to {MAX_TAG_NAME} bytes, \
                     values at most {MAX_TAG_VALUE}"
                )));
            }
        }
        if self.sync.beacon_interval < Duration::from_millis(10) {
            return Err(invalid("sync.beacon_interval must be at least 10ms".into()));
        }
        if self.storage.scrub_interval < Duration::from_secs(1) {
            return Err(invalid("storage.scrub_interval must be at least 1s".into()));
        }
        if !(4..=65_536).contains(&self.storage.cache_mib) {
            return Err(invalid("storage.cache_mib must be within 4..=65536".into()));
        }
        if let Some(api) = &self.ipfs.api {
            crate::ipfs::kubo::KuboBackend::new(
                api,
                self.ipfs.auth.as_deref(),
                self.ipfs.call_timeout,
            )
            .map_err(|m| invalid(format!("ipfs: {m}")))?;
        }
        let ipfs_listen = listen_list("ipfs.listen", &self.ipfs.listen)?;
        if self.ipfs.api.is_none() && self.ipfs.embedded && ipfs_listen.is_empty() {
            return Err(invalid(
                "ipfs.listen needs at least one address for the embedded IPFS node".into(),
            ));
        }
        if !(1..=1000).contains(&self.ipfs.concurrency) {
            return Err(invalid("ipfs.concurrency must be within 1..=1000".into()));
        }
        let ipfs = &self.ipfs;
        for (name, value) in [
            ("pin_stall_timeout", ipfs.pin_stall_timeout),
            ("pin_timeout", ipfs.pin_timeout),
            ("call_timeout", ipfs.call_timeout),
            ("relist_interval", ipfs.relist_interval),
            ("retry_max", ipfs.retry_max),
        ] {
            if value < Duration::from_millis(100) {
                return Err(invalid(format!("ipfs.{name} must be at least 100ms")));
            }
        }
        if self.sync.log_retention == 0 {
            return Err(invalid("sync.log_retention must be at least 1".into()));
        }
        let follower = match &self.follower {
            None => None,
            Some(f) => {
                let writer = f.writer.parse::<libp2p::PeerId>().map_err(|_| {
                    invalid(format!("follower.writer: {:?} is not a peer id", f.writer))
                })?;
                let writers: &std::collections::HashSet<libp2p::PeerId> = &trusted_writers;
                if !writers.contains(&writer) {
                    return Err(invalid(
                        "follower.writer must be one of cluster.trusted_writers (a follower \
                         takes the pinset from the trusted writers only)"
                            .into(),
                    ));
                }
                let share = (f.share.as_deref())
                    .map(|s| {
                        s.parse()
                            .map_err(|m| invalid(format!("follower.share: {m}")))
                    })
                    .transpose()?;
                Some(Follower {
                    writer,
                    share,
                    max_storage: f.max_storage.map(|size| size.as_u64()),
                })
            }
        };
        Ok(Validated {
            raw: self,
            secret,
            trusted_writers,
            listen,
            bootstrap,
            api_listen,
            follow_config_listen,
            ipfs_listen,
            follower,
        })
    }

    /// The TOML text of this configuration, with a header.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("config serialises");
        format!(
            "# pinmesh agent configuration. Every key is described in config/example.toml.\n\
             # Keep this file private: cluster.secret admits a machine to the cluster.\n\n{body}"
        )
    }
}

mod parse;
use self::parse::exact_size;
pub use self::parse::{parse_listen, parse_peer_addr, parse_secret};

#[cfg(test)]
mod tests;
