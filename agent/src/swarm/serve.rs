//! Answers to peers' sync requests that read the store: deltas from the log, snapshot chunks and
//! pin statuses. Reads run on blocking threads, at most [`MAX_SERVING`] at once (more are refused
//! as busy); answers come back to the event loop, which sends them.

use crate::reconcile::Role;
use std::sync::Arc;

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use pinmesh_protocol::catchup::deltas_answer;
use pinmesh_protocol::message::MAX_STATUS_CIDS;
use pinmesh_protocol::{Refusal, Request, Response};
use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::snapshots::{ServeError, Snapshots};
use crate::fatal::Fatal;
use crate::store::{Store, StoreError};

/// Largest GetDeltas answer we assemble; well under the response limit.
const DELTAS_ANSWER_BYTES: usize = 4 << 20;
/// Most entries and bytes per snapshot chunk.
pub const SNAPSHOT_CHUNK_ENTRIES: u32 = 20_000;
const SNAPSHOT_CHUNK_BYTES: usize = 2 << 20;
/// Sync answers read from the store at once; more are refused as busy. Each may hold a few MiB.
const MAX_SERVING: usize = 8;

/// An answer read off the event loop, to send on `channel`.
pub struct Served {
    pub channel: ResponseChannel<Response>,
    pub response: Response,
}

/// Reads answers from the store.
pub struct Server {
    store: Store,
    snapshots: Arc<Snapshots>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Served>,
    /// Stops the agent when serving finds the store damaged.
    fatal: Fatal,
    /// This agent drives an IPFS node, so it can answer `PinStatus`.
    ipfs: bool,
    /// Which pins this agent holds, for its `PinStatus` answers.
    role: Arc<Role>,
}

impl Server {
    /// A server whose answers arrive on the returned receiver.
    pub fn new(
        store: Store,
        fatal: Fatal,
        ipfs: bool,
        role: Role,
    ) -> (Self, mpsc::Receiver<Served>) {
        // Capacity: answers in progress; each holds at most one response.
        let (tx, rx) = mpsc::channel(64);
        let server = Server {
            store,
            snapshots: Arc::new(Snapshots::default()),
            permits: Arc::new(Semaphore::new(MAX_SERVING)),
            tx,
            fatal,
            ipfs,
            role: Arc::new(role),
        };
        (server, rx)
    }

    /// Releases snapshot sessions past their time.
    pub fn sweep(&self) {
        self.snapshots.sweep();
    }

    /// Starts answering `request` (`GetDeltas`, `Snapshot` or `PinStatus`) from `peer`. An
    /// answer that needs no read (a refusal) is returned to be sent at once.
    pub fn serve(
        &self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, Response)> {
        if let Request::PinStatus { cids } = &request {
            let refuse = if !self.ipfs {
                Some(Response::refused(
                    Refusal::NoIpfs,
                    "this agent drives no IPFS node",
                ))
            } else if cids.len() > MAX_STATUS_CIDS {
                Some(Response::refused(
                    Refusal::TooLarge,
                    format!("at most {MAX_STATUS_CIDS} CIDs per request"),
                ))
            } else {
                None
            };
            if let Some(refusal) = refuse {
                return Some((channel, refusal));
            }
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let busy = Response::refused(Refusal::Busy, "busy serving other peers; try later");
            return Some((channel, busy));
        };
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        let fatal = self.fatal.clone();
        let tx = self.tx.clone();
        let role = self.role.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let response = read(&store, &snapshots, &fatal, &role, peer, request);
            let _ = tx.blocking_send(Served { channel, response });
        });
        None
    }
}

fn read(
    store: &Store,
    snapshots: &Snapshots,
    fatal: &Fatal,
    role: &Role,
    peer: PeerId,
    request: Request,
) -> Response {
    let storage_error = || Response::refused(Refusal::Storage, "storage error");
    match request {
        Request::GetDeltas { origin, from, to } => {
            match store.batches(origin.0, from, to, DELTAS_ANSWER_BYTES) {
                Ok((batches, low)) => deltas_answer(origin, from, batches, low),
                Err(err) => {
                    warn!(%peer, error = %err, "cannot read the delta log");
                    storage_error()
                }
            }
        }
        Request::Snapshot {
            snapshot_id,
            after,
            limit,
        } => {
            let limit = limit.clamp(1, SNAPSHOT_CHUNK_ENTRIES) as usize;
            let chunk = snapshots.chunk(
                store,
                &peer,
                snapshot_id,
                after.as_deref().map(|a| a.as_slice()),
                limit,
                SNAPSHOT_CHUNK_BYTES,
            );
            match chunk {
                Ok(chunk) => Response::SnapshotChunk(chunk),
                Err(err @ ServeError::Busy) => Response::refused(Refusal::Busy, err.to_string()),
                Err(err @ ServeError::Unknown(_)) => {
                    Response::refused(Refusal::SnapshotGone, err.to_string())
                }
                Err(ServeError::Store(err @ StoreError::Damaged(_))) => {
                    fatal.damaged(&err.to_string());
                    storage_error()
                }
                Err(ServeError::Store(err)) => {
                    warn!(%peer, error = %err, "cannot read a snapshot");
                    storage_error()
                }
            }
        }
        Request::PinStatus { cids } => {
            match crate::reconcile::status::lines_for(store, role, &cids) {
                Ok(lines) => Response::PinStatus {
                    entries: lines.into_iter().map(|l| l.into_entry()).collect(),
                },
                Err(err) => {
                    warn!(%peer, error = %err, "cannot read pin statuses");
                    storage_error()
                }
            }
        }
        Request::Status | Request::IpfsNode => {
            Response::refused(Refusal::Unsupported, "answered by the event loop")
        }
    }
}
