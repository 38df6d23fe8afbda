//! The lines of `GET /v1/status/cluster`, built from what one round of questions learned:
//! which peers should hold each CID ([`Holders`]: its allocations, or every peer known to drive
//! an IPFS node), how each peer asked answered ([`Answer`]), and when each peer with a node was
//! last heard of. Pure, so the rules are tested without a network:
//!
//! - a peer that answered shows what it said (`remote` where the CID is not allocated to it);
//! - a peer that should hold the CID and is not connected, or did not answer, shows
//!   `unreachable`, with `since` (unix ms of its last metric; 0 when none was ever heard);
//! - a connected peer that did not answer and need not hold the CID shows `unknown`, as does
//!   a peer that answered but left the CID out;
//! - a peer that drives no IPFS node is left out (unless the CID is allocated to it: `unknown`);
//! - followers are not asked about the whole pinset: a line counts those whose announced share
//!   covers its CID; about CIDs named, connected followers are asked too, and answer apart.

use std::collections::{BTreeMap, HashMap};

use pinmesh_protocol::{Cid, PinStatus, PinStatusEntry, Version};
use serde::{Deserialize, Serialize};

/// The status given to a peer that could not say, or said something beside the question.
pub const UNKNOWN: &str = "unknown";
/// The status given to a peer that should hold a CID and is not connected or did not answer.
pub const UNREACHABLE: &str = "unreachable";

/// One peer's status for one CID, in a [`ClusterStatusLine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPinStatus {
    /// As the peer reported it (a name of a newer release shows as it came), or [`UNKNOWN`]
    /// or [`UNREACHABLE`] when it did not.
    pub status: PinStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the peer's last change for the CID.
    pub updated: u64,
    /// `unreachable` only: unix milliseconds of the peer's last metric, when it was last heard
    /// of; 0 when it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl PeerPinStatus {
    pub fn is_unreachable(&self) -> bool {
        self.status.as_str() == UNREACHABLE
    }

    fn unreachable(since: u64, why: &str) -> Self {
        PeerPinStatus {
            status: PinStatus::Unknown(UNREACHABLE.into()),
            error: Some(why.to_string()),
            attempts: 0,
            updated: 0,
            since: Some(since),
        }
    }

    fn unknown(why: &str) -> Self {
        PeerPinStatus {
            status: PinStatus::Unknown(UNKNOWN.into()),
            error: Some(why.to_string()),
            attempts: 0,
            updated: 0,
            since: None,
        }
    }
}

impl From<PinStatusEntry> for PeerPinStatus {
    fn from(entry: PinStatusEntry) -> Self {
        PeerPinStatus {
            status: entry.status,
            error: entry.error,
            attempts: entry.attempts,
            updated: entry.updated_ms,
            since: None,
        }
    }
}

/// One CID across the cluster: a line of `GET /v1/status/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusLine {
    pub cid: String,
    /// Every peer that should hold the CID, and every other peer with an IPFS node that
    /// answered (this agent included, if it drives one). Followers are not asked.
    pub peers: BTreeMap<String, PeerPinStatus>,
    /// Live followers whose announced share covers the CID (0 from a release without
    /// followers).
    #[serde(default)]
    pub followers: usize,
    /// Only when the CIDs were named: each connected follower's own status of the CID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub follower_peers: BTreeMap<String, PeerPinStatus>,
}

/// Who should hold a CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holders {
    /// Nobody: it is not in the pinset, or past its expiry.
    Nobody,
    /// Every peer that drives an IPFS node: the pin has no allocations.
    Everyone,
    /// These peers (ids as text, as the pin stores them).
    Allocated(Vec<String>),
}

impl Holders {
    /// From a CID's entry in the pinset (its winner decides), at `now_secs`.
    pub fn of(versions: Option<&[Version]>, now_secs: u64) -> Holders {
        let Some(winner) = versions.and_then(pinmesh_protocol::winner) else {
            return Holders::Nobody;
        };
        if winner.spec.expire_at.is_some_and(|at| at <= now_secs) {
            Holders::Nobody
        } else if winner.spec.allocations.is_empty() {
            Holders::Everyone
        } else {
            Holders::Allocated(winner.spec.allocations.clone())
        }
    }
}

/// How one peer answered a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Its statuses of the CIDs asked.
    Statuses(HashMap<Cid, PeerPinStatus>),
    /// It drives no IPFS node.
    NoNode,
    /// It was asked and did not answer: why.
    Failed(String),
}

