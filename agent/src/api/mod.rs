//! The control API: HTTP/JSON on loopback, every route behind the bearer token in
//! `DIR/api.token`. The CLI is its client ([`client`]).
//!
//! Receives requests; sends local operations to the replica (answered once durable), commands
//! to the swarm, and reads committed state from the store. Listings (`GET /v1/pins`,
//! `GET /v1/status`) stream NDJSON a page at a time, each page from its own short read
//! transaction ([`stream_pages`]), never the whole pinset in memory.

pub mod client;
mod listing;
pub mod status;

pub(crate) use self::listing::{LIST_BUFFER, LIST_PAGE, Page, listing_permit, stream_pages};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use libp2p::Multiaddr;
use pinmesh_protocol::{Cid, Comparison, PinMode, PinSpec, Version, winner};
use serde::{Deserialize, Serialize};

use crate::http::tokio_stream_from;
use crate::replica::{LocalError, LocalOp, ReplicaHandle};
use crate::store::Store;
use crate::swarm::{Flags, SwarmError, SwarmHandle, SwarmInfo};

/// Most pins in one `POST /v1/pins/batch`.
pub const MAX_BATCH_PINS: usize = 10_000;
/// Largest `POST /v1/pins/batch` body: 1 KiB of JSON for each of the most pins, which holds a
/// CID, a name of the longest allowed (255 bytes) and a few options. Other requests keep
/// axum's 2 MiB.
pub const MAX_BATCH_BYTES: usize = MAX_BATCH_PINS * 1024;
/// Largest error body turned into JSON (axum's rejections are short sentences).
const MAX_ERROR_BODY: usize = 64 << 10;

#[derive(Clone)]
pub struct ApiState {
    pub replica: ReplicaHandle,
    pub store: Store,
    pub swarm: SwarmHandle,
    pub flags: Arc<Flags>,
    /// Whether the agent has caught up with its peers.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// Absent when no IPFS node is configured.
    pub reconciler: Option<crate::reconcile::ReconcilerHandle>,
    /// The node `add` stores content in; absent when none is configured.
    pub ipfs: Option<Arc<dyn crate::ipfs::PinBackend>>,
    /// Longest an `add` may take.
    pub add_timeout: std::time::Duration,
    /// This agent may write (it is in `cluster.trusted_writers`, or the list is empty).
    pub writer: bool,
    pub token: Arc<str>,
    pub cluster: Arc<str>,
    pub peer_id: libp2p::PeerId,
    /// Streamed listings in progress (`api.max_listings` permits).
    pub listings: Arc<tokio::sync::Semaphore>,
    pub max_listings: usize,
    /// Work handlers start that may outlive them (streamed listings) runs here, so the node's
    /// shutdown waits for it and the database is closed when `shutdown` returns.
    pub tasks: tokio_util::task::TaskTracker,
}

