//! What the agent starts beside its core: the IPFS node it pins in, and the periodic scrub of
//! its database.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::config::Validated;
use crate::fatal::Fatal;
use crate::home::Home;
use crate::ipfs::PinBackend;
use crate::ipfs::embedded::{EmbeddedBackend, EmbeddedOptions};
use crate::ipfs::kubo::KuboBackend;
use crate::store::Store;

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
