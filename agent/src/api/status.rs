//! `GET /v1/status` (this agent's IPFS node), `GET /v1/status/cluster` (every peer's, asked
//! over the sync protocol; its lines are built in [`cluster`]) and `POST /v1/recover`.

mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use libp2p::PeerId;
use pinmesh_protocol::Cid;
use pinmesh_protocol::message::MAX_STATUS_CIDS;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::debug;

use self::cluster::{Answer, Holders, Round};
pub use self::cluster::{ClusterStatusLine, PeerPinStatus, UNREACHABLE};
use super::{ApiError, ApiState, LIST_BUFFER, parse_cid, tokio_stream_from};
use crate::reconcile::Status;
pub use crate::reconcile::status::StatusLine;

use crate::reconcile::Role;
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
    fn parse(&self) -> Result<(Vec<Cid>, Vec<StatusFilter>), ApiError> {
        let cids = split(&self.cids).map(parse_cid).collect::<Result<_, _>>()?;
        let filter = split(&self.filter)
            .map(|f| f.parse::<StatusFilter>().map_err(ApiError::BadRequest))
            .collect::<Result<_, _>>()?;
        Ok((cids, filter))
    }
}

/// A status `?filter=` (and `status --filter`) keeps: one a node reports, or `unreachable`,
/// which only the cluster status gives (this agent always reaches its own node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Node(Status),
    Unreachable,
}

