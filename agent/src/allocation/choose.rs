//! The writer's choice of a pin's allocations, from the pin request, the pin as it stands, and
//! the peers' live metrics. Pure: the API gathers the inputs, and the result is stored in the
//! pin ([`PinSpec::allocations`]) so that every peer sees the same list.

use libp2p::PeerId;
use pinmesh_protocol::allocate::{self, AllocateError, Candidate, Wanted};
use pinmesh_protocol::spec::EVERYWHERE;
use pinmesh_protocol::{Cid, PinSpec};

use crate::swarm::PeerMetric;

/// What a pin request asks of allocation.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// `--rmin` / `--rmax` (or `--replication`); `None`: as the pin already has them, else the
    /// cluster's defaults.
    pub min: Option<i32>,
    pub max: Option<i32>,
    /// `--allocations`: peers to take first.
    pub user: Vec<PeerId>,
    /// Allocate to the live peers there are, even fewer than `min`.
    pub under_replicated: bool,
}

/// Why a pin cannot be allocated as asked; one line for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{cid} needs {needed} peers with an IPFS node and a live metric; {available} available \
         (--allow-under-replication pins on those there are)"
    )]
    TooFewPeers {
        cid: Cid,
        needed: usize,
        available: usize,
    },
    #[error(
        "allocation {peer} is not a peer with an IPFS node and a live metric (down, or unknown)"
    )]
    UserPeerDown { peer: PeerId },
    #[error("{given} allocations given for at most {max} replicas")]
    TooManyUserPeers { given: usize, max: usize },
}

/// The factors and allocations a pin of `cid` gets. `current` is the pin as it stands (if
/// any), `defaults` the cluster's factors, `live` the peers with a live metric (this agent
/// included when it has one), `allocate_by` the tags to spread across.
///
/// - Factors not asked for are the pin's own, else the defaults; user allocations alone ask
///   for as many replicas as they name.
/// - `max` of -1 (every peer): no allocations, every peer pins.
/// - The same factors as the pin has, and no user allocations: its allocations are kept, so
///   writing a pin again never moves it.
/// - Otherwise allocation runs again: the user's allocations first (a down one only when
///   under-replication is allowed), then the current allocations that are live.
pub fn choose(
    cid: &Cid,
    ask: &Ask,
    current: Option<&PinSpec>,
    defaults: (i32, i32),
    live: &[(PeerId, PeerMetric)],
    allocate_by: &[String],
) -> Result<(i32, i32, Vec<String>), Refused> {
    let (mut min, mut max) = match current {
        Some(spec) => (spec.replication_min, spec.replication_max),
        None => defaults,
    };
    if ask.min.is_none() && ask.max.is_none() && !ask.user.is_empty() {
        let n = ask.user.len() as i32;
        (min, max) = (n, n);
    }
    min = ask.min.unwrap_or(min);
    max = ask.max.unwrap_or(max);
    if max == EVERYWHERE {
        return Ok((min, max, Vec::new()));
    }
    if ask.user.len() > max as usize {
        return Err(Refused::TooManyUserPeers {
            given: ask.user.len(),
            max: max as usize,
        });
    }
    if let Some(spec) = current
        && ask.user.is_empty()
        && (spec.replication_min, spec.replication_max) == (min, max)
        && !spec.allocations.is_empty()
    {
        return Ok((min, max, spec.allocations.clone()));
    }
    if !ask.under_replicated
        && let Some(peer) = ask.user.iter().find(|p| !live.iter().any(|(l, _)| l == *p))
    {
        return Err(Refused::UserPeerDown { peer: *peer });
    }
    // The user's peers first, then the pin's own (kept where they are live).
    let user: Vec<Vec<u8>> = ask.user.iter().map(|peer| peer.to_bytes()).collect();
    let mut keep = user.clone();
    for peer in (current
        .map(|s| s.allocations.as_slice())
        .unwrap_or_default())
    .iter()
    .filter_map(|text| text.parse::<PeerId>().ok())
    .map(|peer| peer.to_bytes())
    {
        if !keep.contains(&peer) {
            keep.push(peer);
        }
    }
    let mut candidates = candidates(live, allocate_by);
    // Allowed under-replicated, the user's peers are taken even while down: they asked.
    for peer in &ask.user {
        if !live.iter().any(|(l, _)| l == peer) {
            candidates.push(Candidate {
                peer: peer.to_bytes(),
                free: 0,
                tags: Vec::new(),
            });
        }
    }
    // min == -1 with a bounded max: at least one.
    let needed = if min == EVERYWHERE { 1 } else { min as usize };
    let wanted = Wanted {
        cid: &cid.to_bytes(),
        min: if ask.under_replicated { 1 } else { needed },
        max: max as usize,
        keep: &keep,
        user: &[],
    };
    let chosen = allocate::allocate(&wanted, &candidates).map_err(|err| match err {
        AllocateError::TooFewPeers { available, .. } => Refused::TooFewPeers {
            cid: *cid,
            needed,
            available,
        },
    })?;
    Ok((min, max, texts(&chosen)))
}

/// The allocations of a pin some of whose peers are `lost`: its peers that are not lost,
/// then peers chosen as for a new pin among the `live` ones, up to its maximum. A peer down
/// for a shorter while keeps its place (it may be back soon).
pub fn reallocate(
    cid: &Cid,
    spec: &PinSpec,
    lost: &dyn Fn(&PeerId) -> bool,
    live: &[(PeerId, PeerMetric)],
    allocate_by: &[String],
) -> Vec<String> {
    let current: Vec<PeerId> = (spec.allocations.iter())
        .filter_map(|text| text.parse().ok())
        .filter(|peer| !lost(peer))
        .collect();
    let is_live = |peer: &PeerId| live.iter().any(|(l, _)| l == peer);
    let (up, waiting): (Vec<PeerId>, Vec<PeerId>) = current.into_iter().partition(is_live);
    let max = usize::try_from(spec.replication_max).unwrap_or(usize::MAX);
    let keep: Vec<Vec<u8>> = up.iter().map(|p| p.to_bytes()).collect();
    let wanted = Wanted {
        cid: &cid.to_bytes(),
        min: 0,
        max: max.saturating_sub(waiting.len()),
        keep: &keep,
        user: &[],
    };
    let chosen = allocate::allocate(&wanted, &candidates(live, allocate_by)).unwrap_or_default();
    let mut allocations: Vec<String> = waiting.iter().map(|p| p.to_base58()).collect();
    allocations.extend(texts(&chosen));
    allocations
}

/// The live peers as allocation candidates: their free space, and their values of the
/// `allocate_by` tags.
fn candidates(live: &[(PeerId, PeerMetric)], allocate_by: &[String]) -> Vec<Candidate<Vec<u8>>> {
    live.iter()
        .map(|(peer, metric)| Candidate {
            peer: peer.to_bytes(),
            free: metric.free,
            tags: (allocate_by.iter())
                .map(|tag| metric.tags.get(tag).cloned().unwrap_or_default())
                .collect(),
        })
        .collect()
}

/// Peer ids' bytes as the text a pin stores.
fn texts(chosen: &[Vec<u8>]) -> Vec<String> {
    chosen
        .iter()
        .filter_map(|bytes| PeerId::from_bytes(bytes).ok())
        .map(|peer| peer.to_base58())
        .collect()
}

#[cfg(test)]
mod tests;
