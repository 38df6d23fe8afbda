//! `pinmesh status` and `pinmesh recover`: where pins stand on IPFS nodes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use pinmesh_protocol::Cid;

use super::Ctx;
use crate::api::status::{PeerPinStatus, StatusFilter, StatusLine};
use crate::reconcile::Status;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only these CIDs (default: every pin, and CIDs still being unpinned).
    #[arg(value_parser = parse_cid)]
    cids: Vec<Cid>,
    /// Only this agent's IPFS node.
    #[arg(long)]
    local: bool,
    /// Only CIDs with a peer in one of these statuses, comma-separated (queued, pinning,
    /// pinned, pin_error, unpinning, unpinned, unpin_error, remote, unexpectedly_unpinned,
    /// unreachable).
    #[arg(long, value_delimiter = ',', value_parser = parse_filter)]
    filter: Vec<StatusFilter>,
}

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Retry this CID (default: every CID in pin_error or unpin_error).
    #[arg(value_parser = parse_cid)]
    cid: Option<Cid>,
}

fn parse_cid(text: &str) -> Result<Cid, String> {
    text.parse::<Cid>()
        .map_err(|e| format!("{text:?} is not a CID: {e}"))
}

fn parse_filter(text: &str) -> Result<StatusFilter, String> {
    text.parse()
}

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<ExitCode> {
    if !args.local {
        return cluster(ctx, args).await;
    }
    let filter: Vec<Status> = (args.filter.iter())
        .map(|f| match f {
            StatusFilter::Node(status) => Ok(*status),
            StatusFilter::Unreachable => bail!(
                "--filter unreachable applies to the cluster status, not --local (this agent \
                 always reaches its own node)"
            ),
        })
        .collect::<anyhow::Result<_>>()?;
    let client = ctx.client()?;
    let cids: Vec<String> = args.cids.iter().map(ToString::to_string).collect();
    let json = ctx.json;
    let mut errors = 0u64;
    let count = client
        .status(&cids, &filter, |line| {
            errors += u64::from(line.status.is_error());
            print_line(&line, json)
        })
        .await?;
    if !json {
        eprintln!("{count} CIDs, {errors} in error");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every peer's status per CID.
async fn cluster(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let cids: Vec<String> = args.cids.iter().map(ToString::to_string).collect();
    let json = ctx.json;
    let mut errors = 0u64;
    let mut covered = 0u64;
    let count = client
        .cluster_status(&cids, &args.filter, |line| {
            covered += u64::from(line.followers > 0);
            let failed = line
                .peers
                .values()
                .filter(|p| p.status.as_str().ends_with("error"))
                .count();
            errors += u64::from(failed > 0);
            if json {
                return super::print_json(&line);
            }
            println!("{}", line.cid);
            for (peer, p) in &line.peers {
                let status = status_text(p, crate::replica::now_ms());
                println!("  {peer}  {}", describe(&status, p.attempts, &p.error));
            }
            for (peer, p) in &line.follower_peers {
                let status = status_text(p, crate::replica::now_ms());
                println!(
                    "  {peer}  {}  (follower)",
                    describe(&status, p.attempts, &p.error)
                );
            }
            if line.followers > 0 {
                println!(
                    "  followers: {} cover it (by their announced shares)",
                    line.followers
                );
            }
            Ok(())
        })
        .await?;
    if !json {
        let mut summary = format!("{count} CIDs, {errors} with errors");
        if covered > 0 {
            summary.push_str(&format!(", {covered} covered by at least one follower"));
        }
        eprintln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A peer's status as a person reads it: `unreachable (since 3m 12s ago)` for a peer that
/// should hold the CID and cannot be asked, its status as it said otherwise.
pub fn status_text(p: &PeerPinStatus, now_ms: u64) -> String {
    if !p.is_unreachable() {
        return p.status.to_string();
    }
    match p.since {
        Some(since) if since > 0 => {
            // Whole seconds: the milliseconds are noise here.
            let age = Duration::from_secs(now_ms.saturating_sub(since) / 1000);
            format!(
                "unreachable (since {} ago)",
                humantime::format_duration(age)
            )
        }
        _ => "unreachable (since unknown: never heard of)".to_string(),
    }
}

/// `--json`: `{"cid", "peers": {peer_id: {status, error, attempts, updated}}}` per CID.
fn print_line(line: &StatusLine, json: bool) -> anyhow::Result<()> {
    if json {
        let mut peers = serde_json::Map::new();
        peers.insert(
            line.peer_id.to_string(),
            serde_json::json!({
                "status": line.status,
                "error": line.error,
                "attempts": line.attempts,
                "updated": line.updated,
                "owned": line.owned,
            }),
        );
        super::print_json(&serde_json::json!({ "cid": line.cid.to_string(), "peers": peers }))
    } else {
        let status = line.status.to_string();
        println!(
            "{}  {}",
            line.cid,
            describe(&status, line.attempts, &line.error)
        );
        Ok(())
    }
}

/// `status  (attempt N)  error`, the parts that apply.
fn describe(status: &str, attempts: u32, error: &Option<String>) -> String {
    let mut text = status.to_string();
    if attempts > 0 {
        text.push_str(&format!("  (attempt {attempts})"));
    }
    if let Some(error) = error {
        text.push_str(&format!("  {error}"));
    }
    text
}

pub async fn recover(ctx: &Ctx, args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let cid = args.cid.map(|c| c.to_string());
    let reply = ctx.client()?.recover(cid.as_deref()).await?;
    if ctx.json {
        super::print_json(&reply)?;
    } else {
        println!("{} CIDs queued for another attempt", reply.queued);
    }
    Ok(ExitCode::SUCCESS)
}
