//! `pinmesh run`: the daemon.

use std::process::ExitCode;

use anyhow::Context;

use super::Ctx;
use crate::config::parse_peer_addr;
use crate::node::{Node, Start};

/// Log filter when `PINMESH_LOG` is unset: lifecycle at info; libp2p crates only when
/// something is wrong (Kademlia complains at every periodic bootstrap of a lone agent); the
/// embedded IPFS node's crates likewise (the agent logs the node's start itself).
const DEFAULT_LOG: &str =
    "info,libp2p_kad=error,libp2p_swarm=warn,libp2p_gossipsub=warn,rust_ipfs=warn,connexa=warn";

/// Creates the home first (a new cluster) when DIR has no config.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A member to dial at start, ending in /p2p/<peer id>; repeat for several.
    #[arg(long = "bootstrap", value_name = "MULTIADDR", value_parser = parse_peer_addr)]
    bootstrap: Vec<libp2p::Multiaddr>,
    /// Recover from a damaged database: keep it aside as pinmesh.redb.damaged-<time>, start
    /// with a fresh one that rejoins the cluster from its peers (by snapshot), carrying over the
    /// records of pins this agent made in its IPFS node and the remembered peers.
    #[arg(long)]
    resync: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if !ctx.home.config().exists() {
        // Never over an existing agent: a lost config.toml must not cost the agent its
        // identity, token and peers (init refuses with one line naming what it found).
        let found = ctx.home.agent_files();
        if !found.is_empty() {
            anyhow::bail!(
                "{} has no config.toml but holds an agent's files ({}); restore config.toml \
                 (nothing was changed)",
                ctx.home.config().display(),
                found.join(", ")
            );
        }
        // A fresh machine: make a new single-agent cluster rather than fail.
        let made = crate::home::init(&ctx.home, crate::home::InitOptions::default())?;
        super::init::report(ctx, &made)?;
        println!();
    }
    if args.resync {
        resync(ctx, !args.bootstrap.is_empty())?;
    }
    serve(ctx, args.bootstrap)
}

/// Runs the agent of `ctx.home` until SIGINT or SIGTERM (or until a critical part stops it).
pub fn serve(ctx: &Ctx, bootstrap: Vec<libp2p::Multiaddr>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINMESH_LOG")
                .unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; never into a log file or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let node = Node::start(Start {
            bootstrap,
            ..Start::from_home(ctx.home.clone())?
        })
        .await?;
        println!("pinmesh {} running", env!("CARGO_PKG_VERSION"));
        println!("peer id: {}", node.peer_id);
        for addr in &node.addrs {
            println!("listening on {addr}");
        }
        println!("api: http://{}", node.api_addr);
        if let Some(addr) = node.follow_config_addr {
            println!(
                "follow configuration: http://{addr}/follow-config#writer={}",
                node.peer_id
            );
        }
        let api_addr_file = ctx.home.api_addr();
        let failed = tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                false
            }
            _ = node.stopped() => true,
        };
        let fatal = node.fatal();
        node.shutdown().await;
        let failure = fatal.reason();
        let _ = std::fs::remove_file(api_addr_file);
        if failed {
            // The reason of the part that stopped (it may only be known once all stopped).
            match failure {
                Some(reason) => anyhow::bail!("{reason}"),
                None => anyhow::bail!("a critical task of the agent stopped; see the log above"),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `run --resync`: a fresh database in place of the damaged one, then the usual start.
/// Refused when no peer is known (the file names none, none is configured or given): an
/// agent that starts alone is synced at once with an empty pinset, and would unpin everything
/// it had pinned in its IPFS node.
fn resync(ctx: &Ctx, bootstrap_given: bool) -> anyhow::Result<()> {
    let config = crate::config::Config::load(&ctx.home.config())?;
    let cache = config.raw.storage.cache_mib as usize * 1024 * 1024;
    let need_peers = config.bootstrap.is_empty() && !bootstrap_given;
    let done = crate::store::resync(&ctx.home.database(), cache, need_peers, |state| state.owned)?;
    println!(
        "resync: kept the damaged database as {}",
        done.kept.display()
    );
    match &done.unreadable {
        Some(why) => println!(
            "resync: nothing could be read from it ({why}): pins this agent made in its IPFS \
             node are no longer known as its own and stay pinned"
        ),
        None => println!(
            "resync: carried over {} pins this agent made in its IPFS node and {} peers",
            done.owned, done.peers
        ),
    }
    println!(
        "resync: the pinset is fetched again from the peers; pins this agent acknowledged that \
         no peer received before the damage are lost"
    );
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
