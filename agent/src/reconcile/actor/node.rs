//! The actor's dealings with the node as a whole: listing it and comparing the pinset with the
//! listing, knowing it down, and probing until it is back.

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Reconciler;
use crate::ipfs::IpfsError;
use crate::reconcile::cycle::list_node;
use crate::reconcile::decide::{self, wanted_of};
use crate::replica::now_ms;

impl Reconciler {
    /// Lists the node, then compares the whole pinset and every status with it.
    pub(super) async fn full_cycle(&mut self) {
        self.listing.next_full = Instant::now() + self.settings.relist_interval;
        let started = Instant::now();
        if let Err(err) = self.relist().await {
            warn!(error = %err, "cannot list the IPFS node's pins; will retry");
            self.listing.next_full = Instant::now() + self.settings.probe_interval;
            return;
        }
        let listed = started.elapsed();
        let (actual, found) = self.records.compare(std::mem::take(&mut self.actual)).await;
        self.actual = actual;
        match found {
            Ok(found) => {
                let cids = found.check;
                let now_secs = now_ms() / 1000;
                let (passed, later): (Vec<_>, Vec<_>) = found
                    .expiring
                    .into_iter()
                    .partition(|(at, _)| *at <= now_secs);
                self.expiries.extend(later);
                if !passed.is_empty() {
                    // Expired while this agent was away, or not removed yet.
                    self.cluster
                        .expired(passed.into_iter().map(|(_, cid)| cid).collect());
                }
                let compared = started.elapsed() - listed;
                self.listing.cost = started.elapsed();
                self.listing.done = Some(Instant::now());
                self.cycle.cycles += 1;
                self.cycle.last_listed_ms = listed.as_millis() as u64;
                self.cycle.last_compared_ms = compared.as_millis() as u64;
                self.cycle.last_to_check = cids.len() as u64;
                info!(
                    node_pins = self.actual.len(),
                    to_check = cids.len(),
                    listed_ms = listed.as_millis() as u64,
                    compared_ms = compared.as_millis() as u64,
                    "compared the pinset with the IPFS node"
                );
                let now = Instant::now();
                for cid in cids {
                    self.queue.enqueue(cid, false, now);
                }
            }
            Err(err) => warn!(error = %err, "cannot compare the pinset with the node"),
        }
    }

    /// Replaces `actual` with a fresh listing of the node's recursive and direct pins.
    pub(super) async fn relist(&mut self) -> Result<(), IpfsError> {
        let started = Instant::now();
        match list_node(self.backend.as_ref()).await {
            Ok(actual) => {
                self.actual = actual;
                self.listing.started = Some(started);
                self.listing.took = started.elapsed();
                self.cycle.last_listed_ms = self.listing.took.as_millis() as u64;
                Ok(())
            }
            Err(err) => {
                if err.node_down() {
                    self.node_down(&err);
                }
                Err(err)
            }
        }
    }

    /// Asks a node that was down whether it is back; if so, retries everything waiting.
    pub(super) async fn probe(&mut self) {
        match self.backend.id().await {
            Ok(_) => {
                info!(backend = %self.backend.describe(), "IPFS node is back");
                let now = Instant::now();
                self.health.back(now);
                self.queue.promote_all(now);
                // It may have lost or gained pins while away.
                self.listing.next_full = now;
            }
            Err(err) => debug!(error = %err, "IPFS node still down"),
        }
    }

    /// The node did not answer a listing.
    pub(super) fn node_down(&mut self, err: &IpfsError) {
        let (now, probe) = (Instant::now(), self.settings.probe_interval);
        if self.health.went_down(err, now, probe) {
            self.warn_down();
        }
    }

    pub(super) fn warn_down(&self) {
        warn!(backend = %self.backend.describe(), "IPFS node is down; waiting for it");
    }

    /// While the node is down, queued pins show the node's error (no call is made) and wait
    /// with the retries, which all go when the node is back.
    pub(super) async fn fail_queued(&mut self) {
        let cids = self.queue.drain();
        if cids.is_empty() {
            return;
        }
        let error = (self.health.error.clone()).unwrap_or_else(|| "IPFS node is down".into());
        match self.records.read(cids.clone()).await {
            Ok(stored) => {
                let now_ms = now_ms();
                // One that cannot be read keeps its record; it waits with the others.
                for (cid, read) in cids.iter().zip(stored) {
                    let Ok(stored) = read else { continue };
                    let versions = stored.versions.as_deref();
                    let wanted = versions
                        .and_then(|v| wanted_of(cid, v, now_ms / 1000, self.records.role()))
                        .is_some();
                    if let Some(state) = decide::node_down(wanted, stored.state, &error, now_ms) {
                        self.records.record(*cid, state);
                    }
                }
            }
            Err(err) => warn!(error = %err, "cannot read pins to show the node's error"),
        }
        let at = Instant::now() + self.settings.retry_max;
        for cid in cids {
            self.queue.retry_at(cid, at);
        }
    }
}
