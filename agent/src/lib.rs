//! pinmesh-agent: the agent around the pure `pinmesh-protocol` crate. All I/O lives here.
//!
//! - [`node`]: starts and stops a whole agent ([`node::Node::start`]).
//! - [`swarm`]: libp2p transport, behaviours and the event loop that owns the swarm.
//! - [`replica`]: the only writer of the CRDT state (group commits).
//! - [`store`]: redb tables.
//! - [`ipfs`]: the IPFS node the agent drives ([`ipfs::PinBackend`]).
//! - [`reconcile`]: pins and unpins in that node until it matches the pinset.
//! - [`allocation`]: which peers hold a pin; this agent's metric for it.
//! - [`api`]: the control API and its client.
//! - [`config`], [`home`]: configuration and the agent's home directory.
//! - [`fatal`]: how a part that cannot go on stops the agent with one line.
//! - [`files`]: files written atomically and privately.
//! - [`net`]: checks on listen addresses; [`http`]: the hardened HTTP server.
//! - [`text`]: typed identifiers (CIDs, peer ids, multiaddrs) in their text form, for serde.
//! - [`cli`]: the `pinmesh` command line.

pub mod allocation;
pub mod api;
pub mod cli;
pub mod config;
pub mod fatal;
pub mod files;
pub mod follow;
pub mod home;
pub mod http;
pub mod ipfs;
pub mod net;
pub mod node;
pub mod reconcile;
pub mod replica;
pub mod store;
pub mod swarm;
pub mod text;
