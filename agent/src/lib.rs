//! pinmesh-agent: the agent around the pure `pinmesh-protocol` crate.
//!
//! At this milestone it holds the command line only; the daemon (swarm, replica, store,
//! reconciler, control API) follows the layout in DESIGN.md and arrives module by module.

pub mod cli;
