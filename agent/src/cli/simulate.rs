//! `pinmesh simulate`: drives the protocol simulator and checks the result against the oracle.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use pinmesh_protocol::sim::{Sim, SimConfig, oracle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of replicas.
    #[arg(long, default_value_t = 32)]
    replicas: usize,
    /// Operations to issue (pins, updates, unpins).
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Probability that a message is lost, 0 to 0.9.
    #[arg(long, default_value_t = 0.3)]
    loss: f64,
    /// Probability that a message is delivered twice.
    #[arg(long, default_value_t = 0.1)]
    duplicate: f64,
    /// Cut the replicas in two halves for this many ticks (0: no partition).
    #[arg(long, default_value_t = 400)]
    partition_ticks: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: Args, json: bool) -> anyhow::Result<ExitCode> {
    if !(0.0..=0.9).contains(&args.loss) || !(0.0..=1.0).contains(&args.duplicate) {
        bail!("--loss must be within 0..=0.9 and --duplicate within 0..=1");
    }
    if args.replicas < 2 || args.ops == 0 {
        bail!("need at least 2 replicas and 1 operation");
    }
    let cfg = SimConfig {
        seed: args.seed,
        replicas: args.replicas,
        ops: args.ops,
        ops_per_tick: 20,
        cids: (args.ops / 6).max(10),
        loss: args.loss,
        duplicate: args.duplicate,
        max_delay: 6,
        partition: (args.partition_ticks > 0).then_some((100, 100 + args.partition_ticks)),
        full_join_every: 50,
        beacon_interval: 20,
        repair_delay: 8,
        rpc_loss: args.loss / 3.0,
        request_timeout: 14,
        snapshot_threshold: 5_000,
        log_keep: 150,
        ..SimConfig::default()
    };
    let started = Instant::now();
    let mut sim = Sim::new(cfg);
    let report = sim.run().clone();
    let expected = oracle(&sim.history, &sim.seen);
    let agree = sim.replicas.iter().all(|r| {
        r.pinset.head().digest == sim.replicas[0].pinset.head().digest
            && r.pinset.sorted().len() == expected.len()
    });
    let converged = report.converged_at.is_some() && agree;
    if json {
        let out = serde_json::json!({
            "converged": converged,
            "converged_at_tick": report.converged_at,
            "last_op_tick": report.last_op_at,
            "pins": expected.len(),
            "messages_sent": report.sent,
            "messages_dropped": report.dropped,
            "repair_requests": report.repair_requests,
            "truncated_answers": report.truncated,
            "snapshot_catchups": report.snapshot_catchups,
            "state_digest": sim.replicas[0].pinset.head().digest.to_hex(),
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        println!("{out}");
    } else {
        println!(
            "{} replicas, {} ops, {:.0}% loss: {} messages, {} dropped, {} repair requests, \
             {} truncated answers, {} snapshot catch-ups",
            args.replicas,
            args.ops,
            args.loss * 100.0,
            report.sent,
            report.dropped,
            report.repair_requests,
            report.truncated,
            report.snapshot_catchups
        );
        match report.converged_at {
            Some(tick) if agree => println!(
                "CONVERGED at tick {tick} (last op at tick {}): {} pins, state digest {} ({:.1}s)",
                report.last_op_at,
                expected.len(),
                sim.replicas[0].pinset.head().digest,
                started.elapsed().as_secs_f64()
            ),
            _ => println!("DIVERGED"),
        }
    }
    Ok(if converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