impl std::str::FromStr for StatusFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        use clap::ValueEnum;
        if text == UNREACHABLE {
            return Ok(StatusFilter::Unreachable);
        }
        Status::from_str(text, false)
            .map(StatusFilter::Node)
            .map_err(|_| {
                let names: Vec<String> = (Status::value_variants().iter())
                    .map(ToString::to_string)
                    .chain([UNREACHABLE.to_string()])
                    .collect();
                format!("unknown status {text:?}; statuses are {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusFilter::Node(status) => status.fmt(f),
            StatusFilter::Unreachable => f.write_str(UNREACHABLE),
        }
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
    let role = state.role.clone();
    let store = state.store.clone();
    super::stream_pages(&state.tasks, super::listing_permit(&state)?, move |after| {
        let mut lines = Vec::new();
        let mut emit = |line: StatusLine| -> bool {
            if filter.is_empty() || filter.contains(&StatusFilter::Node(line.status)) {
                let mut text = serde_json::to_string(&line).unwrap_or_default();
                text.push('\n');
                lines.push(text);
            }
            true
        };
        let next = if cids.is_empty() {
            scan_page(&store, &role, super::LIST_PAGE, after, &mut emit)
        } else {
            // The CIDs asked for (a URL's worth): one page.
            scan_some(&store, &role, &cids, &mut emit).map(|()| None)
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

/// The API's answer when a command needs this agent's IPFS node and there is none.
const NO_NODE: &str =
    "this agent drives no IPFS node (its config.toml has ipfs.embedded = false and no ipfs.api)";
/// How long a peer may take to answer one round.
const PEER_ANSWER: Duration = Duration::from_secs(30);

/// Streams NDJSON [`ClusterStatusLine`]s: the CIDs asked, or every pin of the pinset, asking
/// every connected member in rounds of [`CLUSTER_CHUNK`] CIDs. Each line lists every peer that
/// should hold its CID (`unreachable` when not connected or silent) and every other peer with
/// an IPFS node that answered, and counts the followers that cover it; see [`cluster`] for the
/// rules.
pub async fn cluster_status(
    State(state): State<ApiState>,
    Query(query): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let (cids, filter) = query.parse()?;
    let filter: Vec<String> = filter.iter().map(ToString::to_string).collect();
    let info = super::swarm_info(&state).await?;
    // Followers are not asked about the whole pinset: their announced shares say what they
    // cover. About CIDs named (a URL's worth), connected followers answer too.
    let asked_followers: Vec<PeerId> = (info.peers.iter())
        .filter(|p| p.connected && is_follower(p) && !cids.is_empty())
        .map(|p| p.peer_id)
        .collect();
    let peers: Vec<PeerId> = info
        .peers
        .iter()
        .filter(|p| p.connected && !is_follower(p))
        .map(|p| p.peer_id)
        .chain(asked_followers.iter().copied())
        .collect();
    let followers = info.followers.clone();
    // A peer drives an IPFS node if a metric of it is held, live or expired; it was last
    // heard of when that metric arrived.
    let now = crate::replica::now_ms();
    let heard = |id: &PeerId, metric: &crate::swarm::PeerMetric| {
        (id.to_string(), now.saturating_sub(metric.age_ms))
    };
    let known: BTreeMap<String, u64> = (info.peers.iter())
        .filter_map(|p| Some(heard(&p.peer_id, p.metric.as_ref()?)))
        .chain(info.metric.as_ref().map(|m| heard(&info.peer_id, m)))
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
            match round(&state, &peers, &known, &chunk).await {
                Ok(lines) => {
                    for (mut line, cid) in lines.into_iter().zip(&chunk) {
                        line.followers = crate::swarm::coverage(&followers, cid);
                        for follower in &asked_followers {
                            let id = follower.to_string();
                            if let Some(status) = line.peers.remove(&id) {
                                line.follower_peers.insert(id, status);
                            }
                        }
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

/// Whether `peer` counts as a follower here: its announcement holds.
fn is_follower(peer: &crate::swarm::PeerView) -> bool {
    peer.follower.as_ref().is_some_and(|f| f.live)
}

/// Asks this agent and every connected peer in `peers` about `chunk`, reads who should hold
/// each CID, and makes one line per CID, in order. `known`: the peers with an IPFS node and
/// when each was last heard of.
async fn round(
    state: &ApiState,
    peers: &[PeerId],
    known: &BTreeMap<String, u64>,
    chunk: &[Cid],
) -> Result<Vec<ClusterStatusLine>, String> {
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
    let mut round = Round {
        answers: BTreeMap::new(),
        known: known.clone(),
    };
    for (peer, answer) in futures::future::join_all(asks).await {
        let answer = match answer {
            Ok(entries) => Answer::Statuses(
                entries
                    .into_iter()
                    .map(|e| (e.cid, PeerPinStatus::from(e)))
                    .collect(),
            ),
            Err(SwarmError::NoIpfs) => Answer::NoNode,
            Err(reason) => {
                debug!(%peer, %reason, "peer did not answer for the cluster status");
                Answer::Failed(reason.to_string())
            }
        };
        round.answers.insert(peer.to_string(), answer);
    }
    // Who should hold each CID and, with a node, this agent's own statuses: one read.
    let store = state.store.clone();
    let me = state.reconciler.is_some().then(|| state.role.clone());
    let cids = chunk.to_vec();
    let (holders, local) = state
        .tasks
        .spawn_blocking(move || read_round(&store, me.as_deref(), &cids))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(local) = local {
        round
            .answers
            .insert(state.peer_id.to_string(), Answer::Statuses(local));
    }
    Ok(chunk
        .iter()
        .zip(&holders)
        .map(|(cid, holders)| round.line(cid, holders))
        .collect())
}

/// Who should hold each CID of a round, and this agent's own statuses.
type RoundRead = (Vec<Holders>, Option<HashMap<Cid, PeerPinStatus>>);

/// Who should hold each of `cids` (in order) and, for `me` when this agent drives a node, its
/// own statuses of them.
fn read_round(store: &Store, me: Option<&Role>, cids: &[Cid]) -> Result<RoundRead, StoreError> {
    let now_secs = crate::replica::now_ms() / 1000;
    let holders = {
        let reader = store.reader()?;
        (cids.iter())
            .map(|cid| Ok(Holders::of(reader.versions(cid)?.as_deref(), now_secs)))
            .collect::<Result<Vec<_>, StoreError>>()?
    };
    let local = match me {
        Some(me) => Some(
            (lines_for(store, me, cids)?.into_iter())
                .map(|own| {
                    let status = PeerPinStatus {
                        status: own.status.into(),
                        error: own.error,
                        attempts: own.attempts,
                        updated: own.updated,
                        since: None,
                    };
                    (own.cid, status)
                })
                .collect(),
        ),
        None => None,
    };
    Ok((holders, local))
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
    // Before the node sees a byte: a read-only agent stores nothing for anyone.
    super::pins::check_writer(&state)?;
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
