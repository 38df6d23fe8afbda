//! Allocation: which peers hold a pin. The choice itself is a pure function of the protocol
//! crate ([`pinmesh_protocol::allocate`]); this module feeds it.
//!
//! - [`publish`]: this agent's metric (free space for pins, pins allocated, tags), signed and
//!   published every `cluster.metrics_interval` by an agent that drives an IPFS node. Peers hold
//!   each other's latest metric (`swarm::PeerMetric`); one whose metric expired is down.

pub mod publish;

pub use self::publish::{MetricSettings, free_for_pins, publish_metrics};
