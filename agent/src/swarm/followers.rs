//! Followers' announcements ([`Announcement`]), as received on the cluster's followers topic.
//!
//! The topic is open to peers that may not write (followers are such peers), so what a member
//! takes from it is bounded: at most [`MAX_ANNOUNCEMENT`] bytes a message, one announcement
//! held per follower, at most one taken from a follower every [`MIN_GAP`] (faster ones are
//! ignored and not forwarded), and at most [`MAX_FOLLOWERS`] followers held (when full,
//! followers whose announcement expired make room; if none did, newcomers are ignored). An
//! announcement is taken only when it verifies for this cluster, describes its publisher, is
//! newer than the one held (its `seq`, the follower's clock in milliseconds, is never taken
//! twice) and is not older than its time to live and [`MAX_SKEW`] by this agent's clock (an
//! old one replayed is ignored). It holds for its time to live, at most [`MAX_HOLD`], and the
//! follower is forgotten [`FORGET_AFTER`] after that. The trusted writers' own are ignored (the
//! swarm checks). Announcements carry no pin data and are the followers' own word: they tell
//! `peers ls` who follows and how much they say they hold, and the cluster status how many
//! followers cover a CID (from their shares, without asking them).

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::IdentTopic;
use pinmesh_protocol::Cid;
use pinmesh_protocol::announce::{AnnouncementError, MAX_ANNOUNCEMENT};
use pinmesh_protocol::codec::{self as wire, DecodeError};
use pinmesh_protocol::share::Share;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use pinmesh_protocol::announce::Announcement;

use super::behaviour::peer_of_key;

/// The followers topic of a cluster. Agents of releases without followers do not subscribe.
pub fn topic(cluster: &str) -> IdentTopic {
    IdentTopic::new(format!("pinmesh/{cluster}/followers/1"))
}

/// At most one announcement is taken from a follower this often.
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// At most this many followers are held; announcements of others are ignored until some are
/// forgotten.
pub const MAX_FOLLOWERS: usize = 4096;

/// A follower not heard of for this long after its announcement expired is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// An announcement holds for its time to live, at most this long: one message keeps a
/// follower (or a made-up one) in the table no longer.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// How far a follower's clock may be behind this agent's: an announcement older than its time
/// to live and this is ignored.
pub const MAX_SKEW: Duration = Duration::from_secs(600);

/// Why an announcement was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("announcement of {0} bytes, over the limit of {MAX_ANNOUNCEMENT}")]
    TooLarge(usize),
    #[error("undecodable announcement: {0}")]
    Undecodable(#[from] DecodeError),
    #[error("invalid announcement: {0}")]
    Invalid(#[from] AnnouncementError),
    #[error("announcement describes another peer than its publisher")]
    NotItsPublisher,
    /// Not newer than the one held, sooner than [`MIN_GAP`] after it, too old, or from one
    /// follower too many: ignored, not held against the sender.
    #[error("announcement ignored")]
    Ignored,
}

/// One follower, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerView {
    #[serde(with = "crate::text")]
    pub peer_id: PeerId,
    /// `K/N`; absent: every pin.
    #[serde(with = "crate::text::option", default)]
    pub share: Option<Share>,
    /// Pins its node holds, bytes its node uses, pins of its share it skipped (storage cap).
    pub pins: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// Milliseconds since its announcement arrived.
    pub age_ms: u64,
    /// Whether the announcement still holds; only live followers count as covering a CID.
    pub live: bool,
}

struct Held {
    announcement: Announcement,
    arrived: Instant,
    expires: Instant,
}

/// The latest announcement of each follower.
pub struct Followers {
    cluster: String,
    held: HashMap<PeerId, Held>,
}

impl Followers {
    pub fn new(cluster: &str) -> Self {
        Followers {
            cluster: cluster.to_string(),
            held: HashMap::new(),
        }
    }

    /// Takes an announcement published by `source` at `now` (`now_ms`: the wall clock, unix
    /// milliseconds), or says why not.
    pub fn receive(
        &mut self,
        source: PeerId,
        data: &[u8],
        now: Instant,
        now_ms: u64,
    ) -> Result<(), Rejected> {
        if data.len() > MAX_ANNOUNCEMENT {
            return Err(Rejected::TooLarge(data.len()));
        }
        let announcement = wire::decode_announcement(data)?;
        announcement.verify(&self.cluster)?;
        if peer_of_key(&announcement.peer) != Some(source) {
            return Err(Rejected::NotItsPublisher);
        }
        let ttl = Duration::from_millis(announcement.ttl_ms).min(MAX_HOLD);
        let oldest = now_ms.saturating_sub((ttl + MAX_SKEW).as_millis() as u64);
        if announcement.seq < oldest {
            return Err(Rejected::Ignored);
        }
        match self.held.get(&source) {
            Some(held) => {
                if announcement.seq <= held.announcement.seq
                    || now.saturating_duration_since(held.arrived) < MIN_GAP
                {
                    return Err(Rejected::Ignored);
                }
            }
            None => {
                if self.held.len() >= MAX_FOLLOWERS {
                    // Followers whose announcement expired make room.
                    self.held.retain(|_, held| now < held.expires);
                }
                if self.held.len() >= MAX_FOLLOWERS {
                    return Err(Rejected::Ignored);
                }
            }
        }
        let expires = now + ttl;
        self.held.insert(
            source,
            Held {
                announcement,
                arrived: now,
                expires,
            },
        );
        Ok(())
    }

