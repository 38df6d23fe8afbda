//! Publishing this agent's allocation metric.
//!
//! Every `cluster.metrics_interval`: the node's `repo/stat`, the free space of the repo's
//! filesystem when the repo is on this machine, the pin count the replica keeps, and the
//! configured tags, signed and handed to the swarm. When the node does not answer, nothing is
//! published: the last metric expires and peers stop allocating to this agent until the node
//! is back.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pinmesh_protocol::metric::{MAX_TTL_MS, MIN_TTL_MS, Metric, Reading};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ipfs::{PinBackend, RepoStat};
use crate::replica::{NodeSigner, ReplicaHandle};
use crate::swarm::SwarmHandle;

/// A metric holds for this many intervals: two lost in a row do not take a peer down.
const TTL_INTERVALS: u32 = 3;

/// What goes into the metric besides what the node and the replica say.
#[derive(Debug, Clone)]
pub struct MetricSettings {
    pub cluster: String,
    pub interval: Duration,
    pub tags: Vec<(String, String)>,
    /// `ipfs.storage_max`: replaces the node's own limit.
    pub storage_max: Option<u64>,
}

/// Bytes free for pins: the storage limit (configured, or the node's own; 0 is none) less what
/// the repo holds, and never more than the free space of the repo's filesystem when that is
/// known. Kubo's `StorageMax` is a garbage-collection watermark, not the disk, so the smaller
/// of the two counts. With neither known, nothing is free.
pub fn free_for_pins(stat: &RepoStat, storage_max: Option<u64>, fs_free: Option<u64>) -> u64 {
    let limit = storage_max.unwrap_or(stat.storage_max);
    let by_limit = (limit > 0).then(|| limit.saturating_sub(stat.repo_size));
    match (by_limit, fs_free) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 0,
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`, if it is on
/// this machine.
fn filesystem_free(path: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// How long a metric published every `interval` holds.
pub fn ttl_ms(interval: Duration) -> u64 {
    let ttl = (interval * TTL_INTERVALS).as_millis() as u64;
    ttl.clamp(MIN_TTL_MS, MAX_TTL_MS)
}

/// The `seq` of a signed message published after one of `last`: the clock in milliseconds,
/// and always more than the last.
pub fn next_seq(last: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now_ms.max(last + 1)
}

/// Publishes this agent's metric every interval until `cancel`.
pub async fn publish_metrics(
    settings: MetricSettings,
    backend: Arc<dyn PinBackend>,
    replica: ReplicaHandle,
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
        let stat = match backend.repo_stat().await {
            Ok(stat) => stat,
            Err(err) => {
                debug!(error = %err, "no metric published: the IPFS node did not answer");
                continue;
            }
        };
        let fs_free = match stat.path.clone() {
            Some(path) => tokio::task::spawn_blocking(move || filesystem_free(&path))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        seq = next_seq(seq);
        let reading = Reading {
            seq,
            ttl_ms: ttl_ms(settings.interval),
            free: free_for_pins(&stat, settings.storage_max, fs_free),
            pins: replica.state().allocated,
            tags: settings.tags.clone(),
        };
        let metric = Metric::sign(&signer, &settings.cluster, reading);
        if swarm.publish_metric(metric).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(repo_size: u64, storage_max: u64) -> RepoStat {
        RepoStat {
            repo_size,
            storage_max,
            path: None,
        }
    }

    #[test]
    fn free_space_is_the_smaller_of_the_limit_left_and_the_disk() {
        const GB: u64 = 1 << 30;
        // Kubo's default watermark of 10 GB, 4 used, a disk with 100 free.
        assert_eq!(
            free_for_pins(&stat(4 * GB, 10 * GB), None, Some(100 * GB)),
            6 * GB
        );
        // A huge watermark (js-ipfs sends 2^53-1): the disk decides.
        assert_eq!(
            free_for_pins(&stat(GB, (1 << 53) - 1), None, Some(3 * GB)),
            3 * GB
        );
        // The configured limit replaces the node's; the embedded node has none of its own.
        assert_eq!(free_for_pins(&stat(GB, 0), Some(2 * GB), Some(50 * GB)), GB);
        assert_eq!(
            free_for_pins(&stat(GB, 10 * GB), Some(5 * GB), None),
            4 * GB
        );
        // Over the limit: nothing free, not a wrap-around.
        assert_eq!(free_for_pins(&stat(12 * GB, 10 * GB), None, Some(GB)), 0);
        // No limit and a repo on another machine: nothing known, nothing offered.
        assert_eq!(free_for_pins(&stat(GB, 0), None, None), 0);
        assert_eq!(free_for_pins(&stat(GB, 0), None, Some(7 * GB)), 7 * GB);
    }

    #[test]
    fn a_metric_holds_for_three_intervals_within_the_protocols_bounds() {
        assert_eq!(ttl_ms(Duration::from_secs(10)), 30_000);
        assert_eq!(ttl_ms(Duration::from_millis(100)), MIN_TTL_MS);
        assert_eq!(ttl_ms(Duration::from_secs(3600)), MAX_TTL_MS);
    }

    #[test]
    fn the_free_space_of_this_machines_filesystem_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(filesystem_free(dir.path()).is_some());
        assert_eq!(filesystem_free(&dir.path().join("missing")), None);
    }
}