/// An API failure: its HTTP status and one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("missing or wrong API token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// The agent's disk is full (507).
    #[error("{0}")]
    DiskFull(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<LocalError> for ApiError {
    fn from(err: LocalError) -> Self {
        match err {
            LocalError::NotPinned(_) => ApiError::NotFound(err.to_string()),
            LocalError::Spec(_) => ApiError::BadRequest(err.to_string()),
            LocalError::Store(_) => ApiError::Internal(err.to_string()),
            LocalError::Stopped => ApiError::Unavailable(err.to_string()),
            LocalError::DiskFull(_) => ApiError::DiskFull(err.to_string()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/pins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    pub cid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mode: Option<PinMode>,
    #[serde(default)]
    pub replication_min: Option<i32>,
    #[serde(default)]
    pub replication_max: Option<i32>,
    /// Unix seconds.
    #[serde(default)]
    pub expire_at: Option<u64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub origins: Vec<String>,
}

impl PinRequest {
    /// A request for `cid` with a name and every other option at its default.
    pub fn new(cid: impl ToString, name: impl Into<String>) -> Self {
        PinRequest {
            cid: cid.to_string(),
            name: name.into(),
            mode: None,
            replication_min: None,
            replication_max: None,
            expire_at: None,
            metadata: BTreeMap::new(),
            origins: Vec::new(),
        }
    }
}

/// The answer to a pin or unpin: durable locally once returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpReceipt {
    pub cid: String,
    /// The operation's dot, `actor.counter`.
    pub dot: String,
}

/// One line of `GET /v1/pins`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinInfo {
    pub cid: String,
    pub name: String,
    pub mode: PinMode,
    pub replication_min: i32,
    pub replication_max: i32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expire_at: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub origins: Vec<String>,
    /// Unix milliseconds of the winning write.
    pub updated_ms: u64,
    /// More than one concurrent version survives (the winner is shown).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub conflict: bool,
}

impl PinInfo {
    fn from_versions(cid: &Cid, versions: &[Version]) -> Option<Self> {
        let w = winner(versions)?;
        Some(PinInfo {
            cid: cid.to_string(),
            name: w.spec.name.clone(),
            mode: w.spec.mode,
            replication_min: w.spec.replication_min,
            replication_max: w.spec.replication_max,
            expire_at: w.spec.expire_at,
            metadata: w.spec.metadata.clone(),
            origins: w.spec.origins.clone(),
            updated_ms: w.at,
            conflict: versions.len() > 1,
        })
    }
}

/// `GET /v1/id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub cluster: String,
    pub version: String,
    pub actor: String,
}

/// `GET /v1/debug/digest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestInfo {
    pub peer_id: String,
    pub actor: String,
    pub pins: u64,
    pub applied_digest: String,
    pub state_digest: String,
    pub synced: bool,
    pub snapshots_joined: u64,
    /// Bytes of sync answers and of gossip received since start.
    pub sync_bytes_in: u64,
    pub gossip_bytes_in: u64,
}

/// `?wait=DURATION` on `GET /v1/pins/{cid}`; `?pins=N&synced=true&wait=DURATION` on
/// `GET /v1/debug/digest`: answer once the condition holds, or when the wait ends.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WaitQuery {
    pub wait: Option<String>,
    pub pins: Option<u64>,
    pub synced: Option<bool>,
}

/// Longest a request may wait.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

