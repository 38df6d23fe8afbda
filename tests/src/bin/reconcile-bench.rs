//! reconcile-bench: the reconciler against a real IPFS node (js-ipfs from
//! `scripts/ipfs-testnet.sh`, or Kubo with `KUBO_BIN`), beside what the node does for a plain
//! client. Run it with `scripts/bench-reconcile.sh` (release build); `--help` lists the knobs.
//!
//! - pin rate: N small DAGs already in the node, pinned by a plain HTTP loop calling `pin/add`
//!   at concurrency C, then N others pinned through a `pinmesh run` agent (one batch request;
//!   done when every status is `pinned`) with `ipfs.concurrency` C, then the plain loop again;
//!   the agent's rate against the mean of the two plain runs;
//! - comparison: P pins in the node and in the pinset; the reconciler's full comparison of
//!   the two (after its listing), beside the node's own listing time;
//! - embedded: two agents on their embedded IPFS nodes (the default backend). A file of M MiB
//!   added on agent 0 (`add --no-pin`), then pinned through agent 1: the add rate and the
//!   transfer rate to agent 1's node over bitswap; then N small files added on agent 0 and
//!   pinned in one batch through agent 1: pins per second until both nodes hold them all.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use futures::StreamExt;
use pinmesh_agent::api::PinRequest;
use pinmesh_agent::config::Config;
use pinmesh_agent::reconcile::Status;
use pinmesh_protocol::Cid;
use pinmesh_tests::ipfs::{IpfsNet, IpfsNode};
use pinmesh_tests::process::AgentProcess;
use tempfile::TempDir;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks the reconciler against a real IPFS node")]
struct Args {
    /// The pinmesh binary.
    #[arg(long, default_value = "target/release/pinmesh")]
    bin: PathBuf,
    /// Small DAGs per pin-rate run.
    #[arg(long, default_value_t = 2000)]
    dags: usize,
    /// Calls at once, for the plain loop and the reconciler alike.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Pins for the comparison phase.
    #[arg(long, default_value_t = 100_000)]
    pins: usize,
    /// MiB of the embedded phase's large file.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Phases to run, comma-separated: rate,compare,embedded.
    #[arg(long, default_value = "rate,compare,embedded")]
    phases: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phases = pinmesh_tests::process::bench_setup(&args.bin, &args.phases)?;
    if phases.contains(&"rate") {
        rate(&args).await?;
    }
    if phases.contains(&"compare") {
        compare(&args).await?;
    }
    if phases.contains(&"embedded") {
        embedded(&args).await?;
    }
    Ok(())
}

/// Unique small files: `n` of them, labelled by `set`.
fn files(set: &str, n: usize) -> Vec<Vec<u8>> {
    let salt: u64 = rand::random();
    (0..n)
        .map(|i| format!("pinmesh bench {set} {salt:016x} {i}").into_bytes())
        .collect()
}

/// Adds `n` files to the node (not pinned), in requests of at most 5,000.
async fn add(node: &IpfsNode, set: &str, n: usize, pin: bool) -> Vec<Cid> {
    let mut cids = Vec::with_capacity(n);
    for chunk in files(set, n).chunks(5000) {
        cids.extend(node.add_many(chunk, pin).await);
    }
    cids
}

/// Pins `cids` with plain `pin/add` calls, `concurrency` at once; pins per second.
async fn plain(node: &IpfsNode, cids: &[Cid], concurrency: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut calls = futures::stream::iter(cids)
        .map(|cid| node.pin_add(cid))
        .buffer_unordered(concurrency);
    while let Some(result) = calls.next().await {
        result.map_err(|e| anyhow::anyhow!("pin/add: {e}"))?;
    }
    Ok(cids.len() as f64 / started.elapsed().as_secs_f64())
}