    /// Forgets followers whose announcement expired more than [`FORGET_AFTER`] ago.
    pub fn forget_old(&mut self, now: Instant) {
        self.held
            .retain(|_, held| now < held.expires + FORGET_AFTER);
    }

    /// Drops what `peer` said (it was removed from the cluster).
    pub fn forget(&mut self, peer: &PeerId) {
        self.held.remove(peer);
    }

    /// The followers held.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.held.keys()
    }

    /// What `peer` last announced, if it is a follower held.
    pub fn view(&self, peer: &PeerId, now: Instant) -> Option<FollowerView> {
        let held = self.held.get(peer)?;
        let a = &held.announcement;
        Some(FollowerView {
            peer_id: *peer,
            share: a.share,
            pins: a.pins,
            bytes: a.bytes,
            skipped: a.skipped,
            age_ms: now.saturating_duration_since(held.arrived).as_millis() as u64,
            live: now < held.expires,
        })
    }

    /// Every follower held, by peer id.
    pub fn views(&self, now: Instant) -> Vec<FollowerView> {
        let mut views: Vec<FollowerView> = (self.held.keys())
            .filter_map(|peer| self.view(peer, now))
            .collect();
        views.sort_by_key(|v| v.peer_id);
        views
    }
}

/// How many of the live `followers` cover `cid` by their announced share (the CID hashed
/// once, whatever the number of followers).
pub fn coverage(followers: &[FollowerView], cid: &Cid) -> usize {
    let point = pinmesh_protocol::share::point(cid);
    (followers.iter())
        .filter(|f| f.live && f.share.is_none_or(|share| share.has(point)))
        .count()
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use pinmesh_protocol::announce::Standing;
    use pinmesh_protocol::sim::sim_cid;

    use super::*;
    use crate::replica::NodeSigner;

    fn follower(seed: u8) -> (PeerId, NodeSigner) {
        let keypair = Keypair::ed25519_from_bytes([seed; 32]).expect("key");
        let peer = keypair.public().to_peer_id();
        let signer = NodeSigner(keypair.try_into_ed25519().expect("ed25519"));
        (peer, signer)
    }

    fn announced(signer: &NodeSigner, cluster: &str, seq: u64, share: Option<Share>) -> Vec<u8> {
        let standing = Standing {
            seq,
            ttl_ms: 3_000,
            share,
            pins: 7,
            bytes: 1 << 20,
            skipped: 1,
        };
        wire::encode_announcement(&Announcement::sign(signer, cluster, standing))
    }

    #[test]
    fn an_announcement_is_held_for_its_time_to_live_then_forgotten() {
        let (peer, signer) = follower(1);
        let mut followers = Followers::new("c");
        let t0 = Instant::now();
        followers
            .receive(peer, &announced(&signer, "c", 1, None), t0, 0)
            .expect("taken");
        let views = followers.views(t0 + Duration::from_secs(1));
        assert_eq!(views.len(), 1);
        assert!(views[0].live);
        assert_eq!(
            (views[0].pins, views[0].skipped, views[0].share),
            (7, 1, None)
        );
        assert!(!followers.views(t0 + Duration::from_secs(3))[0].live);
        followers.forget_old(t0 + Duration::from_secs(3) + FORGET_AFTER);
        assert!(followers.view(&peer, t0).is_none());
    }

    #[test]
    fn replays_floods_forgeries_and_strangers_are_not_taken() {
        let (peer, signer) = follower(1);
        let (other, _) = follower(2);
        let mut followers = Followers::new("c");
        let t0 = Instant::now();
        let first = announced(&signer, "c", 5, None);
        followers.receive(peer, &first, t0, 0).expect("taken");
        // The same one again, an older one, a newer one too soon.
        assert!(matches!(
            followers.receive(peer, &first, t0 + MIN_GAP, 0),
            Err(Rejected::Ignored)
        ));
        let older = announced(&signer, "c", 4, None);
        assert!(matches!(
            followers.receive(peer, &older, t0 + MIN_GAP, 0),
            Err(Rejected::Ignored)
        ));
        let newer = announced(&signer, "c", 6, Some(Share { index: 0, of: 2 }));
        let soon = t0 + MIN_GAP / 2;
        assert!(matches!(
            followers.receive(peer, &newer, soon, 0),
            Err(Rejected::Ignored)
        ));
        followers
            .receive(peer, &newer, t0 + MIN_GAP, 0)
            .expect("taken");
        // Relayed as another peer's, of another cluster, tampered, oversized.
        assert!(matches!(
            followers.receive(other, &announced(&signer, "c", 9, None), t0, 0),
            Err(Rejected::NotItsPublisher)
        ));
        assert!(matches!(
            followers.receive(peer, &announced(&signer, "d", 9, None), t0, 0),
            Err(Rejected::Invalid(AnnouncementError::BadSignature))
        ));
        let mut tampered = announced(&signer, "c", 9, None);
        let at = tampered.len() - 70;
        tampered[at] ^= 1;
        assert!(
            followers
                .receive(peer, &tampered, t0 + MIN_GAP * 4, 0)
                .is_err()
        );
        let big = vec![0u8; MAX_ANNOUNCEMENT + 1];
        assert!(matches!(
            followers.receive(peer, &big, t0, 0),
            Err(Rejected::TooLarge(_))
        ));
        let views = followers.views(t0 + MIN_GAP);
        assert_eq!(views[0].share, Some(Share { index: 0, of: 2 }));
    }

    #[test]
    fn an_old_announcement_replayed_is_ignored_and_none_holds_past_max_hold() {
        let (peer, signer) = follower(1);
        let mut followers = Followers::new("c");
        let t0 = Instant::now();
        let wall = 1_800_000_000_000;
        let last = announced(&signer, "c", wall, None);
        followers.receive(peer, &last, t0, wall).expect("taken");
        // Expired, its last announcement (or an earlier one) replayed: never taken again.
        let later = t0 + Duration::from_secs(60);
        for seq in [wall, wall - 1] {
            let replayed = announced(&signer, "c", seq, None);
            let at = wall + 60_000;
            assert!(matches!(
                followers.receive(peer, &replayed, later, at),
                Err(Rejected::Ignored)
            ));
        }
        // Forgotten, then replayed much later: too old for its time to live and the skew.
        let (other, other_signer) = follower(2);
        let stale = announced(&other_signer, "c", wall, None);
        let too_late = wall + 3_000 + MAX_SKEW.as_millis() as u64 + 1;
        assert!(matches!(
            followers.receive(other, &stale, later, too_late),
            Err(Rejected::Ignored)
        ));
        followers
            .receive(other, &stale, later, too_late - 1)
            .expect("within the skew");
        // A time to live of an hour holds for MAX_HOLD.
        let (long, long_signer) = follower(3);
        let standing = Standing {
            seq: wall,
            ttl_ms: 3_600_000,
            ..Standing::default()
        };
        let hour = wire::encode_announcement(&Announcement::sign(&long_signer, "c", standing));
        followers.receive(long, &hour, t0, wall).expect("taken");
        assert!(
            followers
                .view(&long, t0 + MAX_HOLD - Duration::from_secs(1))
                .is_some_and(|v| v.live)
        );
        assert!(
            followers
                .view(&long, t0 + MAX_HOLD)
                .is_some_and(|v| !v.live)
        );
    }

    #[test]
    fn at_most_max_followers_are_held() {
        let mut followers = Followers::new("c");
        let t0 = Instant::now();
        let signer = follower(1).1;
        for n in 0..MAX_FOLLOWERS {
            // Held under made-up ids: the table's limit, not the signatures, is under test.
            let peer = PeerId::random();
            followers.held.insert(
                peer,
                Held {
                    announcement: wire::decode_announcement(&announced(
                        &signer, "c", n as u64, None,
                    ))
                    .expect("decodes"),
                    arrived: t0,
                    expires: t0 + Duration::from_secs(3),
                },
            );
        }
        let (late, late_signer) = follower(3);
        assert!(matches!(
            followers.receive(late, &announced(&late_signer, "c", 1, None), t0, 0),
            Err(Rejected::Ignored)
        ));
        // Once the others' announcements expired, they make room for the newcomer.
        let later = t0 + Duration::from_secs(3);
        followers
            .receive(late, &announced(&late_signer, "c", 1, None), later, 0)
            .expect("taken");
        assert_eq!(followers.views(later).len(), 1);
    }

    #[test]
    fn coverage_counts_the_live_followers_whose_share_has_the_cid() {
        let view = |share: Option<Share>, live: bool| FollowerView {
            peer_id: PeerId::random(),
            share,
            pins: 0,
            bytes: 0,
            skipped: 0,
            age_ms: 0,
            live,
        };
        let halves = [0, 1].map(|index| view(Some(Share { index, of: 2 }), true));
        let mut followers = halves.to_vec();
        followers.push(view(None, true));
        followers.push(view(None, false));
        for n in 0..200 {
            let cid = sim_cid(n);
            // Exactly one half has it, the full one has it, the expired one does not count.
            assert_eq!(coverage(&followers, &cid), 2, "{cid}");
            assert_eq!(coverage(&halves, &cid), 1);
        }
        assert_eq!(coverage(&[], &sim_cid(1)), 0);
    }
}