impl WaitQuery {
    fn deadline(&self) -> Result<tokio::time::Instant, ApiError> {
        let wait = match &self.wait {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| ApiError::BadRequest(format!("wait {text:?}: {e}")))?
                .min(MAX_WAIT),
            None => std::time::Duration::ZERO,
        };
        Ok(tokio::time::Instant::now() + wait)
    }
}

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

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/id", get(id))
        .route("/v1/peers", get(peers))
        .route("/v1/peers/join", post(join))
        .route("/v1/pins", post(pin).get(listing::list))
        .route(
            "/v1/pins/batch",
            post(pin_batch).layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/pins/{cid}", delete(unpin).get(show))
        .route("/v1/status", get(status::status))
        .route("/v1/status/cluster", get(status::cluster_status))
        .route("/v1/recover", post(status::recover))
        .route("/v1/add", post(status::add))
        .route("/v1/cat/{cid}", get(status::cat))
        .route("/v1/debug/digest", get(digest))
        .route("/v1/debug/reconciler", get(status::reconciler))
        .route("/v1/debug/state", get(debug_state))
        .route("/v1/debug/peers", get(debug_peers))
        .route("/v1/debug/refresh", post(refresh))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// Every error answers `{"error": "..."}`: axum's own rejections (bad JSON 400/422, too large
/// 413, wrong content type 415, unknown route 404, wrong method 405) come as plain text.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), MAX_ERROR_BODY).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    (status, Json(ErrorBody { error: text })).into_response()
}

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    // Constant-time enough for a loopback API: compare hashes, not strings.
    let ok = presented
        .is_some_and(|p| blake3::hash(p.as_bytes()) == blake3::hash(state.token.as_bytes()));
    if !ok {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

fn parse_cid(text: &str) -> Result<Cid, ApiError> {
    text.parse::<Cid>()
        .map_err(|e| ApiError::BadRequest(format!("{text:?} is not a CID: {e}")))
}

async fn swarm_info(state: &ApiState) -> Result<SwarmInfo, ApiError> {
    state.swarm.info().await.map_err(ApiError::from)
}

impl From<SwarmError> for ApiError {
    fn from(err: SwarmError) -> Self {
        ApiError::Unavailable(err.to_string())
    }
}

async fn id(State(state): State<ApiState>) -> Result<Json<IdInfo>, ApiError> {
    let info = swarm_info(&state).await?;
    let addresses = info
        .listen
        .iter()
        .map(|a| format!("{a}/p2p/{}", info.peer_id))
        .collect();
    Ok(Json(IdInfo {
        peer_id: info.peer_id,
        addresses,
        cluster: state.cluster.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        actor: state.replica.state().summary.actor.to_string(),
    }))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<SwarmInfo>, ApiError> {
    Ok(Json(swarm_info(&state).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub addr: String,
}

async fn join(
    State(state): State<ApiState>,
    Json(body): Json<JoinRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = crate::config::parse_peer_addr(&body.addr).map_err(ApiError::BadRequest)?;
    let peer = state.swarm.dial(addr).await.map_err(|e| match e {
        SwarmError::Stopped => ApiError::from(e),
        e => ApiError::Unavailable(format!("cannot connect: {e}")),
    })?;
    Ok(Json(serde_json::json!({ "peer_id": peer.to_string() })))
}

async fn pin(
    State(state): State<ApiState>,
    Json(req): Json<PinRequest>,
) -> Result<Json<OpReceipt>, ApiError> {
    check_writer(&state)?;
    let op = pin_op(req)?;
    let receipts = state.replica.local(vec![op]).await?;
    Ok(Json(receipt(&receipts)?))
}

/// Many pins in one request and one durable commit; all or none are accepted.
async fn pin_batch(
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
fn check_writer(state: &ApiState) -> Result<(), ApiError> {
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

async fn unpin(
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

async fn show(
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

async fn digest(
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
                peer_id: info.peer_id,
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

/// `GET /v1/debug/state`: the head and the delta log's ranges per origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDump {
    pub actor: String,
    pub incarnation: String,
    pub counter: u64,
    pub pins: u64,
    pub state_digest: String,
    pub applied_digest: String,
    /// Origin -> applied counter ranges.
    pub applied: BTreeMap<String, Vec<(u64, u64)>>,
    /// Actor -> causal-context counter ranges.
    pub context: BTreeMap<String, Vec<(u64, u64)>>,
    /// Origin -> (first, last, batches) held in the delta log.
    pub log: BTreeMap<String, (u64, u64, u64)>,
}

async fn debug_state(State(state): State<ApiState>) -> Result<Json<StateDump>, ApiError> {
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

/// `GET /v1/debug/peers`: how every known peer compares with this agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersReport {
    pub me: DigestInfo,
    pub peers: Vec<PeerReport>,
    /// Every connected peer reported this agent's applied and state digests.
    pub converged: bool,
    /// Connected peers that differ or never reported.
    pub diverged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerReport {
    pub peer_id: String,
    pub connected: bool,
    pub last_heard_ms: Option<u64>,
    pub pins: Option<u64>,
    pub synced: Option<bool>,
    pub applied_match: bool,
    pub state_match: bool,
    /// Origin -> how this agent's applied deltas compare with the peer's (when it sent them).
    pub origins: BTreeMap<String, Comparison>,
}

async fn debug_peers(State(state): State<ApiState>) -> Result<Json<PeersReport>, ApiError> {
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
                peer_id: p.peer_id,
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

async fn refresh(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.swarm.refresh().await?;
    Ok(Json(serde_json::json!({})))
}
