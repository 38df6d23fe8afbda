//! `/v1/debug/*`: the digests, the whole state, the peers' sync positions, and a refresh of
//! the peers, for `pinmesh debug` and the benchmarks.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};

use super::{
    ApiError, ApiState, DigestInfo, PeerReport, PeersReport, StateDump, WaitQuery, swarm_info,
};

pub(super) async fn digest(
    State(state): State<ApiState>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<DigestInfo>, ApiError> {
    let deadline = query.deadline()?;
    let mut watch = state.replica.watch();
    let mut synced_rx = state.synced.clone();
    loop {
        let replica = state.replica.state();
        let synced = *synced_rx.borrow_and_update();
        let done = query.pins.is_none_or(|p| replica.summary.pins == p)
            && query.synced.is_none_or(|s| s == synced);
        if done || tokio::time::Instant::now() >= deadline {
            let info = swarm_info(&state).await?;
            return Ok(Json(DigestInfo {
                peer_id: info.peer_id.to_string(),
                actor: replica.summary.actor.to_string(),
                pins: replica.summary.pins,
                applied_digest: replica.summary.applied_digest.to_hex(),
                state_digest: replica.summary.state_digest.to_hex(),
                synced,
                snapshots_joined: replica.snapshots_joined,
                sync_bytes_in: state.flags.sync_bytes_in.load(Ordering::Relaxed),
                gossip_bytes_in: state.flags.gossip_bytes_in.load(Ordering::Relaxed),
            }));
        }
        tokio::select! {
            _ = watch.changed() => {}
            _ = synced_rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

pub(super) async fn state(State(state): State<ApiState>) -> Result<Json<StateDump>, ApiError> {
    let replica = state.replica.state();
    let ranges = |set: &pinmesh_protocol::DotSet| {
        set.actors()
            .map(|(a, r)| (a.to_string(), r.ranges().collect::<Vec<_>>()))
            .collect()
    };
    let store = state.store.clone();
    let log = state
        .tasks
        .spawn_blocking(move || -> Result<_, String> {
            let spans = store
                .reader()
                .and_then(|reader| reader.log_spans())
                .map_err(|e| e.to_string())?;
            Ok(spans
                .into_iter()
                .map(|(origin, span)| (origin.to_string(), (span.first, span.last, span.batches)))
                .collect::<BTreeMap<String, (u64, u64, u64)>>())
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    Ok(Json(StateDump {
        actor: replica.summary.actor.to_string(),
        incarnation: format!("{:016x}", replica.incarnation),
        counter: replica.counter,
        pins: replica.head.pins,
        state_digest: replica.head.digest.to_hex(),
        applied_digest: replica.summary.applied_digest.to_hex(),
        applied: ranges(&replica.head.applied),
        context: ranges(&replica.head.context),
        log,
    }))
}

pub(super) async fn peers(State(state): State<ApiState>) -> Result<Json<PeersReport>, ApiError> {
    let Json(me) = digest(State(state.clone()), Query(WaitQuery::default())).await?;
    let info = swarm_info(&state).await?;
    let mine = state.replica.state();
    let mut peers: Vec<PeerReport> = info
        .peers
        .into_iter()
        .map(|p| {
            let summary = p.summary.as_ref();
            let mut origins = BTreeMap::new();
            if let Some(theirs) = summary.and_then(|s| s.applied.as_ref()) {
                let actors = mine
                    .head
                    .applied
                    .actors()
                    .map(|(a, _)| a)
                    .chain(theirs.actors().map(|(a, _)| a));
                for actor in actors {
                    origins.insert(
                        actor.to_string(),
                        mine.head.applied.compare_actor(theirs, actor),
                    );
                }
            }
            PeerReport {
                peer_id: p.peer_id.to_string(),
                connected: p.connected,
                last_heard_ms: p.last_heard_ms,
                pins: summary.map(|s| s.pins),
                synced: summary.map(|s| s.synced),
                applied_match: summary
                    .is_some_and(|s| s.applied_digest == mine.summary.applied_digest),
                state_match: summary.is_some_and(|s| s.state_digest == mine.summary.state_digest),
                origins,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    // Peers that left are listed but do not count: convergence is among connected peers.
    let diverged = peers
        .iter()
        .filter(|p| p.connected && !(p.applied_match && p.state_match))
        .count();
    Ok(Json(PeersReport {
        me,
        converged: diverged == 0,
        diverged,
        peers,
    }))
}

pub(super) async fn refresh(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.swarm.refresh().await?;
    Ok(Json(serde_json::json!({})))
}

/// Splits the network for tests: connections with the peers are closed and refused (or
/// allowed again), and nothing else about them changes (their metrics expire as a real split
/// would make them).
pub(super) async fn cut(
    State(state): State<ApiState>,
    Json(request): Json<super::types::CutRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.swarm.cut(request.peers, request.cut).await?;
    Ok(Json(serde_json::json!({})))
}
