//! A whole agent: [`Node::start`] wires store, replica, IPFS node, swarm, reconciler and API
//! from a [`Start`] and returns a handle. `main` and the tests start agents the same way.
//!
//! Teardown order (see [`NodeHandle::shutdown`]): the API stops taking requests, the swarm
//! stops, then the replica drains what is queued and makes its last commit, then the store
//! closes with the last handle, then the IPFS node stops. A start that fails stops what it
//! began in the same order before it returns (see [`Node::start`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::allocation::{self, KeeperSettings, MetricSettings};
use crate::api::{self, ApiState};
use crate::config::{Config, Validated};
use crate::fatal::Fatal;
use crate::home::{Home, write_private};
use crate::http;
use crate::ipfs::{PinBackend, PinLimits, peering};
use crate::reconcile;
use crate::reconcile::Role;
use crate::replica::{self, NodeSigner, ReplicaHandle};
use crate::store::{PeerRecord, Store};
use crate::swarm::{self, EventLoop, Flags, SwarmHandle, Wiring};

/// What an agent needs to start.
pub struct Start {
    /// Where its database, IPFS repo and API address file live.
    pub home: Home,
    pub config: Validated,
    /// Its libp2p identity (ed25519): its peer id and the key that signs its batches.
    pub identity: Keypair,
    /// The bearer token of its control API.
    pub token: String,
    /// The IPFS node to drive instead of the one the config names (stopped with the agent).
    pub backend: Option<Arc<dyn PinBackend>>,
    /// Extra peers to dial (from `run --bootstrap`).
    pub bootstrap: Vec<Multiaddr>,
}

impl Start {
    /// Everything from the agent's home: its config, identity and token.
    pub fn from_home(home: Home) -> anyhow::Result<Start> {
        Ok(Start {
            config: Config::load(&home.config())?,
            identity: home.load_identity()?,
            token: home.load_token()?,
            home,
            backend: None,
            bootstrap: Vec::new(),
        })
    }
}

/// A running agent.
#[derive(Debug)]
pub struct NodeHandle {
    pub peer_id: PeerId,
    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub addrs: Vec<Multiaddr>,
    pub api_addr: SocketAddr,
    /// Where the follow configuration is served without a token, if it is.
    pub follow_config_addr: Option<SocketAddr>,
    pub home: Home,
    pub replica: ReplicaHandle,
    pub flags: Arc<Flags>,
    /// Whether the agent has caught up with its peers (decided by catch-up in the swarm).
    pub synced: watch::Receiver<bool>,
    pub swarm: SwarmHandle,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Why a critical part stopped the agent, when it says.
    failure: Fatal,
    /// Stopped last, once nothing uses it any more.
    backend: Option<Arc<dyn PinBackend>>,
}

/// How long open API requests may hold up a shutdown.
const API_DRAIN: Duration = Duration::from_secs(5);

pub struct Node;

impl Node {
    /// Starts an agent. Returns once it listens on the network and the API.
    ///
    /// A start that fails stops what it began before it returns, in this order: every task
    /// (API, swarm, reconciler, peering), then the replica thread once the last handle to it is
    /// gone (the database is closed), then the IPFS node (its repo is free again). Starting
    /// again at once then works.
    pub async fn start(start: Start) -> anyhow::Result<NodeHandle> {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut backend = None;
        let started = Self::assemble(start, cancel.clone(), tasks.clone(), &mut backend).await;
        if started.is_err() {
            cancel.cancel();
            tasks.close();
            tasks.wait().await; // the replica thread is joined by one of them
            if let Some(backend) = backend {
                backend.stop().await;
            }
        }
        started
    }

