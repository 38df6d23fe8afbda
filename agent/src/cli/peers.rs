//! `pinmesh id`, `pinmesh join`, `pinmesh peers ls|add|rm`.

use std::process::ExitCode;

use clap::Subcommand;

use super::{Ctx, print_json};
use crate::config::parse_peer_addr;
use crate::swarm::{FollowerView, PeerMetric};

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The peer's address, ending in /p2p/<peer id>.
    #[arg(value_parser = parse_peer_addr)]
    addr: libp2p::Multiaddr,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The peer's id.
    #[arg(value_parser = parse_peer)]
    peer: libp2p::PeerId,
}

fn parse_peer(text: &str) -> Result<libp2p::PeerId, String> {
    text.parse::<libp2p::PeerId>()
        .map_err(|_| format!("{text:?} is not a peer id"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every peer this agent knows, connected or not.
    Ls,
    /// Connect to a peer now and remember it (as `join`); undoes `peers rm` of that peer.
    Add(JoinArgs),
    /// Forget a peer: disconnect it and refuse it from now on (across restarts), drop its
    /// metric so allocation no longer chooses it; `peers add` undoes it.
    Rm(RmArgs),
}

pub async fn id(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let id = ctx.client()?.id().await?;
    if ctx.json {
        print_json(&id)?;
    } else {
        println!("peer id: {}", id.peer_id);
        println!("cluster: {}", id.cluster);
        println!("version: {}", id.version);
        for addr in &id.addresses {
            println!("address: {addr}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn join(ctx: &Ctx, args: JoinArgs) -> anyhow::Result<ExitCode> {
    let answer = ctx.client()?.join(&args.addr.to_string()).await?;
    if ctx.json {
        print_json(&answer)?;
    } else {
        println!("connected to {}", answer["peer_id"].as_str().unwrap_or("?"));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add(args) => join(ctx, args).await,
        Command::Rm(args) => {
            let answer = ctx.client()?.remove_peer(&args.peer.to_string()).await?;
            if ctx.json {
                print_json(&answer)?;
            } else {
                println!("removed {}", args.peer);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls => {
            let info = ctx.client()?.peers().await?;
            if ctx.json {
                for peer in &info.peers {
                    print_json(peer)?;
                }
            } else {
                let addr = info.listen.first().map_or("-".into(), ToString::to_string);
                let metric = metric_text(info.metric.as_ref());
                println!("{}  self  {addr}  {metric}", info.peer_id);
                for peer in &info.peers {
                    let state = if peer.connected { "connected" } else { "known" };
                    let addr = peer.addrs.first().map_or("-".into(), ToString::to_string);
                    let standing = match &peer.follower {
                        Some(follower) => follower_text(follower),
                        None => metric_text(peer.metric.as_ref()),
                    };
                    println!("{}  {state}  {addr}  {standing}", peer.peer_id);
                }
                let followers = info.peers.iter().filter(|p| p.follower.is_some()).count();
                let mut summary = format!("{} peers", info.peers.len() - followers);
                if followers > 0 {
                    summary.push_str(&format!(" and {followers} followers"));
                }
                if info.foreign_peers > 0 {
                    summary.push_str(&format!(
                        "; {} of another cluster refused (same secret, another cluster name: \
                         see the log)",
                        info.foreign_peers
                    ));
                }
                if !info.removed.is_empty() {
                    summary.push_str(&format!(
                        "; {} removed (peers rm), not shown",
                        info.removed.len()
                    ));
                }
                if let Some(r) = &info.repinning {
                    summary.push_str(&format!("; {}", repinning_text(r)));
                }
                eprintln!("{summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What the keeper last saw, in a few words.
fn repinning_text(r: &crate::swarm::Repinning) -> String {
    let alive = format!("{} of {} allocatable peers alive", r.live, r.allocatable);
    let mut text = if r.paused {
        format!("repinning paused: {alive} (fewer than half)")
    } else if let Some(ms) = r.resumes_in_ms {
        let left = humantime::format_duration(std::time::Duration::from_secs(ms.div_ceil(1000)));
        format!("repinning resumes in {left}: {alive} again")
    } else {
        format!("repinning on: {alive}")
    };
    if r.lost > 0 {
        text.push_str(&format!(", {} lost", r.lost));
    }
    if r.repinned > 0 {
        text.push_str(&format!(", {} pins repinned since start", r.repinned));
    }
    text
}

/// A follower's latest announcement in one column: its share, pins, bytes, skipped pins.
fn follower_text(f: &FollowerView) -> String {
    let age = humantime::format_duration(std::time::Duration::from_secs(f.age_ms / 1000));
    let share = f.share.map_or("all pins".into(), |s| format!("share {s}"));
    let mut text = format!(
        "follower  {share}  pins {}  {}",
        f.pins,
        bytesize::ByteSize::b(f.bytes)
    );
    if f.skipped > 0 {
        text.push_str(&format!("  skipped {}", f.skipped));
    }
    if !f.live {
        text.push_str("  down");
    }
    text.push_str(&format!("  (announced {age} ago)"));
    text
}

/// A peer's latest metric in one column: free space, pins, tags and age, or why there is none.
fn metric_text(metric: Option<&PeerMetric>) -> String {
    let Some(m) = metric else {
        return "no metric (no IPFS node, or not heard yet)".into();
    };
    let age = humantime::format_duration(std::time::Duration::from_secs(m.age_ms / 1000));
    let mut text = if m.live {
        format!("free {}  pins {}", bytesize::ByteSize::b(m.free), m.pins)
    } else {
        "down".to_string()
    };
    for (name, value) in &m.tags {
        text.push_str(&format!("  {name}={value}"));
    }
    text.push_str(&format!("  (metric {age} ago)"));
    text
}
