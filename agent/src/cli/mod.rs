//! The command line: global flags, one file per command group.

mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pinmesh: leaderless pinset replication for IPFS.
#[derive(Debug, Parser)]
#[command(name = "pinmesh", version, about)]
pub struct Cli {
    /// The agent's home: config, key, database.
    #[arg(long, global = true, env = "PINMESH_DIR", default_value = ".pinmesh")]
    pub dir: PathBuf,
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run,
    /// Run the protocol simulator: replicas, a lossy network, a partition; report convergence.
    Simulate(simulate::Args),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            let version = env!("CARGO_PKG_VERSION");
            let wire = pinmesh_protocol::codec::WIRE_VERSION;
            if cli.json {
                let status = serde_json::json!({
                    "version": version,
                    "wire_version": wire,
                    "daemon": false,
                });
                println!("{status}");
            } else {
                println!("pinmesh {version} (wire protocol v{wire})");
                println!(
                    "This build has the replication protocol only; the networked daemon is not \
                     built yet. Try `pinmesh simulate` to watch replicas converge."
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate::run(args, cli.json),
    }
}
