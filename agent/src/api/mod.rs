//! The control API: HTTP/JSON on loopback, every route behind the bearer token in
//! `DIR/api.token`. The CLI is its client ([`client`]).
//!
//! Receives requests; sends local operations to the replica (answered once durable), commands
//! to the swarm, and reads committed state from the store. Listings (`GET /v1/pins`,
//! `GET /v1/status`) stream NDJSON a page at a time, each page from its own short read
//! transaction ([`stream_pages`]), never the whole pinset in memory.
//!
//! Here: the state handlers share, errors, the router, authorization, peers. The JSON shapes
//! are in [`types`] (shared with the [`client`]); the pinset's routes in `pins`, the status,
//! recover, add and cat routes in [`status`], the debug routes in `debug`.

pub mod client;
mod debug;
mod follow;
mod listing;
mod pins;
pub mod status;
pub mod types;

pub(crate) use self::listing::{LIST_BUFFER, LIST_PAGE, Page, listing_permit, stream_pages};
pub use self::types::{
    DigestInfo, ErrorBody, IdInfo, JoinRequest, OpReceipt, PeerReport, PeersReport, PinInfo,
    PinRequest, StateDump, WaitQuery,
};

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use pinmesh_protocol::Cid;

use crate::http::tokio_stream_from;
use crate::replica::{LocalError, ReplicaHandle};
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
    /// The keeper's latest look at the peers; absent without an IPFS node (no keeper).
    pub repinning: Option<tokio::sync::watch::Receiver<Option<crate::swarm::Repinning>>>,
    /// The node `add` stores content in; absent when none is configured.
    pub ipfs: Option<Arc<dyn crate::ipfs::PinBackend>>,
    /// Longest an `add` may take.
    pub add_timeout: std::time::Duration,
    /// This agent may write (it is in `cluster.trusted_writers`, or the list is empty).
    pub writer: bool,
    /// What a follow configuration is made of and signed with.
    pub follow: Arc<FollowSource>,
    pub token: Arc<str>,
    pub cluster: Arc<str>,
    pub peer_id: libp2p::PeerId,
    /// Which pins this agent holds (a member: those allocated to it; a follower: all, or its
    /// share).
    pub role: Arc<crate::reconcile::Role>,
    /// Default factors and the tags replicas spread across.
    pub allocation: Arc<crate::allocation::Policy>,
    /// Streamed listings in progress (`api.max_listings` permits).
    pub listings: Arc<tokio::sync::Semaphore>,
    pub max_listings: usize,
    /// Work handlers start that may outlive them (streamed listings) runs here, so the node's
    /// shutdown waits for it and the database is closed when `shutdown` returns.
    pub tasks: tokio_util::task::TaskTracker,
}

/// What `GET /v1/follow-config` publishes, and the key it signs with.
#[derive(Debug)]
pub struct FollowSource {
    pub secret: String,
    /// Empty: every member may write (and there is nothing to publish).
    pub trusted_writers: Vec<libp2p::PeerId>,
    pub signer: crate::replica::NodeSigner,
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
    /// Refused in the cluster's present state (409).
    #[error("{0}")]
    Conflict(String),
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
            ApiError::Conflict(_) => StatusCode::CONFLICT,
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
            LocalError::ReadOnly => ApiError::Forbidden(err.to_string()),
            LocalError::DiskFull(_) => ApiError::DiskFull(err.to_string()),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/id", get(id))
        .route("/v1/peers", get(peers))
        .route("/v1/peers/join", post(join))
        .route("/v1/peers/{peer}", delete(remove_peer))
        .route("/v1/pins", post(pins::pin).get(listing::list))
        .route(
            "/v1/pins/batch",
            post(pins::pin_batch).layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/pins/{cid}", delete(pins::unpin).get(pins::show))
        .route("/v1/status", get(status::status))
        .route("/v1/status/cluster", get(status::cluster_status))
        .route("/v1/recover", post(status::recover))
        .route("/v1/add", post(status::add))
        .route("/v1/follow-config", get(follow::follow_config))
        .route("/v1/cat/{cid}", get(status::cat))
        .route("/v1/debug/digest", get(debug::digest))
        .route("/v1/debug/reconciler", get(status::reconciler))
        .route("/v1/debug/state", get(debug::state))
        .route("/v1/debug/peers", get(debug::peers))
        .route("/v1/debug/refresh", post(debug::refresh))
        .route("/v1/debug/cut", post(debug::cut))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// The follow configuration alone, without a token (`api.follow_config_listen`).
pub fn follow_router(state: ApiState) -> Router {
    Router::new()
        .route("/follow-config", get(follow::follow_config))
        .fallback(|| async { ApiError::NotFound("only /follow-config is served here".into()) })
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
        peer_id: info.peer_id.to_string(),
        addresses,
        cluster: state.cluster.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        actor: state.replica.state().summary.actor.to_string(),
        writer: state.writer,
    }))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<SwarmInfo>, ApiError> {
    let mut info = swarm_info(&state).await?;
    info.repinning = state.repinning.as_ref().and_then(|r| r.borrow().clone());
    Ok(Json(info))
}

async fn join(
    State(state): State<ApiState>,
    Json(body): Json<JoinRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let addr = crate::config::parse_peer_addr(&body.addr).map_err(ApiError::BadRequest)?;
    if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last()
        && swarm_info(&state).await?.removed.contains(&peer)
    {
        // Naming a removed peer again undoes the removal: its record goes first (while the
        // swarm still refuses it, so nothing rewrites it meanwhile), then the dial lifts the
        // refusal. A join that then fails leaves it an unknown peer, not a removed one.
        state.replica.set_peer_removed(peer, false).await?;
    }
    let peer = state.swarm.dial(addr).await.map_err(|e| match e {
        SwarmError::Stopped => ApiError::from(e),
        e => ApiError::Unavailable(format!("cannot connect: {e}")),
    })?;
    Ok(Json(serde_json::json!({ "peer_id": peer.to_string() })))
}

/// `DELETE /v1/peers/{peer}` (`peers rm`): this agent stops dialling `peer` and refuses its
/// connections, drops its metric (so allocation no longer chooses it) and ignores its later
/// ones, and forgets it; recorded in the store, so a restart keeps it removed. `join` with an
/// address of it undoes this.
async fn remove_peer(
    State(state): State<ApiState>,
    axum::extract::Path(text): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peer = text
        .parse::<libp2p::PeerId>()
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a peer id")))?;
    if peer == state.peer_id {
        return Err(ApiError::BadRequest(format!(
            "{peer} is this agent itself; remove it from another agent"
        )));
    }
    // The swarm first: once it refuses the peer, nothing (identify, a join) rewrites the
    // peer's record behind the removal written next.
    state.swarm.remove(peer).await?;
    state
        .replica
        .set_peer_removed(peer, true)
        .await
        .map_err(|err| {
            let why = format!(
                "{peer} is cut off until this agent restarts, but its removal was not recorded: \
                 {err}"
            );
            match ApiError::from(err) {
                ApiError::DiskFull(_) => ApiError::DiskFull(why),
                ApiError::Unavailable(_) => ApiError::Unavailable(why),
                _ => ApiError::Internal(why),
            }
        })?;
    Ok(Json(serde_json::json!({ "peer_id": peer.to_string() })))
}
