//! What the agent starts beside its core: the IPFS node it pins in, the periodic scrub of its
//! database, and a follower's announcements.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use pinmesh_protocol::announce::Standing;
use pinmesh_protocol::share::Share;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info};

use crate::config::Validated;
use crate::fatal::Fatal;
use crate::home::Home;
use crate::ipfs::PinBackend;
use crate::ipfs::embedded::{EmbeddedBackend, EmbeddedOptions};
use crate::ipfs::kubo::KuboBackend;
use crate::reconcile::ReconcilerHandle;
use crate::replica::NodeSigner;
use crate::store::Store;
use crate::swarm::{Announcement, SwarmHandle};

/// The IPFS node the config names: Kubo over RPC, the embedded node (started here: a repo
/// that cannot be opened or a port that cannot be listened on fails the start), or none.
pub(super) async fn start_backend(
    config: &Validated,
    home: &Home,
    span: &tracing::Span,
) -> anyhow::Result<Option<Arc<dyn PinBackend>>> {
    let ipfs = &config.raw.ipfs;
    Ok(match &ipfs.api {
        Some(url) => Some(Arc::new(
            KuboBackend::new(url, ipfs.auth.as_deref(), ipfs.call_timeout)
                .map_err(|m| anyhow!(m))?,
        )),
        None if ipfs.embedded => {
            let node = EmbeddedBackend::start(EmbeddedOptions {
                dir: home.ipfs_dir(),
                listen: config.ipfs_listen.clone(),
                call_timeout: ipfs.call_timeout,
            })
            .instrument(span.clone())
            .await?;
            span.in_scope(|| info!(node = %node.describe(), "embedded IPFS node started"));
            Some(Arc::new(node))
        }
        None => None,
    })
}

/// Checks the stored pinset against its digest at start and every `interval`; a mismatch (or a
/// read that fails or panics) stops the agent with the way to recover. Dropping it is safe.
pub(super) async fn scrub(
    store: Store,
    interval: Duration,
    fatal: Fatal,
    cancel: CancellationToken,
) {
    loop {
        let started = std::time::Instant::now();
        let checking = store.clone();
        let found = tokio::task::spawn_blocking(move || checking.scrub()).await;
        let damage = match found {
            Ok(Ok(pins)) => {
                info!(
                    pins,
                    ms = started.elapsed().as_millis() as u64,
                    "pinset verified"
                );
                None
            }
            Ok(Err(err)) => Some(err.to_string()),
            Err(err) => Some(format!("reading it failed: {err}")),
        };
        if let Some(damage) = damage {
            fatal.damaged(&damage);
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// What a follower's announcements say besides its standing.
pub(super) struct Announcing {
    pub cluster: String,
    pub share: Option<Share>,
    pub interval: Duration,
}

/// Announces this follower every interval until `cancel`: its share, the pins its node holds,
/// the bytes its repo uses and the pins it skipped.
pub(super) async fn announce(
    settings: Announcing,
    backend: Arc<dyn PinBackend>,
    reconciler: ReconcilerHandle,
    swarm: SwarmHandle,
    signer: NodeSigner,
    cancel: CancellationToken,
) {
    let mut every = tokio::time::interval(settings.interval);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        let bytes = match backend.repo_stat().await {
            Ok(stat) => stat.repo_size,
            Err(err) => {
                debug!(error = %err, "no announcement: the IPFS node did not answer");
                continue;
            }
        };
        let report = reconciler.report();
        seq = crate::allocation::next_seq(seq);
        let standing = Standing {
            seq,
            ttl_ms: crate::allocation::ttl_ms(settings.interval),
            share: settings.share,
            pins: report.node_pins,
            bytes,
            skipped: report.skipped,
        };
        let announcement = Announcement::sign(&signer, &settings.cluster, standing);
        if swarm.announce(announcement).await.is_err() {
            break;
        }
    }
}
