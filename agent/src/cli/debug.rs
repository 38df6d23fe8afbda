//! `pinmesh debug digest|peers|converge|state`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::{Ctx, print_json};
use crate::api::PeersReport;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// This agent's pin count, applied and state digests, and whether it is synced.
    Digest,
    /// How every known peer compares with this agent; ends with CONVERGED or DIVERGED (among
    /// connected peers).
    Peers,
    /// Wait until every connected peer reports this agent's digests.
    Converge {
        /// Give up after this long, like "30s".
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Dump the CRDT head and the delta log's ranges.
    State,
    /// What the reconciler is doing: the node's state, queues, the last full comparison.
    Reconciler,
}

pub async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match command {
        Command::Reconciler => {
            let r = client.reconciler().await?;
            if ctx.json {
                print_json(&r)?;
            } else {
                println!(
                    "node {}  pins {}  queued {}  running {}  retrying {}  unpins waiting for sync {}",
                    if r.node_down { "DOWN" } else { "up" },
                    r.node_pins,
                    r.queued,
                    r.running,
                    r.retrying,
                    r.waiting_for_sync
                );
                println!(
                    "last full comparison: listed in {} ms, compared in {} ms, {} CIDs to look at ({} so far)",
                    r.last_listed_ms, r.last_compared_ms, r.last_to_check, r.cycles
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Digest => {
            let d = client.digest().await?;
            if ctx.json {
                print_json(&d)?;
            } else {
                println!("peer id:        {}", d.peer_id);
                println!("pins:           {}", d.pins);
                println!("applied digest: {}", d.applied_digest);
                println!("state digest:   {}", d.state_digest);
                println!("synced:         {}", d.synced);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers => {
            let report = client.debug_peers().await?;
            if ctx.json {
                print_json(&report)?;
            } else {
                print_peers(&report);
            }
            Ok(if report.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Converge { timeout } => {
            let started = Instant::now();
            loop {
                client.refresh().await?;
                // Give the status answers a moment; this is a user-facing wait, not a test.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let report = client.debug_peers().await?;
                if report.converged {
                    let elapsed = started.elapsed();
                    if ctx.json {
                        print_json(&serde_json::json!({
                            "converged": true,
                            "elapsed_ms": elapsed.as_millis() as u64,
                            "peers": report.peers.len(),
                        }))?;
                    } else {
                        println!(
                            "CONVERGED with {} peers in {:.2}s",
                            report.peers.len(),
                            elapsed.as_secs_f64()
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                if started.elapsed() >= timeout {
                    if ctx.json {
                        print_json(&report)?;
                    } else {
                        print_peers(&report);
                        println!(
                            "not converged after {}",
                            humantime::format_duration(timeout)
                        );
                    }
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::State => {
            let state = client.state().await?;
            if ctx.json {
                print_json(&state)?;
            } else {
                println!(
                    "actor {} (incarnation {}), counter {}",
                    state.actor, state.incarnation, state.counter
                );
                println!("pins {}, state digest {}", state.pins, state.state_digest);
                println!("applied digest {}", state.applied_digest);
                for (origin, ranges) in &state.applied {
                    println!("  applied {origin}: {}", ranges_text(ranges));
                }
                for (actor, ranges) in &state.context {
                    println!("  context {actor}: {}", ranges_text(ranges));
                }
                for (origin, (first, last, batches)) in &state.log {
                    println!("  log {origin}: {first}..={last} in {batches} batches");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ranges_text(ranges: &[(u64, u64)]) -> String {
    ranges
        .iter()
        .map(|(s, e)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}..={e}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_peers(report: &PeersReport) {
    println!(
        "me {}  pins {}  applied {}  state {}  synced {}",
        report.me.peer_id,
        report.me.pins,
        &report.me.applied_digest[..16],
        &report.me.state_digest[..16],
        report.me.synced
    );
    for p in &report.peers {
        let heard = p.last_heard_ms.map_or("never".to_string(), |ms| {
            format!("{:.1}s ago", ms as f64 / 1000.0)
        });
        let verdict = if p.applied_match && p.state_match {
            "equal"
        } else {
            "differs"
        };
        println!(
            "{}  {}  heard {heard}  pins {}  {verdict}",
            p.peer_id,
            if p.connected {
                "connected"
            } else {
                "disconnected"
            },
            p.pins.map_or("?".into(), |n| n.to_string()),
        );
        for (origin, cmp) in &p.origins {
            if !matches!(cmp, pinmesh_protocol::Comparison::Equal) {
                println!("    origin {origin}: this agent is {cmp:?}");
            }
        }
    }
    if report.converged {
        println!("CONVERGED");
    } else {
        println!("DIVERGED ({} peers)", report.diverged);
    }
}
