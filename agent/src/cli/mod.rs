//! The command line: global flags, one file per command group. Domain values (CIDs,
//! multiaddrs, durations) are parsed here, so bad input fails before any request is made.

mod add;
mod debug;
mod follow;
mod init;
mod peers;
mod pin;
mod run;
mod simulate;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::client::Client;
use crate::home::Home;

/// pinmesh: leaderless pinset replication for IPFS.
#[derive(Debug, Parser)]
#[command(name = "pinmesh", version, about)]
pub struct Cli {
    /// The agent's home: config, identity, database (default: ./.pinmesh; a follower's:
    /// see `follow`).
    #[arg(long, global = true, env = "PINMESH_DIR")]
    pub dir: Option<PathBuf>,
    /// Control API of a running agent (default: read from DIR/api.addr).
    #[arg(long, global = true, env = "PINMESH_API")]
    pub api: Option<String>,
    /// Machine-readable output (JSON).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an agent's home: config, identity, API token.
    Init(init::Args),
    /// Run the agent.
    Run(run::Args),
    /// Show this agent's peer id, addresses, cluster and version.
    Id,
    /// Connect to a peer at runtime and remember it (undoes `peers rm` of it).
    Join(peers::JoinArgs),
    /// Known peers.
    #[command(subcommand)]
    Peers(peers::Command),
    /// Add, remove and list pins.
    #[command(subcommand)]
    Pin(pin::Command),
    /// Add files or directories to this agent's IPFS node and pin the root in the cluster
    /// (`--json`: one object per line with name, cid, size, the root last, then the pin).
    Add(add::Args),
    /// Write a file this agent's IPFS node holds to stdout.
    Cat(add::CatArgs),
    /// Where pins stand on the IPFS nodes (`--json`: one object per CID).
    Status(status::StatusArgs),
    /// Retry failed pins and unpins now.
    Recover(status::RecoverArgs),
    /// Inspect replication and convergence.
    #[command(subcommand)]
    Debug(debug::Command),
    /// Print the follow configuration, signed by this agent (a trusted writer), for
    /// `pinmesh follow NAME init`: cluster, secret, members to dial, trusted writers.
    FollowConfig(follow::ConfigArgs),
    /// Follow a cluster read-only: `follow NAME init SOURCE --writer PEER`, `follow NAME run`,
    /// `follow NAME list`, `follow NAME info`; `follow` alone lists the followers.
    Follow(follow::Args),
    /// Run the protocol simulator: replicas, a lossy network, a partition; report convergence.
    Simulate(simulate::Args),
}

/// Shared context of a command.
#[derive(Debug)]
pub struct Ctx {
    pub home: Home,
    pub api: Option<String>,
    pub json: bool,
}

impl Ctx {
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::for_home(&self.home, self.api.as_deref())
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        home: Home::new(cli.dir.clone().unwrap_or_else(|| ".pinmesh".into())),
        api: cli.api,
        json: cli.json,
    };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Run(args) => run::run(&ctx, args),
        Command::Simulate(args) => simulate::run(args, ctx.json),
        Command::Id => block_on(peers::id(&ctx)),
        Command::Join(args) => block_on(peers::join(&ctx, args)),
        Command::Peers(cmd) => block_on(peers::run(&ctx, cmd)),
        Command::Pin(cmd) => block_on(pin::run(&ctx, cmd)),
        Command::Debug(cmd) => block_on(debug::run(&ctx, cmd)),
        Command::Add(args) => block_on(add::run(&ctx, args)),
        Command::Cat(args) => block_on(add::cat(&ctx, args)),
        Command::Status(args) => block_on(status::status(&ctx, args)),
        Command::Recover(args) => block_on(status::recover(&ctx, args)),
        Command::FollowConfig(args) => block_on(follow::config(&ctx, args)),
        Command::Follow(args) => follow::run(&ctx, cli.dir, args),
    }
}

/// Runs a client command on a small runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// `text` safe to print on a terminal: control characters (escape sequences, carriage
/// returns) are shown escaped, never sent raw. Names come from any writer of the cluster.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Prints `value` as one line of JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_printed_escaped() {
        assert_eq!(super::printable("holiday 2026"), "holiday 2026");
        assert_eq!(
            super::printable("\u{1b}[2Jgone\r\n"),
            "\\u{1b}[2Jgone\\r\\n"
        );
    }
}