/// What one round learned, shared by the lines of its CIDs.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// How each peer asked answered, by peer id (text); this agent's own statuses included.
    /// A peer not asked (not connected) is absent.
    pub answers: BTreeMap<String, Answer>,
    /// Peers known to drive an IPFS node (a metric of theirs is held, live or expired), with
    /// the unix milliseconds their last metric arrived.
    pub known: BTreeMap<String, u64>,
}

impl Round {
    /// The line of `cid`, which `holders` should hold.
    pub fn line(&self, cid: &Cid, holders: &Holders) -> ClusterStatusLine {
        let should_hold = |peer: &str| match holders {
            Holders::Nobody => false,
            Holders::Everyone => self.known.contains_key(peer),
            Holders::Allocated(peers) => peers.iter().any(|p| p == peer),
        };
        let since = |peer: &str| self.known.get(peer).copied().unwrap_or(0);
        let mut peers = BTreeMap::new();
        for (peer, answer) in &self.answers {
            let status = match answer {
                // Matched by CID: a peer answering fewer or other CIDs does not shift the rest.
                Answer::Statuses(statuses) => statuses.get(cid).cloned().unwrap_or_else(|| {
                    PeerPinStatus::unknown("the peer did not answer for this CID")
                }),
                Answer::NoNode if matches!(holders, Holders::Allocated(_)) && should_hold(peer) => {
                    PeerPinStatus::unknown("allocated, but the peer drives no IPFS node")
                }
                Answer::NoNode => continue,
                Answer::Failed(why) if should_hold(peer) => {
                    PeerPinStatus::unreachable(since(peer), why)
                }
                Answer::Failed(why) => PeerPinStatus::unknown(why),
            };
            peers.insert(peer.clone(), status);
        }
        let wanted: Vec<&String> = match holders {
            Holders::Nobody => Vec::new(),
            Holders::Everyone => self.known.keys().collect(),
            Holders::Allocated(list) => list.iter().collect(),
        };
        for peer in wanted {
            peers
                .entry(peer.clone())
                .or_insert_with(|| PeerPinStatus::unreachable(since(peer), "not connected"));
        }
        ClusterStatusLine {
            cid: cid.to_string(),
            peers,
            followers: 0,
            follower_peers: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use pinmesh_protocol::sim::sim_cid;

    use super::*;

    fn said(status: PinStatus) -> PeerPinStatus {
        PeerPinStatus {
            status,
            error: None,
            attempts: 0,
            updated: 7,
            since: None,
        }
    }

    fn answered(cid: &Cid, status: PinStatus) -> Answer {
        Answer::Statuses([(*cid, said(status))].into())
    }

    fn status_of<'a>(line: &'a ClusterStatusLine, peer: &str) -> Option<(&'a str, Option<u64>)> {
        let p = line.peers.get(peer)?;
        Some((p.status.as_str(), p.since))
    }

    #[test]
    fn every_allocated_peer_is_listed_and_one_that_cannot_be_asked_is_unreachable() {
        let cid = sim_cid(1);
        let round = Round {
            answers: [
                ("pinned".to_string(), answered(&cid, PinStatus::Pinned)),
                (
                    "slow".to_string(),
                    Answer::Failed("no answer within 30s".into()),
                ),
                ("other".to_string(), answered(&cid, PinStatus::Remote)),
                ("other-slow".to_string(), Answer::Failed("timed out".into())),
                ("bare".to_string(), Answer::NoNode),
            ]
            .into(),
            known: [
                ("pinned".to_string(), 100),
                ("down".to_string(), 200),
                ("slow".to_string(), 300),
                ("other".to_string(), 400),
            ]
            .into(),
        };
        let holders = Holders::Allocated(vec![
            "pinned".into(),
            "down".into(),
            "slow".into(),
            "never-heard".into(),
        ]);
        let line = round.line(&cid, &holders);
        assert_eq!(line.cid, cid.to_string());
        assert_eq!(status_of(&line, "pinned"), Some(("pinned", None)));
        // Not connected (not asked), heard of at 200: unreachable since then.
        assert_eq!(status_of(&line, "down"), Some(("unreachable", Some(200))));
        assert_eq!(
            line.peers["down"].error.as_deref(),
            Some("not connected"),
            "{line:?}"
        );
        // Connected but silent, and allocated: unreachable too, with why.
        assert_eq!(status_of(&line, "slow"), Some(("unreachable", Some(300))));
        assert_eq!(
            line.peers["slow"].error.as_deref(),
            Some("no answer within 30s")
        );
        assert!(line.peers["slow"].is_unreachable());
        // Allocated but never heard of: unreachable since 0.
        assert_eq!(
            status_of(&line, "never-heard"),
            Some(("unreachable", Some(0)))
        );
        // Not allocated: what it said, or unknown when it did not answer; no node: left out.
        assert_eq!(status_of(&line, "other"), Some(("remote", None)));
        assert_eq!(status_of(&line, "other-slow"), Some(("unknown", None)));
        assert_eq!(status_of(&line, "bare"), None);
        assert_eq!(line.peers.len(), 6, "{line:?}");
    }

    #[test]
    fn a_pin_without_allocations_should_be_on_every_peer_known_to_drive_a_node() {
        let cid = sim_cid(2);
        let round = Round {
            answers: [
                ("me".to_string(), answered(&cid, PinStatus::Pinning)),
                // Answered, but no metric of it is held (yet): listed as it said.
                ("new".to_string(), answered(&cid, PinStatus::Queued)),
                // Silent, and not known to drive a node: unknown, not unreachable.
                ("old".to_string(), Answer::Failed("unsupported".into())),
                ("bare".to_string(), Answer::NoNode),
                // Answered for other CIDs only.
                (
                    "partial".to_string(),
                    answered(&sim_cid(3), PinStatus::Pinned),
                ),
            ]
            .into(),
            known: [
                ("me".to_string(), 10),
                ("expired".to_string(), 20),
                ("partial".to_string(), 30),
            ]
            .into(),
        };
        let line = round.line(&cid, &Holders::Everyone);
        assert_eq!(status_of(&line, "me"), Some(("pinning", None)));
        assert_eq!(status_of(&line, "new"), Some(("queued", None)));
        assert_eq!(status_of(&line, "old"), Some(("unknown", None)));
        assert_eq!(status_of(&line, "bare"), None);
        assert_eq!(status_of(&line, "partial"), Some(("unknown", None)));
        assert_eq!(status_of(&line, "expired"), Some(("unreachable", Some(20))));
        assert_eq!(line.peers.len(), 5, "{line:?}");

        // A CID nobody should hold (unpinned, expired): only what the peers said.
        let line = round.line(&cid, &Holders::Nobody);
        assert_eq!(status_of(&line, "expired"), None);
        assert_eq!(status_of(&line, "old"), Some(("unknown", None)));
        assert_eq!(line.peers.len(), 4, "{line:?}");
    }

    #[test]
    fn an_allocated_peer_without_a_node_is_unknown_not_left_out() {
        let cid = sim_cid(4);
        let round = Round {
            answers: [("bare".to_string(), Answer::NoNode)].into(),
            known: BTreeMap::new(),
        };
        let line = round.line(&cid, &Holders::Allocated(vec!["bare".into()]));
        assert_eq!(status_of(&line, "bare"), Some(("unknown", None)));
    }

    #[test]
    fn holders_come_from_the_winner_and_its_expiry() {
        use pinmesh_protocol::{ActorId, Dot, PinSpec};
        let version = |allocations: Vec<String>, expire_at: Option<u64>| Version {
            dot: Dot::new(ActorId(1), 1),
            at: 1,
            spec: PinSpec {
                allocations,
                expire_at,
                ..PinSpec::default()
            },
        };
        assert_eq!(Holders::of(None, 100), Holders::Nobody);
        assert_eq!(
            Holders::of(Some(&[version(Vec::new(), None)]), 100),
            Holders::Everyone
        );
        assert_eq!(
            Holders::of(Some(&[version(vec!["a".into()], Some(101))]), 100),
            Holders::Allocated(vec!["a".into()])
        );
        assert_eq!(
            Holders::of(Some(&[version(vec!["a".into()], Some(100))]), 100),
            Holders::Nobody,
            "past its expiry at its second"
        );
    }

    #[test]
    fn lines_stay_readable_by_older_clients_and_read_older_lines() {
        let cid = sim_cid(5);
        let round = Round {
            answers: [("up".to_string(), answered(&cid, PinStatus::Pinned))].into(),
            known: [("down".to_string(), 42)].into(),
        };
        let line = round.line(&cid, &Holders::Allocated(vec!["up".into(), "down".into()]));
        let json = serde_json::to_value(&line).expect("json");
        assert_eq!(json["peers"]["down"]["status"], "unreachable");
        assert_eq!(json["peers"]["down"]["since"], 42);
        assert!(
            json["peers"]["up"].get("since").is_none(),
            "only unreachable peers carry since: {json}"
        );
        // A line of a release before `since`.
        let old = r#"{"cid":"x","peers":{"p":{"status":"pinned","attempts":0,"updated":5}}}"#;
        let read: ClusterStatusLine = serde_json::from_str(old).expect("old line");
        assert_eq!(read.peers["p"].since, None);
    }
}