/// An agent driving `api`, with `change` applied to its config.
async fn agent(
    bin: &std::path::Path,
    home: &std::path::Path,
    api: &str,
    change: impl FnOnce(&mut Config),
) -> anyhow::Result<AgentProcess> {
    let first = AgentProcess::start(bin, home, &["--ipfs-api".into(), api.into()])?;
    drop(first); // killed: configure it, then run it again
    let path = home.join("config.toml");
    let mut config = Config::load(&path)?.raw;
    change(&mut config);
    std::fs::write(&path, config.to_toml())?;
    let agent = AgentProcess::run(bin, home)?;
    // Its first full comparison (an empty pinset) is done before anything is measured.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.client.reconciler().await?.cycles == 0 {
        if Instant::now() > deadline {
            bail!("the agent's reconciler never compared the node");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(agent)
}

async fn rate(args: &Args) -> anyhow::Result<()> {
    let net = IpfsNet::start(1);
    let node = net.node(0);
    let n = args.dags;
    let warmup = add(&node, "warm-up", n, false).await;
    let sets = [
        add(&node, "a", n, false).await,
        add(&node, "b", n, false).await,
    ];
    let last = add(&node, "c", n, false).await;

    // The node is slower on its first pins; the first run warms it up and is not counted.
    plain(&node, &warmup, args.concurrency).await?;
    let plain_before = plain(&node, &sets[0], args.concurrency).await?;
    let dir = TempDir::new()?;
    let concurrency = args.concurrency;
    let agent = agent(&args.bin, dir.path(), &net.apis[0], |c| {
        c.ipfs.concurrency = concurrency;
    })
    .await?;
    let requests: Vec<PinRequest> = sets[1]
        .iter()
        .map(|cid| PinRequest::new(*cid, "bench"))
        .collect();
    let started = Instant::now();
    for chunk in requests.chunks(10_000) {
        agent.client.pin_many(chunk).await?;
    }
    // The reconciler's own report is cheap to ask for; the statuses are counted only when it
    // looks idle (it may not have seen the batch yet).
    let took = loop {
        let report = agent.client.reconciler().await?;
        if report.queued == 0 && report.running == 0 && report.retrying == 0 {
            let took = started.elapsed();
            let pinned = agent
                .client
                .status(&[], &[Status::Pinned], |_| Ok(()))
                .await?;
            if pinned as usize == n {
                break took;
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not every pin is done after 10 minutes: {report:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let through_agent = n as f64 / took.as_secs_f64();
    drop(agent);
    let plain_after = plain(&node, &last, args.concurrency).await?;
    let baseline = (plain_before + plain_after) / 2.0;
    println!(
        "pin rate, {n} small DAGs already in the node, concurrency {}: plain pin/add loop \
         {plain_before:.0} and {plain_after:.0} pins/s; through the reconciler {through_agent:.0} \
         pins/s = {:.2}x the plain loop's mean",
        args.concurrency,
        through_agent / baseline
    );
    Ok(())
}

async fn compare(args: &Args) -> anyhow::Result<()> {
    let net = IpfsNet::start(1);
    let node = net.node(0);
    let p = args.pins;
    let started = Instant::now();
    let cids = add(&node, "pinned", p, true).await;
    eprintln!(
        "{p} pinned files added to the node in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let dir = TempDir::new()?;
    let agent = agent(&args.bin, dir.path(), &net.apis[0], |c| {
        c.ipfs.relist_interval = Duration::from_secs(3);
    })
    .await?;
    let requests: Vec<PinRequest> = cids.iter().map(|cid| PinRequest::new(*cid, "")).collect();
    for chunk in requests.chunks(10_000) {
        agent.client.pin_many(chunk).await?;
    }
    // Every status settled, then one more full comparison: the steady state.
    let deadline = Instant::now() + Duration::from_secs(600);
    let settled_at = loop {
        let pinned = agent
            .client
            .status(&[], &[Status::Pinned], |_| Ok(()))
            .await?;
        let report = agent.client.reconciler().await?;
        if pinned as usize >= p {
            break report.cycles;
        }
        if Instant::now() > deadline {
            bail!("only {pinned} of {p} statuses settled after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = loop {
        let report = agent.client.reconciler().await?;
        if report.cycles > settled_at + 1 {
            break report;
        }
        if Instant::now() > deadline {
            bail!("no full comparison after the statuses settled");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let own = node.list_time().await;
    println!(
        "full comparison at {p} pins: the reconciler listed the node in {} ms and compared it \
         with the pinset and statuses in {} ms ({} CIDs to look at); the node's own listing, \
         read by a plain client: {} ms",
        report.last_listed_ms,
        report.last_compared_ms,
        report.last_to_check,
        own.as_millis()
    );
    Ok(())
}

/// `pinmesh add --no-pin --json PATH` on the agent in `home`; the added entries.
fn add_no_pin(
    bin: &std::path::Path,
    home: &std::path::Path,
    path: &std::path::Path,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = std::process::Command::new(bin)
        .arg("--dir")
        .arg(home)
        .args(["add", "--no-pin", "--json"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Waits until every agent reports every CID `pinned`; how long it took from `started`.
async fn all_pinned(
    agents: &[AgentProcess],
    cids: &[String],
    started: Instant,
) -> anyhow::Result<Duration> {
    for agent in agents {
        loop {
            let pinned = agent
                .client
                .status(cids, &[Status::Pinned], |_| Ok(()))
                .await?;
            if pinned as usize == cids.len() {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("{pinned} of {} pinned after 10 minutes", cids.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

async fn embedded(args: &Args) -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let secret = pinmesh_tests::random_secret();
    let first = AgentProcess::start(
        &args.bin,
        &dir.path().join("a0"),
        &["--secret".into(), secret.clone()],
    )?;
    let bootstrap = first.addr.clone();
    let second = AgentProcess::start(
        &args.bin,
        &dir.path().join("a1"),
        &["--secret".into(), secret, "--bootstrap".into(), bootstrap],
    )?;
    let agents = [first, second];
    if pinmesh_tests::process::full_mesh(&agents, Duration::from_secs(30))
        .await?
        .is_err()
    {
        bail!("the two agents did not connect");
    }

    // One large file: added on agent 0, fetched by agent 1's node.
    let big = dir.path().join("big.bin");
    let bytes = args.mib << 20;
    std::fs::write(
        &big,
        (0..bytes)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>(),
    )?;
    let started = Instant::now();
    let added = add_no_pin(&args.bin, &agents[0].home, &big)?;
    let add_secs = started.elapsed().as_secs_f64();
    let cid = added
        .last()
        .and_then(|l| l["cid"].as_str())
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    agents[1]
        .client
        .pin(&PinRequest::new(cid.parse::<Cid>()?, "big"))
        .await?;
    let took = all_pinned(&agents[1..], std::slice::from_ref(&cid), started).await?;
    let mib = args.mib as f64;
    println!(
        "embedded nodes, a {mib:.0} MiB file: added on agent 0 at {:.0} MiB/s; pinned through agent 1, \
         its node fetched it at {:.0} MiB/s ({:.2}s)",
        mib / add_secs,
        mib / took.as_secs_f64(),
        took.as_secs_f64()
    );

    // Many small files: one batch of pins, fetched file by file.
    let small = dir.path().join("small");
    std::fs::create_dir(&small)?;
    let salt: u64 = rand::random();
    for i in 0..args.dags {
        std::fs::write(
            small.join(format!("{i:05}")),
            format!("pinmesh embedded bench {salt:016x} {i}"),
        )?;
    }
    let added = add_no_pin(&args.bin, &agents[0].home, &small)?;
    let cids: Vec<String> = added
        .iter()
        .filter(|l| l["name"].as_str().is_some_and(|n| n.contains('/')))
        .filter_map(|l| l["cid"].as_str().map(str::to_string))
        .collect();
    let requests: Vec<PinRequest> = cids
        .iter()
        .map(|c| Ok(PinRequest::new(c.parse::<Cid>()?, "small")))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    for chunk in requests.chunks(10_000) {
        agents[1].client.pin_many(chunk).await?;
    }
    let took = all_pinned(&agents, &cids, started).await?;
    println!(
        "embedded nodes, {} small files added on agent 0, pinned in one batch through agent 1: \
         both nodes hold them all after {:.2}s = {:.0} pins/s",
        cids.len(),
        took.as_secs_f64(),
        cids.len() as f64 / took.as_secs_f64()
    );
    Ok(())
}
