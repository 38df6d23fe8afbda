//! `pinmesh run`: the daemon.

use std::process::ExitCode;

use anyhow::Context;

use super::Ctx;
use crate::config::parse_peer_addr;
use crate::node::{Node, StartOptions};

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
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if !ctx.home.config().exists() {
        // A fresh machine: make a new single-agent cluster rather than fail.
        let made = crate::home::init(&ctx.home, crate::home::InitOptions::default())?;
        super::init::report(ctx, &made)?;
        println!();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PINMESH_LOG")
                .unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let node = Node::start(
            ctx.home.clone(),
            StartOptions {
                bootstrap: args.bootstrap,
            },
        )
        .await?;
        println!("pinmesh {} running", env!("CARGO_PKG_VERSION"));
        println!("peer id: {}", node.peer_id);
        for addr in &node.addrs {
            println!("listening on {addr}");
        }
        println!("api: http://{}", node.api_addr);
        let api_addr_file = ctx.home.api_addr();
        let failed = tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                false
            }
            _ = node.stopped() => true,
        };
        node.shutdown().await;
        let _ = std::fs::remove_file(api_addr_file);
        if failed {
            anyhow::bail!("a critical task of the agent stopped; see the log above");
        }
        Ok(ExitCode::SUCCESS)
    })
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
