//! `pinmesh pin add|rm|ls`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::Subcommand;
use pinmesh_protocol::{Cid, PinMode, PinStatus};

use super::{Ctx, print_json};
use crate::api::PinRequest;
use crate::api::client::Client;
use crate::api::status::PeerPinStatus;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pin a CID in the cluster (or update its options).
    Add(AddArgs),
    /// Unpin a CID from the cluster.
    Rm(RmArgs),
    /// List the cluster's pins (`--json`: one object per line).
    Ls,
}

/// `--wait` and its limit, shared by `pin add` and `pin rm`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Return once every peer the pin is allocated to holds it (every peer with an IPFS node
    /// when it has no allocations; `pin rm`: once every peer has dropped it).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 1, naming the peers not there yet, unreachable
    /// ones included).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub wait_timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(value_parser = parse_cid)]
    cid: Cid,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[arg(value_parser = parse_cid)]
    cid: Cid,
    #[command(flatten)]
    options: PinOptions,
}

/// The pin's options, shared by `pin add` and `add`.
#[derive(Debug, clap::Args)]
pub struct PinOptions {
    #[arg(long)]
    name: Option<String>,
    /// Peers that should hold it (sets min and max); -1 = every peer.
    #[arg(long, conflicts_with_all = ["rmin", "rmax"], allow_negative_numbers = true)]
    replication: Option<i32>,
    #[arg(long, allow_negative_numbers = true)]
    rmin: Option<i32>,
    #[arg(long, allow_negative_numbers = true)]
    rmax: Option<i32>,
    /// Peers to allocate first, comma-separated peer ids; alone, as many replicas as they name.
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    allocations: Vec<libp2p::PeerId>,
    /// Pin on the live peers there are when they are fewer than --rmin (refused otherwise).
    #[arg(long)]
    allow_under_replication: bool,
    #[arg(long, value_parser = parse_mode)]
    mode: Option<PinMode>,
    /// Remove the pin after this long, like "30d" or "12h".
    #[arg(long, value_parser = humantime::parse_duration)]
    expire_in: Option<Duration>,
    /// Metadata, K=V; repeat for several.
    #[arg(long = "meta", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

fn parse_cid(text: &str) -> Result<Cid, String> {
    text.parse::<Cid>()
        .map_err(|e| format!("{text:?} is not a CID: {e}"))
}

fn parse_peer(text: &str) -> Result<libp2p::PeerId, String> {
    text.parse::<libp2p::PeerId>()
        .map_err(|_| format!("{text:?} is not a peer id"))
}

fn parse_mode(text: &str) -> Result<PinMode, String> {
    text.parse::<PinMode>().map_err(|e| e.to_string())
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

pub async fn run(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add(args) => add(ctx, args).await,
        Command::Rm(args) => {
            let client = ctx.client()?;
            let receipt = client.unpin(&args.cid.to_string()).await?;
            if ctx.json {
                print_json(&receipt)?;
            } else {
                println!("unpinned {} ({})", receipt.cid, receipt.dot);
            }
            if args.wait.wait {
                let timeout = args.wait.wait_timeout;
                return wait_for(ctx, &client, &args.cid, "unpinned", timeout, false).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls => {
            let client = ctx.client()?;
            let json = ctx.json;
            let count = client
                .list(|pin| {
                    if json {
                        print_json(&pin)?;
                    } else {
                        let name = if pin.name.is_empty() {
                            "-".into()
                        } else {
                            super::printable(&pin.name)
                        };
                        let repl = if pin.replication_max == -1 {
                            "everywhere".to_string()
                        } else {
                            format!("{}..{}", pin.replication_min, pin.replication_max)
                        };
                        println!("{}  {}  {}  {}", pin.cid, name, pin.mode, repl);
                    }
                    Ok(())
                })
                .await?;
            if !json {
                eprintln!("{count} pins");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<ExitCode> {
    pin_with(ctx, &args.cid, &args.options, "", true).await
}

/// Pins `cid` in the cluster with `options` (`default_name` when none is given), then waits
/// if asked. `report`: print the receipt and the wait's outcome also with `--json`.
pub async fn pin_with(
    ctx: &Ctx,
    cid: &Cid,
    options: &PinOptions,
    default_name: &str,
    report: bool,
) -> anyhow::Result<ExitCode> {
    let args = options;
    let (rmin, rmax) = match (args.replication, args.rmin, args.rmax) {
        (Some(n), _, _) => (Some(n), Some(n)),
        (None, min, max) => (min, max),
    };
    let expire_at = match args.expire_in {
        Some(d) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            if d.is_zero() {
                bail!("--expire-in must be longer than zero");
            }
            Some(now + d.as_secs().max(1))
        }
        None => None,
    };
    let request = PinRequest {
        cid: cid.to_string(),
        name: args
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string()),
        mode: args.mode,
        replication_min: rmin,
        replication_max: rmax,
        expire_at,
        metadata: args.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        origins: Vec::new(),
        allocations: args.allocations.iter().map(ToString::to_string).collect(),
        allow_under_replication: args.allow_under_replication,
    };
    let client = ctx.client()?;
    let receipt = client.pin(&request).await?;
    if !ctx.json {
        println!("pinned {} ({})", receipt.cid, receipt.dot);
    } else if report {
        print_json(&receipt)?;
    }
    if args.wait.wait {
        let quiet = ctx.json && !report;
        return wait_for(ctx, &client, cid, "pinned", args.wait.wait_timeout, quiet).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the cluster status of `cid` until every peer that should hold it reports `want`, or
/// `timeout` passes. The status lists every peer the pin is allocated to (every peer known to
/// drive an IPFS node when it has no allocations), `unreachable` when down, so a down peer
/// holds the wait until the timeout; peers showing `remote` are not allocated it and are not
/// waited for. At the timeout: exit 1 with one line naming the peers not there (with
/// `--json`, a JSON line on stdout first).
async fn wait_for(
    ctx: &Ctx,
    client: &Client,
    cid: &Cid,
    want: &str,
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let started = tokio::time::Instant::now();
    let mut last_progress = String::new();
    loop {
        let mut peers = BTreeMap::new();
        client
            .cluster_status(&[cid.to_string()], &[], |line| {
                peers = line.peers;
                Ok(())
            })
            .await?;
        if peers.is_empty() {
            bail!(
                "no peer drives an IPFS node (every one has ipfs.embedded = false and no ipfs.api): there is nothing to wait for"
            );
        }
        let holders = peers
            .values()
            .filter(|p| p.status != PinStatus::Remote)
            .count();
        let behind: BTreeMap<&String, &PeerPinStatus> = peers
            .iter()
            .filter(|(_, p)| p.status.as_str() != want && p.status != PinStatus::Remote)
            .collect();
        let took = started.elapsed();
        if behind.is_empty() {
            if quiet {
                // The caller's output is the listing alone.
            } else if ctx.json {
                print_json(&serde_json::json!({
                    "cid": cid.to_string(),
                    "status": want,
                    "peers": holders,
                    "waited_ms": took.as_millis() as u64,
                }))?;
            } else {
                println!(
                    "{want} on all {holders} peers in {:.1}s",
                    took.as_secs_f64()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if took >= timeout {
            if ctx.json && !quiet {
                let statuses: BTreeMap<&String, &str> = behind
                    .iter()
                    .map(|(peer, p)| (*peer, p.status.as_str()))
                    .collect();
                print_json(&serde_json::json!({
                    "cid": cid.to_string(),
                    "status": want,
                    "timed_out": true,
                    "peers": holders,
                    "behind": statuses,
                    "waited_ms": took.as_millis() as u64,
                }))?;
            }
            let named: Vec<String> = behind
                .iter()
                .map(|(peer, p)| match &p.error {
                    Some(error) => format!("{peer} ({}: {error})", p.status),
                    None => format!("{peer} ({})", p.status),
                })
                .collect();
            bail!(
                "timed out after {}: {cid} not {want} on {}",
                humantime::format_duration(timeout),
                named.join(", ")
            );
        }
        let progress = format!("{want} on {}/{holders} peers", holders - behind.len());
        if progress != last_progress && !ctx.json {
            eprintln!("{progress}");
            last_progress = progress;
        }
        // The reconcilers report on their own schedule; ask again shortly.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
