//! Allocation: which peers hold a pin. The choice itself is a pure function of the protocol
//! crate ([`pinmesh_protocol::allocate`]); this module feeds it.
//!
//! - [`choose`]: the writer's choice of a pin's allocations (factors, user allocations, tags,
//!   free space), stored in the pin.
//! - [`keeper`]: repinning pins whose peers are lost, and removing expired pins, each done by
//!   one peer chosen by the pin's CID, with no leader; [`guard`]: when it holds repinning back.
//! - [`publish`]: this agent's metric (free space for pins, pins allocated, tags), signed and
//!   published every `cluster.metrics_interval` by an agent that drives an IPFS node. Peers hold
//!   each other's latest metric (`swarm::PeerMetric`); one whose metric expired is down.

/// The cluster's allocation settings (`[cluster]` in the config).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Factors of a pin written without any (`replication_min`, `replication_max`).
    pub replication: (i32, i32),
    /// Tags to spread replicas across.
    pub allocate_by: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        let every = pinmesh_protocol::spec::EVERYWHERE;
        Policy {
            replication: (every, every),
            allocate_by: Vec::new(),
        }
    }
}

pub mod choose;
mod guard;
pub mod keeper;
pub mod publish;

pub use self::choose::{Ask, Refused, choose};
pub use self::keeper::KeeperSettings;
pub use self::publish::{MetricSettings, free_for_pins, next_seq, publish_metrics, ttl_ms};
