//! The pinset's routes: `POST /v1/pins`, `POST /v1/pins/batch`, `DELETE` and `GET
//! /v1/pins/{cid}`. Writes go to the replica and are answered once durable.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::spec::EVERYWHERE;
use pinmesh_protocol::{Cid, PinSpec, Version, winner};

use super::{
    ApiError, ApiState, MAX_BATCH_PINS, OpReceipt, PinInfo, PinRequest, WaitQuery, parse_cid,
};
use crate::allocation::{Ask, Refused, choose};
use crate::replica::LocalOp;
use crate::store::Store;

/// Waits for the replica's next commit, or 50 ms (for conditions outside it), or the deadline.
async fn next_change(
    watch: &mut tokio::sync::watch::Receiver<Arc<crate::replica::ReplicaState>>,
    deadline: tokio::time::Instant,
) {
    tokio::select! {
        _ = watch.changed() => {}
        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
}

pub(super) async fn pin(
    State(state): State<ApiState>,
    Json(req): Json<PinRequest>,
) -> Result<Json<OpReceipt>, ApiError> {
    check_writer(&state)?;
    let ops = allocate(&state, vec![pin_op(req)?]).await?;
    let receipts = state.replica.local(ops).await?;
    Ok(Json(receipt(&receipts)?))
}

/// Many pins in one request and one durable commit; all or none are accepted.
pub(super) async fn pin_batch(
    State(state): State<ApiState>,
    Json(reqs): Json<Vec<PinRequest>>,
) -> Result<Json<Vec<OpReceipt>>, ApiError> {
    check_writer(&state)?;
    if reqs.len() > MAX_BATCH_PINS {
        return Err(ApiError::BadRequest(format!(
            "{} pins in one request; the limit is {MAX_BATCH_PINS}",
            reqs.len()
        )));
    }
    let asked = reqs
        .into_iter()
        .map(pin_op)
        .collect::<Result<Vec<_>, _>>()?;
    let ops = allocate(&state, asked).await?;
    let receipts = state.replica.local(ops).await?;
    Ok(Json(
        receipts
            .iter()
            .map(|r| OpReceipt {
                cid: r.cid.to_string(),
                dot: r.dot.to_string(),
            })
            .collect(),
    ))
}

/// Refuses writes on an agent outside `cluster.trusted_writers`: peers would reject them.
pub(super) fn check_writer(state: &ApiState) -> Result<(), ApiError> {
    if state.writer {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        "this agent is not in cluster.trusted_writers: it replicates read-only".into(),
    ))
}

/// A checked pin request: its CID, its options but factors and allocations, and what it asks
/// of allocation.
struct Asked {
    cid: Cid,
    spec: PinSpec,
    ask: Ask,
}

