//! The pinset's routes: `POST /v1/pins`, `POST /v1/pins/batch`, `DELETE` and `GET
//! /v1/pins/{cid}`. Writes go to the replica and are answered once durable.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use libp2p::Multiaddr;
use pinmesh_protocol::{Cid, PinSpec, Version};

use super::{
    ApiError, ApiState, MAX_BATCH_PINS, OpReceipt, PinInfo, PinRequest, WaitQuery, parse_cid,
};
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
    let op = pin_op(req)?;
    let receipts = state.replica.local(vec![op]).await?;
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
    let ops = reqs
        .into_iter()
        .map(pin_op)
        .collect::<Result<Vec<_>, _>>()?;
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

/// Checks a pin request and turns it into an operation.
fn pin_op(req: PinRequest) -> Result<LocalOp, ApiError> {
    let cid = parse_cid(&req.cid)?;
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
        replication_min: req.replication_min.unwrap_or(defaults.replication_min),
        replication_max: req.replication_max.unwrap_or(defaults.replication_max),
        allocations: Vec::new(),
        expire_at: req.expire_at,
        metadata: req.metadata,
        origins: req.origins,
        ..defaults
    };
    spec.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid pin options for {cid}: {e}")))?;
    Ok(LocalOp::Pin { cid, spec })
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
