//! pinmesh-protocol: the replicated pinset and the messages that replicate it.
//!
//! Pure: no tokio, no libp2p, no redb, no I/O, no clocks. Every function maps (state, input,
//! `now` passed in) to (state, output), so the [`sim`] simulator can drive many replicas through
//! a hostile network in one test, and the agent wraps the same functions in its actors.
//!
//! - [`allocate`]: which peers hold a pin (replication factors, tags, free space).
//! - [`dot`]: actors, dots and exact dot sets (causal context, applied vector).
//! - [`spec`]: the options of a pin.
//! - [`entry`]: one CID's versions and their join.
//! - [`delta`]: what one operation changed.
//! - [`pinset`]: the store-agnostic state operations, and an in-memory pinset.
//! - [`metric`]: what an agent publishes about itself for allocation.
//! - [`message`] and [`codec`]: wire messages, their versioned encoding and size limits.
//! - [`snapshot`]: whole states in chunks, staged and checked before they are joined.
//! - [`digest`]: state and applied digests.
//! - [`catchup`]: how a replica catches up with its peers and knows it has: a sans-I/O state
//!   machine the agent's swarm and the simulator both drive.
//! - [`sim`]: a seeded multi-replica simulator.

pub mod allocate;
pub mod announce;
pub mod catchup;
pub mod codec;
pub mod delta;
pub mod digest;
pub mod dot;
pub mod entry;
pub mod message;
pub mod metric;
pub mod pinset;
pub mod share;
pub mod sim;
pub mod snapshot;
pub mod spec;

pub use cid::Cid;
pub use codec::DecodeError;
pub use delta::{Change, Delta, Op};
pub use digest::Digest;
pub use dot::{ActorId, AppliedVector, CausalContext, Comparison, Dot, DotSet, RangeSet};
pub use entry::{Version, winner};
pub use message::{
    BatchError, DeltaBatch, Gossip, Key, PinEntry, PinStatus, PinStatusEntry, Refusal, Request,
    Response, Sig, Signer, SnapshotChunk, SnapshotHead, Summary,
};
pub use pinset::{EntryStore, Head, JoinError, MemPinset, Outcome};
pub use spec::{PinMode, PinSpec, SpecError, UnknownFields};

/// Implements `Serialize`/`Deserialize` for a struct as a CBOR array of its fields, in order:
/// smaller than a map and just as stable, since the golden tests pin the layout.
#[macro_export]
#[doc(hidden)]
macro_rules! serde_as_tuple {
    ($ty:ident { $($field:ident : $fty:ty),+ $(,)? }) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ( $( &self.$field, )+ ).serialize(s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let ( $( $field, )+ ) = <( $( $fty, )+ )>::deserialize(d)?;
                Ok($ty { $( $field ),+ })
            }
        }
    };
}