    /// The steps of a start. What it began is in `tasks` (each ends on `cancel`) and
    /// `backend_started`, for [`Node::start`] to stop when a step fails.
    async fn assemble(
        start: Start,
        cancel: CancellationToken,
        tasks: TaskTracker,
        backend_started: &mut Option<Arc<dyn PinBackend>>,
    ) -> anyhow::Result<NodeHandle> {
        let Start {
            home,
            config,
            identity: keypair,
            token,
            backend: given_backend,
            bootstrap,
        } = start;
        let peer_id = keypair.public().to_peer_id();
        let role = match &config.follower {
            Some(follower) => {
                if config.trusted_writers.contains(&peer_id) {
                    anyhow::bail!(
                        "this agent is in cluster.trusted_writers and has a [follower] section: \
                         a follower writes nothing; remove one or the other"
                    );
                }
                Role::follower(peer_id, follower.share)
            }
            None => Role::member(peer_id),
        };
        // The API port first: a taken port fails the start before anything else is opened.
        let listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("cannot bind the API to {}", config.api_listen))?;
        let api_addr = listener.local_addr()?;
        let follow_listener = match config.follow_config_listen {
            None => None,
            Some(addr) => {
                if !config.trusted_writers.contains(&peer_id) {
                    anyhow::bail!(
                        "api.follow_config_listen is set, but this agent is not in \
                         cluster.trusted_writers: only a trusted writer's signature vouches for \
                         a follow configuration"
                    );
                }
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!(
                        "cannot serve the follow configuration on {addr} (api.follow_config_listen)"
                    )
                })?;
                Some(listener)
            }
        };
        let follow_config_addr = match &follow_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        // Taken libp2p ports next (libp2p itself would share them; see `net`).
        for addr in &config.listen {
            crate::net::ensure_port_free(addr, "network.listen (init --listen)")?;
        }
        if config.raw.ipfs.api.is_none() && config.raw.ipfs.embedded {
            for addr in &config.ipfs_listen {
                crate::net::ensure_port_free(addr, "[ipfs] listen (init --ipfs-listen)")?;
            }
        }
        let span = info_span!("node", peer = %short(&peer_id));
        span.in_scope(|| warn_about(&config));

        let cache = config.raw.storage.cache_mib as usize * 1024 * 1024;
        let (store, persisted) = Store::open(&home.database(), cache)
            .with_context(|| format!("cannot open {}", home.database().display()))?;
        let signer = NodeSigner(
            keypair
                .clone()
                .try_into_ed25519()
                .map_err(|_| anyhow!("identity must be ed25519"))?,
        );
        let failure = Fatal::new(cancel.clone(), home.database());
        let (outputs_tx, outputs_rx) = mpsc::channel(replica::OUTPUT_CAPACITY);
        let (change_feed, changes) = replica::change_feed();
        let (replica, replica_thread) = replica::spawn(
            replica::ReplicaSettings {
                cluster: config.raw.cluster.name.clone(),
                log_retention: config.raw.sync.log_retention,
                read_only: role.is_follower(),
            },
            store.clone(),
            persisted,
            signer.clone(),
            outputs_tx,
            change_feed,
        )?;
        // Joined by a task, so a failed start waits for it like for the others.
        let stop = cancel.clone();
        let fatal = failure.clone();
        tasks.spawn_blocking(move || {
            match replica_thread.join() {
                Ok(Ok(())) => stop.cancel(),
                Ok(Err(reason)) => fatal.unwritable(&reason),
                Err(_) => fatal.raise("the replica thread panicked".into()),
            };
        });

        // The IPFS node before the network: an embedded node that cannot open its repo or
        // listen fails the start with nothing else running yet.
        let backend: Option<Arc<dyn PinBackend>> = match given_backend {
            Some(backend) => Some(backend),
            None => start_backend(&config, &home, &span).await?,
        };
        *backend_started = backend.clone();
        let peering = backend.as_ref().map(|backend| {
            let (peering, run) = peering::spawn(backend.clone(), cancel.child_token());
            tasks.spawn(run.instrument(span.clone()));
            peering
        });

        // Remembered peers are dialled at start; removed ones are refused from the start.
        let known = store.peers().unwrap_or_else(|err| {
            warn!(error = %err, "cannot read the remembered peers; starting from bootstrap only");
            Vec::new()
        });
        let mut bootstrap_addrs: Vec<Multiaddr> = config.bootstrap.clone();
        bootstrap_addrs.extend(bootstrap);
        let (dial, removed) = start_dials(bootstrap_addrs, known, &peer_id);
        if !removed.is_empty() {
            span.in_scope(|| {
                info!(
                    removed = removed.len(),
                    "peers removed with `peers rm` are refused and not dialled"
                )
            });
        }

        let flags = Arc::new(Flags::default());
        let (synced_tx, synced) = watch::channel(false);
        let mut swarm = swarm::build(keypair, config.secret, &config.raw.cluster.name, &flags)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .with_context(|| format!("cannot listen on {addr}"))?;
        }
        let (listen_tx, mut listen_rx) = watch::channel(Vec::new());
        let (swarm_tx, swarm_rx) = SwarmHandle::new();
        let event_loop = EventLoop::new(
            swarm,
            Wiring {
                cluster: config.raw.cluster.name.clone(),
                trusted_writers: config.trusted_writers.clone(),
                replica: replica.clone(),
                store: store.clone(),
                flags: flags.clone(),
                synced: synced_tx,
                outputs: outputs_rx,
                commands: swarm_rx,
                listen_tx,
                beacon_interval: config.raw.sync.beacon_interval,
                repair_delay: config.raw.sync.repair_delay,
                ipfs: backend.is_some(),
                role: role.clone(),
                peering,
                fatal: failure.clone(),
                peer_forget_after: config.raw.cluster.peer_forget_after,
                removed,
            },
        )?;

        // Each critical task that ends, for whatever reason, stops the whole agent.
        let stop = cancel.clone();
        let swarm_run = event_loop.run(dial, cancel.child_token());
        tasks.spawn(
            async move {
                swarm_run.await;
                stop.cancel();
            }
            .instrument(span.clone()),
        );
        let (reconciler, repinning) = match &backend {
            Some(backend) => {
                let cluster = &config.raw.cluster;
                let keeper = allocation::keeper::spawn(
                    KeeperSettings {
                        me: peer_id,
                        trusted_writers: config.trusted_writers.clone(),
                        repin_after: cluster.repin_after,
                        repin_rate: cluster.repin_rate,
                        check_interval: cluster.metrics_interval,
                        allocate_by: cluster.allocate_by.clone(),
                    },
                    store.clone(),
                    replica.clone(),
                    swarm_tx.clone(),
                    cancel.child_token(),
                );
                tasks.spawn(keeper.task.instrument(span.clone()));
                let ipfs = &config.raw.ipfs;
                let (handle, run) = reconcile::spawn(
                    store.clone(),
                    backend.clone(),
                    changes,
                    synced.clone(),
                    reconcile::Settings {
                        cluster: config.raw.cluster.name.clone(),
                        role: role.clone(),
                        concurrency: ipfs.concurrency,
                        limits: PinLimits {
                            stall: ipfs.pin_stall_timeout,
                            total: ipfs.pin_timeout,
                        },
                        relist_interval: ipfs.relist_interval,
                        retry_max: ipfs.retry_max,
                        retry_base: reconcile::RETRY_BASE,
                        probe_interval: reconcile::PROBE_INTERVAL,
                        release_retry: reconcile::RELEASE_RETRY,
                        storage_cap: config.follower.as_ref().and_then(|f| f.max_storage),
                    },
                    keeper.link,
                    cancel.child_token(),
                );
                let stop = cancel.clone();
                tasks.spawn(
                    async move {
                        run.await;
                        stop.cancel();
                    }
                    .instrument(span.clone()),
                );
                (Some(handle), Some(keeper.repinning))
            }
            None => {
                span.in_scope(|| {
                    info!("no IPFS node (ipfs.embedded = false, no ipfs.api): replicating the pinset only")
                });
                (None, None)
            }
        };
        // A follower announces itself instead.
        if let (Some(backend), Some(reconciler), Some(share)) =
            (&backend, &reconciler, role.share())
        {
            let settings = Announcing {
                cluster: config.raw.cluster.name.clone(),
                share,
                interval: config.raw.cluster.metrics_interval,
            };
            let announcing = announce(
                settings,
                backend.clone(),
                reconciler.clone(),
                swarm_tx.clone(),
                signer.clone(),
                cancel.child_token(),
            );
            tasks.spawn(announcing.instrument(span.clone()));
        }
        // A follower publishes no metric: it is never allocated.
        if let Some(backend) = backend.as_ref().filter(|_| !role.is_follower()) {
            let settings = MetricSettings {
                cluster: config.raw.cluster.name.clone(),
                interval: config.raw.cluster.metrics_interval,
                tags: config.raw.cluster.tags.clone().into_iter().collect(),
                storage_max: config.raw.ipfs.storage_max.map(|size| size.as_u64()),
            };
            let publish = allocation::publish_metrics(
                settings,
                backend.clone(),
                replica.clone(),
                swarm_tx.clone(),
                signer.clone(),
                cancel.child_token(),
            );
            tasks.spawn(publish.instrument(span.clone()));
        }
        tasks.spawn(
            replica::flush_periodically(replica.clone(), cancel.child_token())
                .instrument(span.clone()),
        );
        // The pinset is checked against its digest now and every `storage.scrub_interval`.
        tasks.spawn(
            scrub(
                store.clone(),
                config.raw.storage.scrub_interval,
                failure.clone(),
                cancel.child_token(),
            )
            .instrument(span.clone()),
        );

        // The listen addresses, once the swarm bound them; then the API address file.
        let ready = async {
            let addrs = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if !listen_rx.borrow().is_empty() {
                        return listen_rx.borrow().clone();
                    }
                    if listen_rx.changed().await.is_err() {
                        return Vec::new();
                    }
                }
            })
            .await
            .context("the network did not start listening within 10s")?;
            write_private(&home.api_addr(), format!("{api_addr}\n").as_bytes())?;
            anyhow::Ok(addrs)
        };
        let addrs = ready.await?;
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer_id)))
            .collect();
        let state = ApiState {
            replica: replica.clone(),
            store,
            swarm: swarm_tx.clone(),
            flags: flags.clone(),
            synced: synced.clone(),
            reconciler: reconciler.clone(),
            repinning,
            ipfs: backend.clone(),
            add_timeout: config.raw.ipfs.pin_timeout,
            writer: config.trusted_writers.is_empty() || config.trusted_writers.contains(&peer_id),
            follow: Arc::new(api::FollowSource {
                secret: config.raw.cluster.secret.trim().to_string(),
                trusted_writers: {
                    let mut writers: Vec<PeerId> = config.trusted_writers.iter().copied().collect();
                    writers.sort();
                    writers
                },
                signer: signer.clone(),
            }),
            token: token.into(),
            cluster: config.raw.cluster.name.clone().into(),
            peer_id,
            role: Arc::new(role),
            allocation: Arc::new(allocation::Policy {
                replication: (
                    config.raw.cluster.replication_min,
                    config.raw.cluster.replication_max,
                ),
                allocate_by: config.raw.cluster.allocate_by.clone(),
            }),
            listings: Arc::new(tokio::sync::Semaphore::new(config.raw.api.max_listings)),
            max_listings: config.raw.api.max_listings,
            tasks: tasks.clone(),
        };
        let router = api::router(state.clone());
        let api_cancel = cancel.child_token();
        let stop = cancel.clone();
        let limits = http::Limits {
            max_connections: config.raw.api.max_connections,
            header_timeout: config.raw.api.header_timeout,
            send_timeout: config.raw.api.send_timeout,
            drain: API_DRAIN,
        };
        let stats = Arc::new(http::ServerStats::default());
        tasks.spawn(
            async move {
                http::serve(listener, router, limits, stats, api_cancel).await;
                stop.cancel();
            }
            .instrument(span.clone()),
        );
        if let Some(listener) = follow_listener {
            let (router, stop) = (api::follow_router(state), cancel.child_token());
            let stats = Arc::new(http::ServerStats::default());
            span.in_scope(|| {
                info!(addr = ?follow_config_addr, "serving the follow configuration (it holds the cluster's secret)")
            });
            tasks
                .spawn(http::serve(listener, router, limits, stats, stop).instrument(span.clone()));
        }
        tasks.close();
        span.in_scope(|| info!(%api_addr, "agent started"));
        Ok(NodeHandle {
            peer_id,
            addrs,
            api_addr,
            follow_config_addr,
            home,
            replica,
            flags,
            synced,
            swarm: swarm_tx,
            cancel,
            tasks,
            failure,
            backend,
        })
    }
}

