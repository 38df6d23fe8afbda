//! Shares of a collection: a follower may hold only the CIDs of its share, `K/N`, the K-th of
//! N equal ranges of a hash of the CID. The hash is the same on every machine, so N followers
//! with shares 0/N .. N-1/N hold each pin once between them, and a member can tell from the
//! shares followers announce how many of them hold a CID without asking them.

/// One of N shares of the CIDs: those whose hash falls in the K-th of N equal ranges.
/// Encoded as `[index, of]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub of: u32,
}

crate::serde_as_tuple!(Share {
    index: u32,
    of: u32
});

/// Shares a collection is split into at most.
pub const SHARES_MAX: u32 = 1024;

impl Share {
    /// Whether `cid` falls in this share. Every CID falls in exactly one share of N.
    pub fn contains(&self, cid: &crate::Cid) -> bool {
        self.has(point(cid))
    }

    /// Whether a CID at `point` (its [`point`]) falls in this share: for many shares asked
    /// about one CID, hashing it once.
    pub fn has(&self, point: u64) -> bool {
        ((u128::from(point) * u128::from(self.of)) >> 64) as u32 == self.index
    }
}

/// Where `cid` falls on the ring the shares split: a hash of it.
pub fn point(cid: &crate::Cid) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pinmesh share v1\0");
    hasher.update(&cid.to_bytes());
    u64::from_le_bytes(
        hasher.finalize().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    )
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.of)
    }
}

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a share: write K/N, with 0 <= K < N <= {SHARES_MAX}");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, of): (u32, u32) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if of == 0 || of > SHARES_MAX || index >= of {
            return Err(bad());
        }
        Ok(Share { index, of })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cid_falls_in_one_share_and_the_shares_are_about_even() {
        let shares: Vec<Share> = (0..4).map(|index| Share { index, of: 4 }).collect();
        let mut counts = [0usize; 4];
        for n in 0..10_000 {
            let cid = crate::sim::sim_cid(n);
            let holding: Vec<usize> = (0..4).filter(|i| shares[*i].contains(&cid)).collect();
            assert_eq!(holding.len(), 1, "{cid} in shares {holding:?}");
            counts[holding[0]] += 1;
        }
        for count in counts {
            assert!((2_250..=2_750).contains(&count), "{counts:?}");
        }
        // One share of one is everything.
        let all = Share { index: 0, of: 1 };
        assert!((0..100).all(|n| all.contains(&crate::sim::sim_cid(n))));
    }

    #[test]
    fn a_share_is_written_k_of_n() {
        assert_eq!("0/2".parse::<Share>(), Ok(Share { index: 0, of: 2 }));
        assert_eq!(Share { index: 3, of: 8 }.to_string(), "3/8");
        for bad in ["2/2", "1/0", "x/2", "1", "0/2000", "-1/2"] {
            let err = bad.parse::<Share>().expect_err(bad);
            assert!(err.contains("K/N"), "{err}");
        }
    }
}
