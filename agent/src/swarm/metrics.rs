//! Peers' allocation metrics ([`Metric`]), as received on the cluster's metrics topic, and this
//! agent's own.
//!
//! A metric is accepted only when it verifies for this cluster, describes the peer that
//! published it (its key is the gossip message's signer) and is newer than the one held. A
//! metric holds for its time to live from its arrival, by this agent's clock; after that its
//! peer is down for allocation. An older `seq` is taken again only once the held metric has
//! expired, so a peer whose clock went back is not shut out for good.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::IdentTopic;
use pinmesh_protocol::codec::{self as wire, DecodeError};
use pinmesh_protocol::metric::{Metric, MetricError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::behaviour::peer_of_key;

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
}

impl Held {
    fn expires(&self) -> Instant {
        self.arrived + Duration::from_millis(self.metric.ttl_ms)
    }

    fn live(&self, now: Instant) -> bool {
        now < self.expires()
    }
}

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
            forget_after,
            held: HashMap::new(),
        }
    }

    /// The allocatable peers: live, or down for less than `peer_forget_after` (older ones
    /// are forgotten here).
    pub fn allocatable(&mut self, now: Instant) -> Allocatable {
        let forget_after = self.forget_after;
        self.held.retain(|_, held| {
            now.saturating_duration_since(held.expires()) < forget_after || held.live(now)
        });
        let mut peers = Allocatable::default();
        for (peer, held) in &self.held {
            if held.live(now) {
                if let Some(view) = self.view(peer, now) {
                    peers.live.push((*peer, view));
                }
            } else {
                peers
                    .down
                    .push((*peer, now.saturating_duration_since(held.expires())));
            }
        }
        peers
    }

    /// Takes a metric published by `source`, or says why not.
    pub fn receive(&mut self, source: PeerId, data: &[u8], now: Instant) -> Result<(), Rejected> {
        let metric = wire::decode_metric(data)?;
        metric.verify(&self.cluster)?;
        if peer_of_key(&metric.peer) != Some(source) {
            return Err(Rejected::NotItsPublisher);
        }
        self.hold(source, metric, now)
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
        self.held.insert(
            peer,
            Held {
                metric,
                arrived: now,
            },
        );
        Ok(())
    }

    /// What `peer` last said, if anything.
    pub fn view(&self, peer: &PeerId, now: Instant) -> Option<PeerMetric> {
        let held = self.held.get(peer)?;
        Some(PeerMetric {
            free: held.metric.free,
            pins: held.metric.pins,
            tags: held.metric.tags.iter().cloned().collect(),
            age_ms: now.saturating_duration_since(held.arrived).as_millis() as u64,
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
}
