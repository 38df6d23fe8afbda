//! `GET /v1/status` (this agent's IPFS node), `GET /v1/status/cluster` (every peer's, asked
//! over the sync protocol) and `POST /v1/recover`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use libp2p::PeerId;
use pinmesh_protocol::message::MAX_STATUS_CIDS;
use pinmesh_protocol::{Cid, PinStatus, PinStatusEntry};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use super::{ApiError, ApiState, LIST_BUFFER, parse_cid, tokio_stream_from};
use crate::reconcile::Status;
pub use crate::reconcile::status::StatusLine;

use crate::reconcile::status::{lines_for, scan_page, scan_some};
use crate::store::{Store, StoreError};
use crate::swarm::SwarmError;

/// `?cids=A,B&filter=pin_error,queued`.
#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    /// Comma-separated CIDs; all when absent.
    pub cids: Option<String>,
    /// Comma-separated statuses to keep; all when absent.
    pub filter: Option<String>,
}

impl StatusQuery {
    fn parse(&self) -> Result<(Vec<Cid>, Vec<Status>), ApiError> {
        let cids = split(&self.cids).map(parse_cid).collect::<Result<_, _>>()?;
        let filter = split(&self.filter)
            .map(|f| {
                serde_json::from_value(serde_json::Value::String(f.to_string())).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "unknown status {f:?}; statuses are queued, pinning, pinned, pin_error, \
                         unpinning, unpinned, unpin_error, remote, unexpectedly_unpinned"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((cids, filter))
    }
}

fn split(text: &Option<String>) -> impl Iterator<Item = &str> {
    text.iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Streams NDJSON [`StatusLine`]s: every pin of the pinset, then CIDs the reconciler still
/// tracks outside it; or only the CIDs asked for.
pub async fn status(
    State(state): State<ApiState>,
    Query(query): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    if state.reconciler.is_none() {
        return Err(ApiError::Unavailable(NO_NODE.into()));
    }
    let (cids, filter) = query.parse()?;
    let peer_id = state.peer_id;
    let store = state.store.clone();
    super::stream_pages(&state.tasks, super::listing_permit(&state)?, move |after| {
        let mut lines = Vec::new();
        let mut emit = |line: StatusLine| -> bool {
            if filter.is_empty() || filter.contains(&line.status) {
                let mut text = serde_json::to_string(&line).unwrap_or_default();
                text.push('\n');
                lines.push(text);
            }
            true
        };
        let next = if cids.is_empty() {
            scan_page(&store, &peer_id, super::LIST_PAGE, after, &mut emit)
        } else {
            // The CIDs asked for (a URL's worth): one page.
            scan_some(&store, &peer_id, &cids, &mut emit).map(|()| None)
        }
        .map_err(|e| e.to_string())?;
        Ok(super::Page { lines, next })
    })
}

/// `POST /v1/recover` body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RecoverRequest {
    /// One CID; every CID in an error status when absent.
    #[serde(default)]
    pub cid: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecoverReply {
    /// CIDs queued for a new attempt.
    pub queued: usize,
}

pub async fn recover(
    State(state): State<ApiState>,
    Json(request): Json<RecoverRequest>,
) -> Result<Json<RecoverReply>, ApiError> {
    let Some(reconciler) = &state.reconciler else {
        return Err(ApiError::Unavailable(NO_NODE.into()));
    };
    let cid = request.cid.as_deref().map(parse_cid).transpose()?;
    let queued = reconciler
        .recover(cid)
        .await
        .ok_or_else(|| ApiError::Unavailable("the reconciler has stopped".into()))?;
    Ok(Json(RecoverReply { queued }))
}

/// CIDs per round of questions to the peers: well under the request size limit even for
/// CIDs with 64-byte digests.
const CLUSTER_CHUNK: usize = MAX_STATUS_CIDS / 2;

/// One peer's status for one CID, in a [`ClusterStatusLine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPinStatus {
    /// As the peer reported it (a name of a newer release shows as it came).
    pub status: PinStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the peer's last change for the CID.
    pub updated: u64,
}

/// One CID across the cluster: a line of `GET /v1/status/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusLine {
    pub cid: String,
    /// Every peer that answered and drives an IPFS node (this agent included, if it does).
    pub peers: BTreeMap<String, PeerPinStatus>,
}

/// The API's answer when a command needs this agent's IPFS node and there is none.
const NO_NODE: &str =
    "this agent drives no IPFS node (its config.toml has ipfs.embedded = false and no ipfs.api)";
/// How long a peer may take to answer one round.
const PEER_ANSWER: Duration = Duration::from_secs(30);

/// Streams NDJSON [`ClusterStatusLine`]s: the CIDs asked, or every pin of the pinset, asking
/// every connected peer in rounds of [`CLUSTER_CHUNK`] CIDs. Peers that drive no IPFS node are
/// left out; a peer that does not answer is reported `unknown`, with why.
pub async fn cluster_status(
    State(state): State<ApiState>,
    Query(query): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let (cids, filter) = query.parse()?;
    let filter: Vec<String> = filter.iter().map(ToString::to_string).collect();
    let info = super::swarm_info(&state).await?;
    let peers: Vec<PeerId> = info
        .peers
        .iter()
        .filter(|p| p.connected)
        .map(|p| p.peer_id)
        .collect();
    let permit = super::listing_permit(&state)?;
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(LIST_BUFFER);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let _permit = permit;
        let mut after: Option<Vec<u8>> = None;
        let mut given = cids.chunks(CLUSTER_CHUNK);
        loop {
            let chunk: Vec<Cid> = if cids.is_empty() {
                let store = state.store.clone();
                let from = after.take();
                let read = state
                    .tasks
                    .spawn_blocking(move || pinset_chunk(&store, from, CLUSTER_CHUNK))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match read {
                    Ok(chunk) => chunk,
                    Err(err) => {
                        // The listing ends with an error, not silently short.
                        let _ = tx.send(Err(std::io::Error::other(err))).await;
                        return;
                    }
                }
            } else {
                match given.next() {
                    Some(chunk) => chunk.to_vec(),
                    None => return,
                }
            };
            let Some(last) = chunk.last() else { return };
            after = Some(last.to_bytes());
            match round(&state, &peers, &chunk).await {
                Ok(lines) => {
                    for line in lines {
                        let keep = filter.is_empty()
                            || line
                                .peers
                                .values()
                                .any(|p| filter.iter().any(|f| f == p.status.as_str()));
                        if !keep {
                            continue;
                        }
                        let mut text = serde_json::to_string(&line).unwrap_or_default();
                        text.push('\n');
                        if tx.send(Ok(text)).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(tokio_stream_from(rx)))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Asks this agent and every peer about `chunk`; one line per CID, in order.
async fn round(
    state: &ApiState,
    peers: &[PeerId],
    chunk: &[Cid],
) -> Result<Vec<ClusterStatusLine>, String> {
    let mut lines: Vec<ClusterStatusLine> = chunk
        .iter()
        .map(|cid| ClusterStatusLine {
            cid: cid.to_string(),
            peers: BTreeMap::new(),
        })
        .collect();
    let asks = peers.iter().map(|peer| async move {
        let asked = state.swarm.pin_status(*peer, chunk.to_vec());
        let answer = match tokio::time::timeout(PEER_ANSWER, asked).await {
            Ok(answer) => answer,
            Err(_) => Err(SwarmError::Failed(format!(
                "no answer within {}s",
                PEER_ANSWER.as_secs()
            ))),
        };
        (*peer, answer)
    });
    for (peer, answer) in futures::future::join_all(asks).await {
        let mut entries: std::collections::HashMap<Cid, PinStatusEntry> = match answer {
            Ok(entries) => entries.into_iter().map(|e| (e.cid, e)).collect(),
            Err(SwarmError::NoIpfs) => continue,
            Err(reason) => {
                debug!(%peer, %reason, "peer did not answer for the cluster status");
                std::collections::HashMap::new()
            }
        };
        for (line, cid) in lines.iter_mut().zip(chunk) {
            // Matched by CID: a peer answering fewer or other CIDs does not shift the rest.
            let status = match entries.remove(cid) {
                Some(entry) => PeerPinStatus {
                    status: entry.status,
                    error: entry.error,
                    attempts: entry.attempts,
                    updated: entry.updated_ms,
                },
                None => PeerPinStatus {
                    status: PinStatus::Unknown("unknown".into()),
                    error: Some("the peer did not answer for this CID".into()),
                    attempts: 0,
                    updated: 0,
                },
            };
            line.peers.insert(peer.to_string(), status);
        }
    }
    if state.reconciler.is_some() {
        let store = state.store.clone();
        let me = state.peer_id;
        let cids = chunk.to_vec();
        let local = state
            .tasks
            .spawn_blocking(move || lines_for(&store, &me, &cids))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for (line, own) in lines.iter_mut().zip(local) {
            line.peers.insert(
                own.peer_id.to_string(),
                PeerPinStatus {
                    status: own.status.into(),
                    error: own.error,
                    attempts: own.attempts,
                    updated: own.updated,
                },
            );
        }
    }
    Ok(lines)
}

/// Up to `n` CIDs of the pinset after the key `after`, in key order.
fn pinset_chunk(store: &Store, after: Option<Vec<u8>>, n: usize) -> Result<Vec<Cid>, StoreError> {
    let reader = store.reader()?;
    reader.cids(after.as_deref())?.take(n).collect()
}

/// `POST /v1/add?wrap=BOOL` answer: what the node stored, the root last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedLine {
    pub name: String,
    pub cid: String,
    pub size: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct AddQuery {
    #[serde(default)]
    pub wrap: bool,
}

/// Streams a `multipart/form-data` body (Kubo's `add` layout) to this agent's IPFS node. The
/// content is not pinned here: the caller pins the root in the cluster, and the reconciler
/// pins it on every node (this one's own, at once: the blocks are local).
pub async fn add(
    State(state): State<ApiState>,
    Query(query): Query<AddQuery>,
    request: axum::extract::Request,
) -> Result<Json<Vec<AddedLine>>, ApiError> {
    use futures::TryStreamExt;
    let Some(ipfs) = &state.ipfs else {
        return Err(ApiError::Unavailable(NO_NODE.into()));
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("multipart/form-data"))
        .ok_or_else(|| ApiError::BadRequest("add needs a multipart/form-data body".into()))?
        .to_string();
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let input = crate::ipfs::AddInput {
        content_type,
        body: Box::pin(body),
        wrap: query.wrap,
    };
    let added = ipfs
        .add(input, state.add_timeout)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(
        added
            .into_iter()
            .map(|a| AddedLine {
                name: a.name,
                cid: a.cid.to_string(),
                size: a.size,
            })
            .collect(),
    ))
}

/// `GET /v1/cat/{cid}`: the bytes of a UnixFS file this agent's IPFS node holds (it fetches
/// nothing for this). Errors before the first byte are answered as errors.
pub async fn cat(
    State(state): State<ApiState>,
    axum::extract::Path(cid): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    use futures::StreamExt;
    let Some(ipfs) = &state.ipfs else {
        return Err(ApiError::Unavailable(NO_NODE.into()));
    };
    let cid = parse_cid(&cid)?;
    let failed = |e: crate::ipfs::IpfsError| match e {
        crate::ipfs::IpfsError::Refused { .. } => {
            ApiError::NotFound(format!("cannot read {cid}: {e}"))
        }
        _ => ApiError::Unavailable(format!("cannot read {cid}: {e}")),
    };
    let mut stream = ipfs.cat(&cid).await.map_err(failed)?;
    let first = match stream.next().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => return Err(failed(e)),
        None => None,
    };
    let body = futures::stream::iter(first.map(Ok))
        .chain(stream)
        .map(|chunk| chunk.map_err(std::io::Error::other));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /v1/debug/reconciler`.
pub async fn reconciler(
    State(state): State<ApiState>,
) -> Result<Json<crate::reconcile::Report>, ApiError> {
    match &state.reconciler {
        Some(r) => Ok(Json(r.report())),
        None => Err(ApiError::Unavailable(NO_NODE.into())),
    }
}
