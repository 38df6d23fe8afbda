//! Peers' allocation metrics ([`Metric`]), as received on the cluster's metrics topic, and this
//! agent's own.
//!
//! A metric is accepted only when it verifies for this cluster, describes the peer that
//! published it (its key is the gossip message's signer) and is newer than the one held. A
//! metric holds for its time to live from its arrival, by this agent's clock; after that its
//! peer is down for allocation. An older `seq` is taken again only once the held metric has
//! expired, so a peer whose clock went back is not shut out for good.
//!
//! Each peer's metric is also stored (when first taken, then every [`STORE_EVERY`]), and read
//! back at start ([`Metrics::restore_all`]): a restarted agent still counts the peers it knew
//! as allocatable, down since its start, so the partition guard's "fewer than half alive"
//! holds across a restart, and `peers ls` shows them with their last metric.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::IdentTopic;
use pinmesh_protocol::codec::{self as wire, DecodeError};
use pinmesh_protocol::metric::{Metric, MetricError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::behaviour::peer_of_key;
use crate::store::StoredMetric;

/// The metrics topic of a cluster. Agents of releases without metrics do not subscribe to it.
pub fn topic(cluster: &str) -> IdentTopic {
    IdentTopic::new(format!("pinmesh/{cluster}/metrics/1"))
}

/// Why a metric was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("undecodable metric: {0}")]
    Undecodable(#[from] DecodeError),
    #[error("invalid metric: {0}")]
    Invalid(#[from] MetricError),
    #[error("metric describes another peer than its publisher")]
    NotItsPublisher,
    /// Not newer than the live metric held: a replay, or a copy that came the long way.
    #[error("stale metric")]
    Stale,
}

/// One peer's latest metric, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMetric {
    /// Bytes its IPFS node has free for pins.
    pub free: u64,
    /// Pins allocated to it.
    pub pins: u64,
    pub tags: BTreeMap<String, String>,
    /// Milliseconds since it arrived.
    pub age_ms: u64,
    /// Whether it still holds; a peer whose metric expired is down for allocation.
    pub live: bool,
}

struct Held {
    metric: Metric,
    arrived: Instant,
    /// Down for allocation from then on (its time to live after it arrived).
    expires: Instant,
    /// Forgotten from then on (`peer_forget_after` after it expired).
    forget_at: Instant,
    /// Its age when it arrived: how old a stored metric was when a restart read it back.
    age_before: Duration,
    /// When it was last handed out to be stored; `None`: not since it was taken.
    stored: Option<Instant>,
}

impl Held {
    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// A held metric is handed out to be stored ([`Metrics::due_for_storing`]) at most this often
/// per peer: what matters after a restart is that the peer was alive, not its latest numbers.
pub const STORE_EVERY: Duration = Duration::from_secs(300);

/// `peer_forget_after` is taken as at most this (ten years).
const FORGET_AFTER_MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The peers allocation may count on, and those it has lost sight of.
#[derive(Debug, Clone, Default)]
pub struct Allocatable {
    /// Peers with a live metric, with it.
    pub live: Vec<(PeerId, PeerMetric)>,
    /// Peers whose metric expired (less than `peer_forget_after` ago), and for how long
    /// they have been down.
    pub down: Vec<(PeerId, Duration)>,
    /// Peers removed with `peers rm` (filled by the swarm): lost at once.
    pub removed: Vec<PeerId>,
}

/// What the allocation keeper's latest look at the peers found (it reports it; `peers ls`
/// shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repinning {
    /// Peers with a live metric (this one included), and allocatable peers in all (live, or
    /// down for less than `peer_forget_after`, including those known before a restart).
    pub live: usize,
    pub allocatable: usize,
    /// Fewer than half of the allocatable peers are alive: this agent repins nothing.
    pub paused: bool,
    /// Half or more are alive again after fewer: repinning resumes in this many milliseconds
    /// (absent from the previous release's answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes_in_ms: Option<u64>,
    /// Peers counted as lost (down for `repin_after` or longer, or removed).
    pub lost: usize,
    /// Pins this agent allocated again since it started.
    pub repinned: u64,
    /// This agent's uptime at that look, in milliseconds.
    pub uptime_ms: u64,
}

/// The latest metric of each peer.
pub struct Metrics {
    cluster: String,
    /// A peer down for longer than this is forgotten: it no longer counts as allocatable.
    forget_after: Duration,
    held: HashMap<PeerId, Held>,
}

impl Metrics {
    pub fn new(cluster: &str, forget_after: Duration) -> Self {
        Metrics {
            cluster: cluster.to_string(),
            // Bounded, so that adding it to an instant cannot overflow.
            forget_after: forget_after.min(FORGET_AFTER_MAX),
            held: HashMap::new(),
        }
    }

    /// The allocatable peers: live, or down for less than `peer_forget_after` (older ones
    /// are forgotten here).
    pub fn allocatable(&mut self, now: Instant) -> Allocatable {
        self.held.retain(|_, held| now < held.forget_at);
        let mut peers = Allocatable::default();
        for (peer, held) in &self.held {
            if held.live(now) {
                if let Some(view) = self.view(peer, now) {
                    peers.live.push((*peer, view));
                }
            } else {
                peers
                    .down
                    .push((*peer, now.saturating_duration_since(held.expires)));
            }
        }
        peers
    }

    /// Takes a metric published by `source`, or says why not.
    pub fn receive(&mut self, source: PeerId, data: &[u8], now: Instant) -> Result<(), Rejected> {
        let metric = self.verified(source, data)?;
        self.hold(source, metric, now)
    }

    /// `data` decoded, if it verifies for this cluster and describes `peer`.
    fn verified(&self, peer: PeerId, data: &[u8]) -> Result<Metric, Rejected> {
        let metric = wire::decode_metric(data)?;
        metric.verify(&self.cluster)?;
        if peer_of_key(&metric.peer) != Some(peer) {
            return Err(Rejected::NotItsPublisher);
        }
        Ok(metric)
    }

    /// Records this agent's own metric (gossip does not deliver it back).
    pub fn own(&mut self, me: PeerId, metric: Metric, now: Instant) {
        let _ = self.hold(me, metric, now);
    }

    fn hold(&mut self, peer: PeerId, metric: Metric, now: Instant) -> Result<(), Rejected> {
        if let Some(held) = self.held.get(&peer)
            && metric.seq <= held.metric.seq
            && held.live(now)
        {
            return Err(Rejected::Stale);
        }
        let expires = now + Duration::from_millis(metric.ttl_ms);
        let stored = self.held.get(&peer).and_then(|held| held.stored);
        self.held.insert(
            peer,
            Held {
                metric,
                arrived: now,
                expires,
                forget_at: expires + self.forget_after,
                age_before: Duration::ZERO,
                stored,
            },
        );
        Ok(())
    }

    /// Takes back a metric stored before a restart (`age`: how long ago it arrived, by the
    /// wall clock): its peer counts as allocatable and down since `now` (the start), so it
    /// has a full `repin_after` to be heard from again, and is forgotten when it would have
    /// been without the restart (`peer_forget_after` after it expired). One that old, or that
    /// does not verify, is left out.
    pub fn restore(&mut self, peer: PeerId, data: &[u8], age: Duration, now: Instant) -> bool {
        let Ok(metric) = self.verified(peer, data) else {
            return false;
        };
        let ttl = Duration::from_millis(metric.ttl_ms);
        let Some(left) = (self.forget_after + ttl).checked_sub(age) else {
            return false;
        };
        if left.is_zero() || self.held.contains_key(&peer) {
            return false;
        }
        self.held.insert(
            peer,
            Held {
                metric,
                arrived: now,
                expires: now,
                forget_at: now + left,
                age_before: age,
                // Its next metric is stored, so the record's age starts again.
                stored: None,
            },
        );
        true
    }

    /// Restores the stored metrics of the peers `keep` accepts (see [`restore`](Self::restore)).
    /// Returns how many were taken, and the peers whose records were left out (to delete).
    pub fn restore_all(
        &mut self,
        stored: Vec<(PeerId, StoredMetric)>,
        keep: impl Fn(&PeerId) -> bool,
    ) -> (usize, Vec<PeerId>) {
        let (now, wall_ms) = (Instant::now(), crate::replica::now_ms());
        let mut dropped = Vec::new();
        let mut taken = 0;
        for (peer, record) in stored {
            let age = Duration::from_millis(wall_ms.saturating_sub(record.seen_ms));
            if keep(&peer) && self.restore(peer, &record.metric, age, now) {
                taken += 1;
            } else {
                dropped.push(peer);
            }
        }
        (taken, dropped)
    }

    /// Whether `peer`'s metric is due to be stored: never since it was taken, or not for
    /// [`STORE_EVERY`]. [`stored`](Self::stored) says it was.
    pub fn due_for_storing(&self, peer: &PeerId, now: Instant) -> bool {
        self.held.get(peer).is_some_and(|held| {
            held.stored
                .is_none_or(|at| now.saturating_duration_since(at) >= STORE_EVERY)
        })
    }

    /// Records that `peer`'s metric was handed out to be stored at `now`.
    pub fn stored(&mut self, peer: &PeerId, now: Instant) {
        if let Some(held) = self.held.get_mut(peer) {
            held.stored = Some(now);
        }
    }

    /// What `peer` last said, if anything.
    pub fn view(&self, peer: &PeerId, now: Instant) -> Option<PeerMetric> {
        let held = self.held.get(peer)?;
        Some(PeerMetric {
            free: held.metric.free,
            pins: held.metric.pins,
            tags: held.metric.tags.iter().cloned().collect(),
            age_ms: (held.age_before + now.saturating_duration_since(held.arrived)).as_millis()
                as u64,
            live: held.live(now),
        })
    }

    /// The peers whose metric is live, with it.
    pub fn live(&self, now: Instant) -> Vec<(PeerId, PeerMetric)> {
        (self.held.keys())
            .filter_map(|peer| Some((*peer, self.view(peer, now)?)))
            .filter(|(_, metric)| metric.live)
            .collect()
    }

    /// Peers with a metric, live or not.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.held.keys()
    }

    /// Drops what `peer` said (it was removed from the cluster).
    pub fn forget(&mut self, peer: &PeerId) {
        self.held.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;
    use pinmesh_protocol::metric::Reading;

    use super::*;
    use crate::replica::NodeSigner;

    fn agent(seed: u8) -> (PeerId, NodeSigner) {
        let keypair = Keypair::ed25519_from_bytes([seed; 32]).expect("key");
        let peer = keypair.public().to_peer_id();
        let signer = NodeSigner(keypair.try_into_ed25519().expect("ed25519"));
        (peer, signer)
    }

    fn metric(signer: &NodeSigner, cluster: &str, seq: u64) -> Vec<u8> {
        let reading = Reading {
            seq,
            ttl_ms: 3_000,
            free: 1 << 30,
            pins: 5,
            tags: vec![("region".into(), "eu".into())],
        };
        wire::encode_metric(&Metric::sign(signer, cluster, reading))
    }

    #[test]
    fn a_peers_metric_is_held_until_its_time_to_live_is_over() {
        let (peer, signer) = agent(1);
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        let t0 = Instant::now();
        metrics
            .receive(peer, &metric(&signer, "c", 10), t0)
            .expect("taken");
        let view = metrics
            .view(&peer, t0 + Duration::from_secs(1))
            .expect("held");
        assert_eq!(
            (view.free, view.pins, view.age_ms, view.live),
            (1 << 30, 5, 1000, true)
        );
        assert_eq!(view.tags.get("region").map(String::as_str), Some("eu"));
        let later = metrics
            .view(&peer, t0 + Duration::from_secs(3))
            .expect("still shown");
        assert!(!later.live);
    }

    #[test]
    fn forged_foreign_and_replayed_metrics_are_rejected() {
        let (peer, signer) = agent(1);
        let (other, _) = agent(2);
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        let t0 = Instant::now();
        // Published by another peer than the one it describes.
        assert!(matches!(
            metrics.receive(other, &metric(&signer, "c", 10), t0),
            Err(Rejected::NotItsPublisher)
        ));
        // Signed for another cluster.
        assert!(matches!(
            metrics.receive(peer, &metric(&signer, "d", 10), t0),
            Err(Rejected::Invalid(MetricError::BadSignature))
        ));
        assert!(matches!(
            metrics.receive(peer, b"junk", t0),
            Err(Rejected::Undecodable(_))
        ));
        assert!(metrics.view(&other, t0).is_none() && metrics.view(&peer, t0).is_none());
        metrics
            .receive(peer, &metric(&signer, "c", 10), t0)
            .expect("taken");
        // A replay of the same or an older one, while it holds.
        for seq in [10, 9] {
            assert!(matches!(
                metrics.receive(peer, &metric(&signer, "c", seq), t0),
                Err(Rejected::Stale)
            ));
        }
        metrics
            .receive(peer, &metric(&signer, "c", 11), t0)
            .expect("newer");
        // Once it expired, a lower seq is taken (the peer's clock went back).
        let late = t0 + Duration::from_secs(4);
        metrics
            .receive(peer, &metric(&signer, "c", 5), late)
            .expect("after expiry");
        assert!(metrics.view(&peer, late).expect("held").live);
    }

    #[test]
    fn a_down_peer_counts_as_allocatable_until_it_is_forgotten() {
        let (peer, signer) = agent(1);
        let (other, other_signer) = agent(2);
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        let t0 = Instant::now();
        metrics
            .receive(peer, &metric(&signer, "c", 1), t0)
            .expect("taken");
        let t1 = t0 + Duration::from_secs(10);
        metrics
            .receive(other, &metric(&other_signer, "c", 1), t1)
            .expect("taken");
        // The first expired at t0 + 3 s: down for 9 s at t1 + 2 s.
        let seen = metrics.allocatable(t1 + Duration::from_secs(2));
        assert_eq!(
            seen.live.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![other]
        );
        assert_eq!(seen.down, vec![(peer, Duration::from_secs(9))]);
        // Down for 60 s: forgotten, and gone from the table.
        let seen = metrics.allocatable(t0 + Duration::from_secs(63));
        assert_eq!(seen.down, vec![(other, Duration::from_secs(50))]);
        assert!(metrics.view(&peer, t0).is_none());
    }

    #[test]
    fn a_stored_metric_comes_back_down_since_the_start_and_is_forgotten_on_time() {
        let (peer, signer) = agent(1);
        let (other, other_signer) = agent(2);
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        let start = Instant::now();
        let stored = metric(&signer, "c", 10);
        // Heard 50 s before the restart: down from the start, forgotten 60 s after it
        // expired (its time to live is 3 s), so 13 s after the start.
        assert!(metrics.restore(peer, &stored, Duration::from_secs(50), start));
        let seen = metrics.allocatable(start + Duration::from_secs(4));
        assert!(seen.live.is_empty());
        assert_eq!(seen.down, vec![(peer, Duration::from_secs(4))]);
        let view = metrics
            .view(&peer, start + Duration::from_secs(4))
            .expect("shown");
        assert_eq!((view.live, view.age_ms, view.pins), (false, 54_000, 5));
        let seen = metrics.allocatable(start + Duration::from_millis(12_999));
        assert_eq!(seen.down.len(), 1);
        assert!(
            metrics
                .allocatable(start + Duration::from_secs(13))
                .down
                .is_empty()
        );
        // Too old, forged (another peer's, another cluster's), or undecodable: left out.
        let old = Duration::from_secs(63);
        assert!(!metrics.restore(other, &metric(&other_signer, "c", 1), old, start));
        assert!(!metrics.restore(other, &stored, Duration::ZERO, start));
        let foreign = metric(&other_signer, "d", 1);
        assert!(!metrics.restore(other, &foreign, Duration::ZERO, start));
        assert!(!metrics.restore(other, b"junk", Duration::ZERO, start));
        // Its peer's next metric is taken as usual, whatever its seq, and stored.
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        assert!(metrics.restore(peer, &stored, Duration::from_secs(5), start));
        metrics
            .receive(peer, &metric(&signer, "c", 3), start)
            .expect("taken");
        assert!(metrics.view(&peer, start).expect("held").live);
        assert!(metrics.due_for_storing(&peer, start));
    }

    #[test]
    fn a_restore_all_keeps_what_it_may_and_names_the_records_to_delete() {
        let (peer, signer) = agent(1);
        let (removed, removed_signer) = agent(2);
        let (old, old_signer) = agent(3);
        let now_ms = crate::replica::now_ms();
        let record = |signer: &NodeSigner, seen_ms: u64| StoredMetric {
            metric: metric(signer, "c", 1),
            seen_ms,
        };
        let stored = vec![
            (peer, record(&signer, now_ms - 1_000)),
            (removed, record(&removed_signer, now_ms)),
            (old, record(&old_signer, now_ms - 3_600_000)),
        ];
        let mut metrics = Metrics::new("c", Duration::from_secs(60));
        let (taken, dropped) = metrics.restore_all(stored, |p| *p != removed);
        assert_eq!((taken, dropped), (1, vec![removed, old]));
        let seen = metrics.allocatable(Instant::now());
        assert_eq!(
            seen.down.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            vec![peer]
        );
    }

    #[test]
    fn a_peers_metric_is_due_to_be_stored_when_first_taken_then_every_few_minutes() {
        let (peer, signer) = agent(1);
        let mut metrics = Metrics::new("c", Duration::from_secs(3600));
        let t0 = Instant::now();
        assert!(!metrics.due_for_storing(&peer, t0), "nothing held");
        for (seq, at, due) in [
            (1, Duration::ZERO, true),
            (2, Duration::from_secs(1), false),
            (3, STORE_EVERY - Duration::from_secs(1), false),
            (4, STORE_EVERY, true),
            (5, STORE_EVERY + Duration::from_secs(1), false),
        ] {
            metrics
                .receive(peer, &metric(&signer, "c", seq), t0 + at)
                .expect("taken");
            assert_eq!(metrics.due_for_storing(&peer, t0 + at), due, "seq {seq}");
            if due {
                metrics.stored(&peer, t0 + at);
            }
        }
        // Not handed out (the queue was full): due again with the next one.
        metrics
            .receive(peer, &metric(&signer, "c", 6), t0 + STORE_EVERY * 2)
            .expect("taken");
        assert!(metrics.due_for_storing(&peer, t0 + STORE_EVERY * 2));
        metrics
            .receive(peer, &metric(&signer, "c", 7), t0 + STORE_EVERY * 2)
            .expect("taken");
        assert!(metrics.due_for_storing(&peer, t0 + STORE_EVERY * 2));
    }
}
