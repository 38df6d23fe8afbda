//! The follow phase: a trusted writer holding `pins` pins serves its follow configuration over
//! HTTP (`api.follow_config_listen`); a new follower is made from the URL (`pinmesh follow
//! NAME init URL#writer=ID`) and run (`pinmesh follow NAME run`) until it is synced with every
//! pin. The follower drives no IPFS node: this measures taking the pinset, not fetching its
//! content (the reconciler's benchmark measures that).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pinmesh_tests::process::{AgentProcess, init};

/// What the phase measured.
pub struct Followed {
    /// From `follow NAME init` (fetching the configuration) to synced with every pin.
    pub synced: Duration,
    /// Of it, `follow NAME init` alone.
    pub init: Duration,
    /// Application bytes the follower received (sync answers and gossip).
    pub received: u64,
    pub snapshots: u64,
    pub rss: u64,
}

/// A free loopback port (taken again at once by the writer: good enough for a benchmark).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Changes the config.toml of the home at `dir`.
fn configure(
    dir: &Path,
    change: impl FnOnce(&mut pinmesh_agent::config::Config),
) -> anyhow::Result<()> {
    let path = dir.join("config.toml");
    let mut config = pinmesh_agent::config::Config::load(&path)?.raw;
    change(&mut config);
    std::fs::write(&path, config.to_toml())?;
    Ok(())
}

pub async fn follow_phase(bin: &Path, dir: &Path, pins: u64) -> anyhow::Result<Followed> {
    let writer_home = dir.join("writer");
    let secret = pinmesh_tests::random_secret();
    let args: Vec<String> = [
        "--secret",
        &secret,
        "--no-ipfs",
        "--trusted-writers",
        "self",
    ]
    .map(String::from)
    .to_vec();
    init(bin, &writer_home, &args)?;
    let port = free_port()?;
    configure(&writer_home, |c| {
        c.api.follow_config_listen = Some(format!("127.0.0.1:{port}"));
    })?;
    let writer = AgentProcess::run(bin, &writer_home)?;
    super::bulk_pin(&writer.client, (0, pins), 10_000, 2, None).await?;
    let id = writer.client.digest().await?.peer_id;
    let url = format!("http://127.0.0.1:{port}/follow-config#writer={id}");

    let home = dir.join("follower");
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["follow", "bench", "init", &url, "--dir"])
        .arg(&home)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .output()
        .context("run pinmesh follow init")?;
    if !out.status.success() {
        bail!(
            "follow init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let init_took = started.elapsed();
    configure(&home, |c| c.ipfs.embedded = false)?;
    let follower = AgentProcess::command(bin, &home, &["follow", "bench", "run"])?;
    let d = follower
        .client
        .wait_digest(Some(pins), Some(true), Duration::from_secs(600))
        .await?;
    let synced = started.elapsed();
    if d.pins != pins || !d.synced {
        bail!("the follower reached {} pins, synced {}", d.pins, d.synced);
    }
    let rss = follower.rss_bytes().unwrap_or(0);
    follower.stop()?;
    writer.stop()?;
    Ok(Followed {
        synced,
        init: init_took,
        received: d.sync_bytes_in + d.gossip_bytes_in,
        snapshots: d.snapshots_joined,
        rss,
    })
}
