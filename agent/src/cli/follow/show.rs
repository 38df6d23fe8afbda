//! What `pinmesh follow` shows: a follower's pins (`follow NAME list`) and where it stands
//! (`follow NAME info`), from the running follower or, stopped, from its database; and the
//! followers made under the data directory (`follow` alone).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::load_follower;
use crate::cli::{Ctx, print_json};
use crate::config::Config;
use crate::home::Home;

/// The follower's status lines: from the running follower, else from its database.
pub(super) async fn list(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let config = load_follower(&ctx.home, name)?;
    let mut print = |line: crate::api::status::StatusLine| -> anyhow::Result<()> {
        if ctx.json {
            print_json(&line)
        } else {
            let error = line.error.as_deref().map(|e| format!("  ({e})"));
            println!("{}  {}{}", line.status, line.cid, error.unwrap_or_default());
            Ok(())
        }
    };
    match offline_store(&ctx.home)? {
        None => {
            ctx.client()?.status(&[], &[], &mut print).await?;
        }
        Some((store, _)) => {
            let role = role_of(&config, &ctx.home)?;
            each_line(&store, &role, &mut print)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hands every status line of a stopped follower's database to `each`, a page at a time.
fn each_line(
    store: &crate::store::Store,
    role: &crate::reconcile::Role,
    each: &mut dyn FnMut(crate::api::status::StatusLine) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let mut lines = Vec::new();
        let next = crate::reconcile::status::scan_page(store, role, 1000, after, &mut |l| {
            lines.push(l);
            true
        })?;
        for line in lines {
            each(line)?;
        }
        match next {
            Some(key) => after = Some(key),
            None => return Ok(()),
        }
    }
}

/// The follower's database and its pin count when it is stopped; `None` while it runs (the
/// database is in use).
fn offline_store(home: &Home) -> anyhow::Result<Option<(crate::store::Store, u64)>> {
    match crate::store::Store::open(&home.database(), 4 << 20) {
        Ok((store, persisted)) => Ok(Some((store, persisted.head.pins))),
        Err(crate::store::StoreError::Db(redb::Error::DatabaseAlreadyOpen)) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", home.database().display())),
    }
}

fn role_of(
    config: &crate::config::Validated,
    home: &Home,
) -> anyhow::Result<crate::reconcile::Role> {
    let peer = home.load_identity()?.public().to_peer_id();
    let share = config.follower.as_ref().and_then(|f| f.share);
    Ok(crate::reconcile::Role::follower(peer, share))
}

/// What `follow NAME info` shows.
#[derive(Debug, serde::Serialize)]
struct Info {
    name: String,
    dir: String,
    cluster: String,
    source: String,
    writer: String,
    /// "all", or "K/N".
    share: String,
    running: bool,
    peer_id: String,
    /// Connected peers (running only).
    peers: Option<usize>,
    /// Caught up with the trusted writers (running only).
    synced: Option<bool>,
    /// The IPFS node answers (running only).
    ipfs_up: Option<bool>,
    /// Pins in the cluster's pinset, as this follower holds it.
    pins: u64,
    /// Pins its node holds for it, and those that failed.
    pinned: u64,
    errors: u64,
    /// Its storage cap (`--max-storage`), and the pins skipped for it.
    max_storage: Option<String>,
    skipped: u64,
    /// Bytes of the embedded IPFS node's repository (none with --ipfs-api).
    repo_bytes: Option<u64>,
}

pub(super) async fn info(ctx: &Ctx, name: &str) -> anyhow::Result<ExitCode> {
    let config = load_follower(&ctx.home, name)?;
    let follower = config.raw.follower.clone().expect("a follower's config");
    let mut info = Info {
        name: name.to_string(),
        dir: ctx.home.dir.display().to_string(),
        cluster: config.raw.cluster.name.clone(),
        source: follower.source,
        writer: follower.writer,
        share: follower.share.unwrap_or_else(|| "all".into()),
        running: false,
        peer_id: ctx.home.load_identity()?.public().to_peer_id().to_string(),
        peers: None,
        synced: None,
        ipfs_up: None,
        pins: 0,
        pinned: 0,
        errors: 0,
        max_storage: follower.max_storage.map(|size| size.to_string()),
        skipped: 0,
        repo_bytes: (config.raw.ipfs.api.is_none()).then(|| dir_bytes(&ctx.home.ipfs_dir())),
    };
    let mut count = |line: &crate::reconcile::status::StatusLine| match line.status {
        crate::reconcile::Status::Pinned => info.pinned += 1,
        crate::reconcile::Status::PinError | crate::reconcile::Status::UnpinError => {
            info.errors += 1
        }
        crate::reconcile::Status::Queued
            if line
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("skipped:")) =>
        {
            info.skipped += 1
        }
        _ => {}
    };
    match offline_store(&ctx.home)? {
        Some((store, pins)) => {
            let role = role_of(&config, &ctx.home)?;
            each_line(&store, &role, &mut |line| {
                count(&line);
                Ok(())
            })?;
            info.pins = pins;
        }
        None => {
            let client = ctx.client()?;
            client
                .status(&[], &[], |line| {
                    count(&line);
                    Ok(())
                })
                .await?;
            let digest = client.digest().await?;
            let peers = client.peers().await?;
            let report = client.reconciler().await?;
            info.running = true;
            info.pins = digest.pins;
            info.synced = Some(digest.synced);
            info.peers = Some(peers.peers.iter().filter(|p| p.connected).count());
            info.ipfs_up = Some(!report.node_down);
        }
    }
    if ctx.json {
        print_json(&info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let state = if info.running { "running" } else { "stopped" };
    println!("follower {} ({state})", info.name);
    println!("home:     {}", info.dir);
    println!(
        "cluster:  {} (from {}, signed by {})",
        info.cluster, info.source, info.writer
    );
    println!("peer id:  {}", info.peer_id);
    println!("share:    {}", info.share);
    if let (Some(peers), Some(synced), Some(up)) = (info.peers, info.synced, info.ipfs_up) {
        println!("peers:    {peers} connected");
        println!("synced:   {}", if synced { "yes" } else { "not yet" });
        println!("ipfs:     {}", if up { "up" } else { "DOWN" });
    }
    println!(
        "pins:     {} in the cluster, {} pinned here, {} in error",
        info.pins, info.pinned, info.errors
    );
    if let Some(cap) = &info.max_storage {
        println!(
            "cap:      {cap} (--max-storage): {} pins skipped",
            info.skipped
        );
    }
    if let Some(bytes) = info.repo_bytes {
        println!(
            "disk:     {} in the IPFS repo",
            bytesize::ByteSize::b(bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an agent answers at the API address its home records (a file that `kill -9` left
/// behind names a port nobody listens on).
fn answers(home: &Home) -> bool {
    let Ok(text) = std::fs::read_to_string(home.api_addr()) else {
        return false;
    };
    let Ok(addr) = text.trim().parse::<std::net::SocketAddr>() else {
        return false;
    };
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Bytes of the files under `dir` (0 when absent).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// `pinmesh follow`: the followers under DATA_DIR/pinmesh/follow.
pub(super) fn list_followers(ctx: &Ctx, root: &Path) -> anyhow::Result<ExitCode> {
    let mut names: Vec<String> = match std::fs::read_dir(root) {
        Ok(entries) => (entries.flatten())
            .filter(|e| e.path().join("config.toml").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for name in &names {
        let home = Home::new(root.join(name));
        let (cluster, source) = match Config::load(&home.config()) {
            Ok(c) => (
                c.raw.cluster.name,
                c.raw
                    .follower
                    .map_or("(not a follower)".into(), |f| f.source),
            ),
            Err(err) => ("?".into(), format!("unreadable config: {err}")),
        };
        let running = answers(&home);
        if ctx.json {
            print_json(&serde_json::json!({
                "name": name, "cluster": cluster, "source": source, "running": running,
            }))?;
        } else {
            let state = if running { "running" } else { "stopped" };
            println!("{name}  {state}  cluster {cluster}  from {source}");
        }
    }
    if !ctx.json {
        eprintln!(
            "{} followers in {} (those made with --dir are not listed)",
            names.len(),
            root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
