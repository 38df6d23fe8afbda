//! Which connected peers belong to this cluster, judged from what identify says they speak.
//!
//! Pure bookkeeping: the event loop feeds it identify and connection events and carries out
//! what it answers (cut a peer off, forget it, re-check `synced`).
//!
//! - A **member** speaks this cluster's sync protocol.
//! - A **foreign** peer speaks another cluster's (same secret, another cluster name): cut off
//!   once it has had our identify (so both sides learn why), forgotten, never dialled again
//!   while the agent runs.
//! - An **outsider** speaks no pinmesh sync protocol of this release (an older agent, a plain
//!   libp2p node): left connected, but `synced` does not wait for its answer.

use std::collections::HashSet;

use libp2p::{PeerId, StreamProtocol};

use super::codec;

/// What identify showed a peer to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Member,
    /// Of another cluster; `first`: not known as such before.
    Foreign {
        first: bool,
    },
    /// No sync protocol of this release; `first`: newly seen as such, `legacy`: it speaks the
    /// sync protocol of release 0.1.
    Outsider {
        first: bool,
        legacy: bool,
    },
}

#[derive(Debug)]
pub struct Membership {
    /// This cluster's sync protocols (this release's and the previous one's).
    protocols: [StreamProtocol; 2],
    members: HashSet<PeerId>,
    outsiders: HashSet<PeerId>,
    foreign: HashSet<PeerId>,
    /// Connected peers that have had our identify.
    identify_sent: HashSet<PeerId>,
}

impl Membership {
    pub fn new(protocols: [StreamProtocol; 2]) -> Self {
        Membership {
            protocols,
            members: HashSet::new(),
            outsiders: HashSet::new(),
            foreign: HashSet::new(),
            identify_sent: HashSet::new(),
        }
    }

    /// Judges a peer by the protocols its identify lists.
    pub fn identified(&mut self, peer: PeerId, protocols: &[StreamProtocol]) -> Verdict {
        if self.protocols.iter().any(|ours| protocols.contains(ours)) {
            self.outsiders.remove(&peer);
            self.members.insert(peer);
            return Verdict::Member;
        }
        if protocols
            .iter()
            .any(|p| codec::is_sync_protocol(p.as_ref()))
        {
            return Verdict::Foreign {
                first: self.foreign.insert(peer),
            };
        }
        Verdict::Outsider {
            first: self.outsiders.insert(peer),
            legacy: protocols
                .iter()
                .any(|p| p.as_ref() == codec::LEGACY_SYNC_PROTOCOL),
        }
    }

    /// A request to `peer` found no protocol in common: it cannot answer.
    pub fn unsupported(&mut self, peer: PeerId) {
        if !self.members.contains(&peer) {
            self.outsiders.insert(peer);
        }
    }

    /// Our identify reached `peer`. True when it is foreign and may now be cut off.
    pub fn identify_sent(&mut self, peer: PeerId) -> bool {
        self.identify_sent.insert(peer);
        self.foreign.contains(&peer)
    }

    /// Whether a foreign peer has had our identify (else it is cut off once it has).
    pub fn may_cut(&self, peer: &PeerId) -> bool {
        self.identify_sent.contains(peer)
    }

    /// The last connection to `peer` closed. True when it had shown itself a member (else
    /// nothing of it is worth listing or remembering).
    pub fn disconnected(&mut self, peer: &PeerId) -> bool {
        // Judged again on its next connection (it may have been upgraded meanwhile).
        self.outsiders.remove(peer);
        self.identify_sent.remove(peer);
        self.members.remove(peer)
    }

    /// Whether identify showed this connected peer a member or an outsider.
    pub fn is_identified(&self, peer: &PeerId) -> bool {
        self.members.contains(peer) || self.outsiders.contains(peer)
    }

    pub fn is_foreign(&self, peer: &PeerId) -> bool {
        self.foreign.contains(peer)
    }

    /// Whether `synced` waits for this connected peer's answer.
    pub fn counts(&self, peer: &PeerId) -> bool {
        !self.outsiders.contains(peer) && !self.foreign.contains(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(text: &str) -> StreamProtocol {
        StreamProtocol::try_from_owned(text.to_string()).expect("protocol")
    }

    #[test]
    fn peers_are_members_foreign_or_outsiders_by_their_protocols() {
        let ours = codec::sync_protocols("alpha");
        let [theirs, _] = codec::sync_protocols("beta");
        let mut m = Membership::new(ours.clone());
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        assert_eq!(
            m.identified(a, &[named("/ipfs/id/1.0.0"), ours[0].clone()]),
            Verdict::Member
        );
        assert!(m.counts(&a));
        // An agent of the previous release speaks only the older protocol: still a member.
        let previous = PeerId::random();
        assert_eq!(
            m.identified(previous, std::slice::from_ref(&ours[1])),
            Verdict::Member
        );
        assert_eq!(
            m.identified(b, std::slice::from_ref(&theirs)),
            Verdict::Foreign { first: true }
        );
        assert_eq!(
            m.identified(b, &[theirs]),
            Verdict::Foreign { first: false }
        );
        assert!(!m.counts(&b) && m.is_foreign(&b));
        // A join to a connected peer is answered at once only once it identified itself as
        // a member or an outsider, never for a foreign or not yet identified one.
        assert!(m.is_identified(&a) && !m.is_identified(&b));
        assert!(!m.is_identified(&PeerId::random()));
        assert!(!m.may_cut(&b));
        assert!(m.identify_sent(b), "cut off once it has had ours");
        assert!(m.may_cut(&b));
        assert_eq!(
            m.identified(c, &[named(codec::LEGACY_SYNC_PROTOCOL)]),
            Verdict::Outsider {
                first: true,
                legacy: true
            }
        );
        assert!(!m.counts(&c));
        m.unsupported(d);
        assert!(!m.counts(&d));
        m.unsupported(a);
        assert!(m.counts(&a), "a member stays one");
        assert!(m.disconnected(&a));
        assert!(!m.disconnected(&c));
        assert!(m.counts(&c), "judged again when it comes back");
        assert!(m.is_foreign(&b), "foreign for as long as the agent runs");
    }
}