impl NodeHandle {
    /// A client of this agent's API.
    pub fn client(&self) -> anyhow::Result<api::client::Client> {
        Ok(api::client::Client::new(
            format!("http://{}", self.api_addr),
            self.home.load_token()?,
        ))
    }

    /// Stops the agent: API and swarm first, so nothing new reaches the replica; the replica
    /// then drains its queue, makes its last commit and stops once the last handle is gone
    /// (ours included); the store closes with it. Safe to drop instead, but then queued
    /// commands may be cut short (never a torn commit).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let tasks = self.tasks.clone();
        let backend = self.backend.take();
        drop(self);
        tasks.wait().await;
        // Nothing calls the IPFS node any more (API, reconciler, peering are done).
        if let Some(backend) = backend {
            backend.stop().await;
        }
    }

    /// Whether the agent has caught up with its peers.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Why the agent stopped by itself, when a critical part said so (a full disk): the
    /// handle outlives the node, for reading after `shutdown`.
    pub fn fatal(&self) -> Fatal {
        self.failure.clone()
    }

    /// Resolves when the agent is stopping: asked to, or a critical task ended.
    pub async fn stopped(&self) {
        self.cancel.cancelled().await;
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Settings that work but that an operator most likely does not want.
fn warn_about(config: &crate::config::Validated) {
    if config.secret == [0u8; 32] {
        warn!(
            "cluster.secret is all zeros (as in config/example.toml): anyone can join this \
             cluster; make one with `pinmesh init` and give it to every member"
        );
    }
    if !config.api_listen.ip().is_loopback() {
        warn!(
            api = %config.api_listen,
            "the control API does not listen on loopback: whoever reaches it with the token \
             controls the agent, and anyone can open connections to it"
        );
    }
}

/// What to dial at start, and which peers to refuse: the `bootstrap` addresses and those of
/// every remembered peer in `known`, less this agent's own (`me`) and those of peers removed
/// with `peers rm`, which are returned apart.
fn start_dials(
    bootstrap: Vec<Multiaddr>,
    known: Vec<(PeerId, PeerRecord)>,
    me: &PeerId,
) -> (Vec<Multiaddr>, HashSet<PeerId>) {
    let removed: HashSet<PeerId> = (known.iter())
        .filter(|(_, record)| record.removed)
        .map(|(peer, _)| *peer)
        .collect();
    let mut dial = bootstrap;
    for (peer, record) in known {
        dial.extend(
            record
                .addrs
                .into_iter()
                .map(|addr| crate::net::with_peer(addr, &peer)),
        );
    }
    dial.retain(|a| match a.iter().last() {
        Some(Protocol::P2p(p)) => p != *me && !removed.contains(&p),
        _ => true,
    });
    (dial, removed)
}

fn short(peer: &PeerId) -> String {
    let s = peer.to_string();
    s[s.len().saturating_sub(6)..].to_string()
}

mod tasks;
use self::tasks::{Announcing, announce, scrub, start_backend};

#[cfg(test)]
mod tests;
