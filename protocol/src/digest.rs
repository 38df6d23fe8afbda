//! 32-byte digests: the order-free state digest and the applied-vector digest.

use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// A 32-byte digest. The state digest is the XOR of one blake3 hash per live entry, so adding or
/// removing an entry toggles its hash in or out in O(1) and the result does not depend on the
/// order of changes. XOR suffices to detect accidental divergence; it is not a defence against a
/// writer crafting collisions (writers are trusted and their batches signed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Digest {
    pub const ZERO: Digest = Digest([0; 32]);

    /// XORs `other` into `self`: applying it twice is a no-op.
    pub fn toggle(&mut self, other: &Digest) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a ^= b;
        }
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..16])
    }
}

/// The hash one live entry contributes to the state digest: over the CID's bytes and the entry's
/// canonical encoding, which every replica computes identically.
pub fn entry_hash(cid: &[u8], canonical_entry: &[u8]) -> Digest {
    // Derived once: deriving per call costs an extra compression on the delta hot path.
    static KEY: LazyLock<[u8; 32]> =
        LazyLock::new(|| blake3::derive_key("pinmesh 2026 pin entry v1", b""));
    let mut hasher = blake3::Hasher::new_keyed(&KEY);
    hasher.update(&(cid.len() as u64).to_le_bytes());
    hasher.update(cid);
    hasher.update(canonical_entry);
    Digest(*hasher.finalize().as_bytes())
}