/// Checks a pin request (its factors and allocations are settled by [`allocate`]).
fn pin_op(req: PinRequest) -> Result<Asked, ApiError> {
    let cid = parse_cid(&req.cid)?;
    let user = (req.allocations.iter())
        .map(|peer| {
            peer.parse::<PeerId>()
                .map_err(|_| ApiError::BadRequest(format!("allocation {peer:?} is not a peer id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for origin in &req.origins {
        origin.parse::<Multiaddr>().map_err(|e| {
            ApiError::BadRequest(format!("origin {origin:?} is not a multiaddr: {e}"))
        })?;
    }
    let controls = |text: &str| text.chars().any(char::is_control);
    if controls(&req.name) || req.metadata.iter().any(|(k, v)| controls(k) || controls(v)) {
        return Err(ApiError::BadRequest(format!(
            "the name and metadata of {cid} may not contain control characters"
        )));
    }
    let defaults = PinSpec::default();
    let spec = PinSpec {
        name: req.name,
        mode: req.mode.unwrap_or(defaults.mode),
        // Checked here as asked; settled by `allocate`.
        replication_min: req.replication_min.unwrap_or(defaults.replication_min),
        replication_max: req.replication_max.unwrap_or(defaults.replication_max),
        allocations: req.allocations,
        expire_at: req.expire_at,
        metadata: req.metadata,
        origins: req.origins,
        ..defaults
    };
    spec.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid pin options for {cid}: {e}")))?;
    let ask = Ask {
        min: req.replication_min,
        max: req.replication_max,
        user,
        under_replicated: req.allow_under_replication,
    };
    Ok(Asked { cid, spec, ask })
}

/// Settles each pin's factors and allocations ([`choose`]): from the pin as it stands (read
/// in one transaction), the cluster's defaults and, when a pin needs peers chosen, the peers'
/// live metrics (asked of the swarm once).
async fn allocate(state: &ApiState, asked: Vec<Asked>) -> Result<Vec<LocalOp>, ApiError> {
    let store = state.store.clone();
    let cids: Vec<Cid> = asked.iter().map(|a| a.cid).collect();
    let current = state
        .tasks
        .spawn_blocking(move || -> Result<Vec<Option<PinSpec>>, ApiError> {
            let reader = store
                .reader()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            cids.iter()
                .map(|cid| {
                    let versions =
                        (reader.versions(cid)).map_err(|e| ApiError::Internal(e.to_string()))?;
                    Ok(versions.and_then(|v| winner(&v).map(|w| w.spec.clone())))
                })
                .collect()
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let policy = &state.allocation;
    let mut live = None;
    let mut ops = Vec::with_capacity(asked.len());
    for (Asked { cid, mut spec, ask }, current) in asked.into_iter().zip(current) {
        // Every peer, or kept as it is: no metrics needed.
        let settled = choose(&cid, &ask, current.as_ref(), policy.replication, &[], &[]);
        let chosen = match settled {
            Ok(chosen) if chosen.1 == EVERYWHERE || !chosen.2.is_empty() => Ok(chosen),
            _ => {
                if live.is_none() {
                    live = Some(state.swarm.live_peers().await.map_err(|e| {
                        ApiError::Unavailable(format!("cannot read peers' metrics: {e}"))
                    })?);
                }
                let live = live.as_deref().unwrap_or_default();
                choose(
                    &cid,
                    &ask,
                    current.as_ref(),
                    policy.replication,
                    live,
                    &policy.allocate_by,
                )
            }
        };
        (spec.replication_min, spec.replication_max, spec.allocations) =
            chosen.map_err(|refused| match refused {
                Refused::TooManyUserPeers { .. } => ApiError::BadRequest(refused.to_string()),
                _ => ApiError::Unavailable(refused.to_string()),
            })?;
        ops.push(LocalOp::Pin { cid, spec });
    }
    Ok(ops)
}

fn receipt(receipts: &[crate::replica::Receipt]) -> Result<OpReceipt, ApiError> {
    let r = receipts
        .first()
        .ok_or_else(|| ApiError::Internal("no receipt".into()))?;
    Ok(OpReceipt {
        cid: r.cid.to_string(),
        dot: r.dot.to_string(),
    })
}

pub(super) async fn unpin(
    State(state): State<ApiState>,
    Path(cid): Path<String>,
) -> Result<Json<OpReceipt>, ApiError> {
    check_writer(&state)?;
    let cid = parse_cid(&cid)?;
    let receipts = state.replica.local(vec![LocalOp::Unpin { cid }]).await?;
    Ok(Json(receipt(&receipts)?))
}

fn read_versions(store: &Store, cid: &Cid) -> Result<Option<Vec<Version>>, ApiError> {
    store
        .reader()
        .and_then(|reader| reader.versions(cid))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

pub(super) async fn show(
    State(state): State<ApiState>,
    Path(cid): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<PinInfo>, ApiError> {
    let cid = parse_cid(&cid)?;
    let deadline = query.deadline()?;
    let mut watch = state.replica.watch();
    loop {
        let store = state.store.clone();
        let versions = state
            .tasks
            .spawn_blocking(move || read_versions(&store, &cid))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        if let Some(info) = versions.and_then(|v| PinInfo::from_versions(&cid, &v)) {
            return Ok(Json(info));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotFound(format!("{cid} is not pinned")));
        }
        next_change(&mut watch, deadline).await;
    }
}
