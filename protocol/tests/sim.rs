//! Simulator runs: many replicas, a hostile network, a partition that heals, each replica driven
//! by the agent's own catch-up state machine. After catch-up every replica must hold exactly what
//! the operation history says, by every measure we have, and say it is synced.

use pinmesh_protocol::sim::{Report, Sim, SimConfig, oracle};

fn check_converged(seed: u64, cfg: SimConfig) -> Report {
    let mut sim = Sim::new(SimConfig { seed, ..cfg });
    let report = sim.run().clone();
    assert!(
        report.converged_at.is_some(),
        "seed {seed}: replicas did not converge: {report:?}"
    );
    let expected = oracle(&sim.history, &sim.seen);
    let first = &sim.replicas[0].pinset;
    for (i, replica) in sim.replicas.iter().enumerate() {
        let head = replica.pinset.head();
        assert_eq!(
            head.applied.digest(),
            first.head().applied.digest(),
            "seed {seed}: replica {i} applied digest"
        );
        assert_eq!(
            head.digest,
            first.head().digest,
            "seed {seed}: replica {i} state digest"
        );
        assert_eq!(
            head.digest,
            replica.pinset.recompute_digest(),
            "seed {seed}: replica {i}: incremental digest drifted from the entries"
        );
        assert_eq!(
            head.pins as usize,
            expected.len(),
            "seed {seed}: replica {i} pin count"
        );
        let actual: Vec<(Vec<u8>, Vec<_>)> = replica
            .pinset
            .sorted()
            .into_iter()
            .map(|(cid, versions)| (cid.to_bytes(), versions))
            .collect();
        let wanted: Vec<(Vec<u8>, Vec<_>)> = expected.clone().into_iter().collect();
        assert!(
            actual == wanted,
            "seed {seed}: replica {i} differs from the oracle"
        );
    }
    // The run must have been hostile, or it proves nothing.
    assert!(report.dropped > report.sent / 5, "{report:?}");
    assert!(
        report.duplicated > 0 && report.repair_requests > 0,
        "{report:?}"
    );
    assert!(report.snapshots > 0, "no full-state join ran: {report:?}");
    assert_eq!(report.snapshot_failures, 0, "{report:?}");
    for (i, replica) in sim.replicas.iter().enumerate() {
        assert!(
            replica.catchup.synced(),
            "seed {seed}: replica {i} not synced"
        );
    }
    eprintln!("seed {seed}: {report:?}, {} pins", expected.len());
    report
}

/// A big run must have taken every catch-up path: repairs, `Truncated` answers from pruned
/// logs, and snapshots (late joiners, replicas far behind after the partition).
fn check_big(seed: u64) {
    let report = check_converged(seed, big());
    assert!(report.truncated > 0, "no Truncated answer: {report:?}");
    assert!(
        report.snapshot_catchups >= 2,
        "late joiners did not catch up by snapshot: {report:?}"
    );
}

fn big() -> SimConfig {
    SimConfig {
        replicas: 34,
        late_joiners: 2,
        join_at: 900,
        full_join_every: 25,
        ops: 20_000,
        ops_per_tick: 20,
        cids: 3_000,
        loss: 0.3,
        duplicate: 0.1,
        max_delay: 6,
        partition: Some((300, 700)),
        beacon_interval: 20,
        repair_delay: 8,
        max_batch: 64,
        flush_every: 3,
        rpc_loss: 0.1,
        request_timeout: 14,
        snapshot_threshold: 5_000,
        log_keep: 150,
        settle_ticks: 3_000,
        ..SimConfig::default()
    }
}

#[test]
fn thirty_two_replicas_twenty_thousand_ops_seed_1() {
    check_big(1);
}

#[test]
fn thirty_two_replicas_twenty_thousand_ops_seed_2() {
    check_big(2);
}

#[test]
fn thirty_two_replicas_twenty_thousand_ops_seed_3() {
    check_big(3);
}

#[test]
fn many_small_seeds_with_heavy_conflicts() {
    for seed in 10..40 {
        check_converged(
            seed,
            SimConfig {
                replicas: 6,
                late_joiners: 1,
                join_at: 40,
                full_join_every: 5,
                ops: 400,
                ops_per_tick: 8,
                cids: 12,
                loss: 0.4,
                duplicate: 0.2,
                max_delay: 8,
                partition: Some((10, 60)),
                ..SimConfig::default()
            },
        );
    }
}
