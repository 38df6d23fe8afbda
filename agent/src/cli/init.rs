//! `pinmesh init`: creates an agent's home.

use std::process::ExitCode;

use super::{Ctx, print_json};
use crate::home::{InitOptions, Initialized, init};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster name (part of the gossip topic).
    #[arg(long, default_value = "default")]
    cluster: String,
    /// The cluster's shared secret, 64 hex digits. Generated when absent: pass the printed one
    /// to every other member.
    #[arg(long)]
    secret: Option<String>,
    /// libp2p listen address; repeat for several.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Control API address (port 0 picks a free one).
    #[arg(
        long = "api-listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:9094"
    )]
    api_listen: String,
    /// A member to join at start, ending in /p2p/<peer id>; repeat for several.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// The Kubo-compatible RPC API of the IPFS node to pin in, like http://127.0.0.1:5001.
    #[arg(long = "ipfs-api", value_name = "URL", conflicts_with = "no_ipfs")]
    ipfs_api: Option<String>,
    /// The embedded IPFS node's listen address (used without --ipfs-api); repeat for several.
    #[arg(long = "ipfs-listen", value_name = "MULTIADDR")]
    ipfs_listen: Vec<String>,
    /// Drive no IPFS node: replicate the pinset only.
    #[arg(long = "no-ipfs")]
    no_ipfs: bool,
    /// The peers allowed to write the pinset (cluster.trusted_writers), comma-separated;
    /// `self` is this agent. Every member needs the same list. Default: every member may.
    #[arg(
        long = "trusted-writers",
        value_name = "PEER,...",
        value_delimiter = ','
    )]
    trusted_writers: Vec<String>,
    /// Overwrite an existing configuration and identity (refused where DIR holds a database:
    /// move the directory away to start a new agent).
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let made = init(
        &ctx.home,
        InitOptions {
            cluster: args.cluster,
            secret: args.secret,
            listen: args.listen,
            api_listen: args.api_listen,
            bootstrap: args.bootstrap,
            ipfs_api: args.ipfs_api,
            ipfs_listen: args.ipfs_listen,
            no_ipfs: args.no_ipfs,
            force: args.force,
            trusted_writers: args.trusted_writers,
            ..InitOptions::default()
        },
    )?;
    report(ctx, &made)?;
    Ok(ExitCode::SUCCESS)
}

/// Tells the user what was created and how to go on.
pub fn report(ctx: &Ctx, made: &Initialized) -> anyhow::Result<()> {
    let cluster = &made.config.raw.cluster;
    if ctx.json {
        return print_json(&serde_json::json!({
            "dir": ctx.home.dir.display().to_string(),
            "peer_id": made.peer_id.to_string(),
            "cluster": cluster.name,
            "secret": cluster.secret,
            "secret_generated": made.secret_generated,
        }));
    }
    let dir = ctx.home.dir.display();
    println!("Created {dir}");
    println!("peer id: {}", made.peer_id);
    println!("cluster: {}", cluster.name);
    if made.secret_generated {
        println!(
            "secret:  {} (generated: give it to every member)",
            cluster.secret
        );
    }
    println!();
    println!("Start it:      pinmesh --dir {dir} run");
    println!(
        "Add a member:  pinmesh --dir OTHER init --cluster {} --secret <secret> --bootstrap <an address from `pinmesh --dir {dir} id`>",
        cluster.name
    );
    Ok(())
}
