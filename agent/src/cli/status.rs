//! `pinmesh status` and `pinmesh recover`: where pins stand on IPFS nodes.

use std::process::ExitCode;

use pinmesh_protocol::Cid;

use super::Ctx;
use crate::api::status::StatusLine;
use crate::reconcile::Status;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only these CIDs (default: every pin, and CIDs still being unpinned).
    #[arg(value_parser = parse_cid)]
    cids: Vec<Cid>,
    /// Only this agent's IPFS node.
    #[arg(long)]
    local: bool,
    /// Only these statuses, comma-separated (queued, pinning, pinned, pin_error, unpinning,
    /// unpinned, unpin_error, remote, unexpectedly_unpinned).
    #[arg(long, value_delimiter = ',')]
    filter: Vec<Status>,
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

pub async fn status(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<ExitCode> {
    if !args.local {
        return cluster(ctx, args).await;
    }
    let client = ctx.client()?;
    let cids: Vec<String> = args.cids.iter().map(ToString::to_string).collect();
    let json = ctx.json;
    let mut errors = 0u64;
    let count = client
        .status(&cids, &args.filter, |line| {
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
    let count = client
        .cluster_status(&cids, &args.filter, |line| {
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
                println!(
                    "  {peer}  {}",
                    describe(p.status.as_str(), p.attempts, &p.error)
                );
            }
            Ok(())
        })
        .await?;
    if !json {
        eprintln!("{count} CIDs, {errors} with errors");
    }
    Ok(ExitCode::SUCCESS)
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
