//! The workers: one call to the IPFS node for one CID each, run as tasks, at most
//! `ipfs.concurrency` at once.

use std::collections::HashMap;
use std::sync::Arc;

use pinmesh_protocol::Cid;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Cluster;
use super::decide::{Job, satisfies};
use crate::ipfs::{IpfsError, PinBackend, PinLimits};

/// A worker about to add a pin the node does not have: the actor records ownership durably,
/// then answers whether the worker may go on.
pub(super) type Claim = (Cid, oneshot::Sender<bool>);

/// Origins dialled before a pin, at most.
const ORIGINS_DIALLED: usize = 10;

/// What a worker needs besides its job.
#[derive(Clone)]
pub(super) struct Tools {
    pub backend: Arc<dyn PinBackend>,
    /// The name pins are given where the node keeps names: `pinmesh:<cluster>`.
    pub name: String,
    pub limits: PinLimits,
    pub claims: mpsc::Sender<Claim>,
    pub cluster: Arc<dyn Cluster>,
}

/// How a worker ended.
pub(super) enum Outcome {
    Done(Job, Result<bool, IpfsError>),
    /// It panicked (e.g. inside the IPFS library on a DAG it cannot walk).
    Died(String),
}

/// The running workers.
pub(super) struct Workers {
    tools: Tools,
    set: JoinSet<(Cid, Job, Result<bool, IpfsError>)>,
    /// Which CID each works on, to settle it if the worker dies.
    cids: HashMap<tokio::task::Id, Cid>,
}

impl Workers {
    pub fn new(tools: Tools) -> Self {
        Workers {
            tools,
            set: JoinSet::new(),
            cids: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn spawn(&mut self, cid: Cid, job: Job) {
        let work = work(self.tools.clone(), cid, job.clone());
        let handle = self.set.spawn(async move { (cid, job, work.await) });
        self.cids.insert(handle.id(), cid);
    }

    /// Waits until a worker ends (never, with none running), then takes every other one that
    /// has ended too, so that they share one read and one commit.
    pub async fn ended(&mut self) -> Vec<(Cid, Outcome)> {
        let Some(first) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let mut ended = Vec::new();
        let mut next = Some(first);
        while let Some(result) = next.take().or_else(|| self.set.try_join_next_with_id()) {
            match result {
                Ok((id, (cid, job, result))) => {
                    self.cids.remove(&id);
                    ended.push((cid, Outcome::Done(job, result)));
                }
                Err(err) => {
                    warn!(error = %err, "a reconciler worker failed");
                    if let Some(cid) = self.cids.remove(&err.id()) {
                        ended.push((cid, Outcome::Died(err.to_string())));
                    }
                }
            }
        }
        ended
    }
}

/// Runs `job` on `cid`. Returns whether the pin is this agent's (after a release: whether it
/// kept it, not enough allocated peers holding it yet).
///
/// For a pin not known to be the agent's, the node is asked first whether it already holds
/// it: the actor's view may be older than a pin made by hand, and a pin that was there before
/// the agent asked is not the agent's to remove. A pin made by hand between that look and the
/// agent's own `pin/add` is the one case taken for the agent's.
async fn work(tools: Tools, cid: Cid, job: Job) -> Result<bool, IpfsError> {
    let Tools {
        backend,
        name,
        limits,
        claims,
        cluster,
    } = tools;
    let (wanted, mut owned) = match job {
        Job::Unpin => return backend.unpin(&cid).await.map(|()| false),
        Job::Release(handover) => {
            let holding = cluster.pinned_on(&cid, &handover.peers).await;
            if holding < handover.need {
                debug!(%cid, holding, need = handover.need, "keeping a pin allocated elsewhere");
                return Ok(true);
            }
            return backend.unpin(&cid).await.map(|()| false);
        }
        Job::Pin { wanted, owned } => (wanted, owned),
    };
    if !owned {
        let have = backend.pinned(&cid).await?;
        if satisfies(have, wanted.mode) {
            return Ok(false);
        }
        if have.is_none() {
            let (reply, granted) = oneshot::channel();
            let recorded =
                claims.send((cid, reply)).await.is_ok() && granted.await.unwrap_or(false);
            if !recorded {
                return Err(IpfsError::Refused {
                    call: "pin/add",
                    message: "not attempted: ownership could not be recorded".into(),
                });
            }
            owned = true;
        }
        // Else someone else's direct pin, made recursive by us: still theirs.
    }
    // Best effort and all at once: the content may be reachable without them.
    let dials = wanted.origins.iter().take(ORIGINS_DIALLED).map(|origin| {
        let backend = backend.clone();
        async move {
            if let Err(err) = backend.connect(origin).await {
                debug!(%origin, error = %err, "cannot connect to a pin origin");
            }
        }
    });
    futures::future::join_all(dials).await;
    backend.pin(&cid, wanted.mode, &name, limits).await?;
    Ok(owned)
}
