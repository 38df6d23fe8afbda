//! cluster-bench: agents as separate `pinmesh run` processes on loopback, measured from outside
//! through their control APIs, beside the same run's floors. Run it with
//! `scripts/bench-cluster.sh` (release build); `--help` lists the knobs.
//!
//! - floors: one gossipsub hop between two in-process swarms (the transport agents use), and
//!   one durable redb commit;
//! - latency: N agents; a pin at agent 0 until every other agent has it, p50/p99 over trials;
//! - ingest: pipelined batch pins at agent 0 while N-1 replicate; acked pins/s and how long after
//!   the last ack every replica holds them all;
//! - join: one agent with a large pinset, then a fresh agent: time until it is synced with all
//!   pins, application bytes it received against the encoded entries, and both agents' RSS;
//! - follow: a new follower made from a trusted writer's follow configuration URL, as the join
//!   ([`follow`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use pinmesh_agent::api::PinRequest;
use pinmesh_agent::api::client::Client;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_protocol::{ActorId, Dot, PinEntry, PinSpec, Version, codec};
use pinmesh_tests::process::{AgentProcess, full_mesh};
use tempfile::TempDir;

#[path = "cluster-bench/follow.rs"]
mod follow;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks a pinmesh cluster of real processes on loopback")]
struct Args {
    /// The pinmesh binary.
    #[arg(long, default_value = "target/release/pinmesh")]
    bin: PathBuf,
    /// Agents for the latency and ingest phases.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Single-pin convergence trials.
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// Pins for the ingest phase.
    #[arg(long, default_value_t = 200_000)]
    ingest: u64,
    /// Pins held by the cluster a fresh agent joins.
    #[arg(long, default_value_t = 1_000_000)]
    join_pins: u64,
    /// Pins of the trusted writer a new follower syncs in the follow phase.
    #[arg(long, default_value_t = 100_000)]
    follow_pins: u64,
    /// Pins (replication 2) of the cluster that loses a peer in the repin phase: with 10
    /// agents, the lost one holds about a fifth.
    #[arg(long, default_value_t = 500_000)]
    repin_pins: u64,
    /// `cluster.repin_rate` of the repin phase's agents (the default config's is 1000).
    #[arg(long, default_value_t = 1000)]
    repin_rate: u32,
    /// Phases to run, comma-separated: floors,latency,ingest,join,follow,repin (repin: agents
    /// with embedded IPFS nodes, which publish the metrics allocation needs).
    #[arg(long, default_value = "floors,latency,ingest,join")]
    phases: String,
    /// Print one JSON object with every number instead of the table.
    #[arg(long)]
    json: bool,
}

/// `pinmesh init` arguments for an agent on loopback with free ports. No IPFS node: this
/// benchmark measures replication (the reconciler has its own).
fn init_args(secret: &str, bootstrap: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--secret".to_string(),
        secret.to_string(),
        "--no-ipfs".to_string(),
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap".to_string(), b.to_string()]);
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pin(cid: u64, name: &str) -> PinRequest {
    PinRequest::new(sim_cid(cid), name)
}

/// The repin phase's agents between metrics: how often they publish, and how long a peer
/// must be down before its pins move.
const REPIN_METRICS: Duration = Duration::from_secs(1);
const REPIN_AFTER: Duration = Duration::from_secs(5);

/// `n` agents with embedded IPFS nodes (they publish metrics), repinning after
/// [`REPIN_AFTER`] at `rate` pins per second; waits until the first holds every metric.
async fn repin_cluster(
    bin: &Path,
    root: &Path,
    n: usize,
    rate: u32,
) -> anyhow::Result<Vec<AgentProcess>> {
    let secret = pinmesh_tests::random_secret();
    let mut agents: Vec<AgentProcess> = Vec::new();
    for i in 0..n {
        let home = root.join(format!("agent-{i}"));
        let mut init = vec!["--secret".to_string(), secret.clone()];
        if let Some(first) = agents.first() {
            init.extend(["--bootstrap".to_string(), first.addr.clone()]);
        }
        pinmesh_tests::process::init(bin, &home, &init)?;
        let config = home.join("config.toml");
        let mut raw = pinmesh_agent::config::Config::load(&config)?.raw;
        raw.cluster.metrics_interval = REPIN_METRICS;
        raw.cluster.repin_after = REPIN_AFTER;
        raw.cluster.repin_rate = rate;
        // The pins name no content: keep the nodes' hopeless fetches few.
        raw.ipfs.concurrency = 1;
        std::fs::write(&config, raw.to_toml())?;
        agents.push(AgentProcess::run(bin, &home)?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = agents[0].client.peers().await?;
        let live = (info.peers.iter())
            .filter(|p| p.metric.as_ref().is_some_and(|m| m.live))
            .count();
        if live == n - 1 && info.metric.is_some() {
            return Ok(agents);
        }
        if Instant::now() >= deadline {
            bail!("agent 0 holds {live} live metrics of {}", n - 1);
        }
        tokio::time::sleep(REPIN_METRICS / 2).await;
    }
}

/// How many pins `client`'s pinset allocates to `peer`.
async fn allocated_to(client: &Client, peer: &str) -> anyhow::Result<u64> {
    let mut n = 0;
    client
        .list(|pin| {
            n += u64::from(pin.allocations.iter().any(|p| p == peer));
            Ok(())
        })
        .await?;
    Ok(n)
}

/// Starts `n` agents bootstrapping from the first; waits until all are synced.
async fn cluster(bin: &Path, root: &Path, n: usize) -> anyhow::Result<Vec<AgentProcess>> {
    let secret = pinmesh_tests::random_secret();
    let first = AgentProcess::start(bin, &root.join("agent-0"), &init_args(&secret, None))?;
    let bootstrap = first.addr.clone();
    let mut agents = vec![first];
    for i in 1..n {
        agents.push(AgentProcess::start(
            bin,
            &root.join(format!("agent-{i}")),
            &init_args(&secret, Some(&bootstrap)),
        )?);
    }
    for a in &agents {
        a.client
            .wait_digest(None, Some(true), Duration::from_secs(60))
            .await?;
    }
    // Agents bootstrap from agent 0 and then find and dial each other; measuring during those
    // handshakes measures the handshakes. Wait (bounded) for the full mesh of connections.
    if let Err(connected) = full_mesh(&agents, Duration::from_secs(30)).await? {
        eprintln!(
            "warning: an agent has {connected} of {} peers connected; measuring anyway",
            n - 1
        );
    }
    Ok(agents)
}

/// Pins `count` CIDs from `first` at `agent`, `per_request` per request, `parallel` in flight,
/// with the cluster's default factors or `replication`.
pub(crate) async fn bulk_pin(
    client: &Client,
    (first, count): (u64, u64),
    per_request: u64,
    parallel: usize,
    replication: Option<i32>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut next = first;
    while next < first + count {
        while in_flight.len() < parallel && next < first + count {
            let end = (next + per_request).min(first + count);
            let requests: Vec<PinRequest> = (next..end)
                .map(|i| {
                    let mut request = pin(i, &format!("p{i:07}"));
                    (request.replication_min, request.replication_max) = (replication, replication);
                    request
                })
                .collect();
            let client = client.clone();
            in_flight.spawn(async move { client.pin_many(&requests).await.map(|_| ()) });
            next = end;
        }
        if let Some(done) = in_flight.join_next().await {
            done??;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// Exact encoded size of the entries `bulk_pin` creates, as a snapshot carries them.
fn encoded_entries(first: u64, count: u64) -> u64 {
    let actor = ActorId(u64::MAX); // widest encoding of the actor
    (first..first + count)
        .map(|i| {
            let entry = PinEntry {
                cid: sim_cid(i),
                versions: vec![Version {
                    dot: Dot::new(actor, i + 1),
                    at: 1_800_000_000_000,
                    spec: PinSpec::named(format!("p{i:07}")),
                }],
            };
            codec::encoded_len(&entry) as u64
        })
        .sum()
}

async fn floor_gossip_hop(trials: usize) -> anyhow::Result<(Duration, Duration)> {
    use futures::StreamExt;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;
    use pinmesh_agent::swarm::{BehaviourEvent, Flags, build, topic};
    let secret = [7u8; 32];
    let flags = Flags::default();
    let mut a = build(
        libp2p::identity::Keypair::generate_ed25519(),
        secret,
        "floor",
        &flags,
    )?;
    let mut b = build(
        libp2p::identity::Keypair::generate_ed25519(),
        secret,
        "floor",
        &flags,
    )?;
    let t = topic("floor");
    a.behaviour_mut().gossipsub_mut().subscribe(&t)?;
    b.behaviour_mut().gossipsub_mut().subscribe(&t)?;
    b.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
            break address;
        }
    };
    a.dial(addr)?;
    // Wait until a sees b subscribed.
    loop {
        tokio::select! {
            e = a.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) = e { break },
            _ = b.select_next_some() => {}
        }
    }
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        let sent = Instant::now();
        a.behaviour_mut()
            .gossipsub_mut()
            .publish(t.clone(), format!("hop {i}").into_bytes())?;
        loop {
            tokio::select! {
                e = b.select_next_some() => if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message_id, propagation_source, .. })) = e {
                    samples.push(sent.elapsed());
                    let _ = b.behaviour_mut().gossipsub_mut().report_message_validation_result(&message_id, &propagation_source, gossipsub::MessageAcceptance::Accept);
                    break;
                },
                _ = a.select_next_some() => {}
            }
        }
    }
    samples.sort();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

fn floor_redb_commit(dir: &Path, trials: usize) -> anyhow::Result<(Duration, Duration)> {
    let db = redb::Database::create(dir.join("floor.redb"))?;
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials as u64 {
        let started = Instant::now();
        let txn = db.begin_write()?;
        txn.open_table(table)?
            .insert(sim_cid(i).to_bytes().as_slice(), [0u8; 40].as_slice())?;
        txn.commit()?;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

/// Random-key inserts (CID-keyed, as agents store pins), `per_commit` to a durable commit,
/// into a table that grows to `total` keys: keys per second on one core. Every replicating
/// agent stores every pin, so N agents on C cores cannot ingest faster than C x this / N.
fn floor_redb_inserts(dir: &Path, total: u64, per_commit: u64) -> anyhow::Result<f64> {
    let db = redb::Database::create(dir.join("floor-inserts.redb"))?;
    let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");
    let started = Instant::now();
    for first in (0..total).step_by(per_commit as usize) {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(table)?;
            for i in first..(first + per_commit).min(total) {
                t.insert(sim_cid(i).to_bytes().as_slice(), [7u8; 40].as_slice())?;
            }
        }
        txn.commit()?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Records a number, and prints its line unless the output is JSON.
fn say(
    report: &mut serde_json::Map<String, serde_json::Value>,
    json: bool,
    key: &str,
    value: serde_json::Value,
    human: String,
) {
    if !json {
        println!("{human}");
    }
    report.insert(key.to_string(), value);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let phases = pinmesh_tests::process::bench_setup(&args.bin, &args.phases)?;
    let root = TempDir::new()?;
    let mut report = serde_json::Map::new();
    let json = args.json;

    if phases.contains(&"floors") {
        let (hop50, hop99) = floor_gossip_hop(500).await?;
        let (commit, commit99) = floor_redb_commit(root.path(), 500)?;
        say(
            &mut report,
            json,
            "floor_gossip_hop_p50_ms",
            ms(hop50).into(),
            format!(
                "floor: one gossipsub hop p50 {:.3} ms, p99 {:.3} ms",
                ms(hop50),
                ms(hop99)
            ),
        );
        say(
            &mut report,
            json,
            "floor_redb_commit_p50_ms",
            ms(commit).into(),
            format!(
                "floor: one durable redb commit p50 {:.3} ms, p99 {:.3} ms",
                ms(commit),
                ms(commit99)
            ),
        );
        report.insert("floor_redb_commit_p99_ms".into(), ms(commit99).into());
        let inserts = floor_redb_inserts(root.path(), args.ingest, 1000)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ceiling = cores as f64 * inserts / args.agents as f64;
        say(
            &mut report,
            json,
            "floor_redb_inserts_per_s",
            inserts.round().into(),
            format!(
                "floor: random-key redb inserts, 1000 per durable commit, {} keys: {:.0} keys/s on one core; \
                 ingest ceiling with {} agents each storing every pin on {} cores: {:.0} pins/s",
                args.ingest, inserts, args.agents, cores, ceiling
            ),
        );
        report.insert("ingest_ceiling_pins_per_s".into(), ceiling.round().into());
    }

    if phases.contains(&"latency") || phases.contains(&"ingest") {
        let agents = cluster(&args.bin, &root.path().join("latency"), args.agents).await?;
        if phases.contains(&"latency") {
            let mut samples = Vec::with_capacity(args.trials);
            // The first trials run while meshes graft and peers exchange their first beacons.
            const WARMUP: u64 = 20;
            for t in 0..WARMUP + args.trials as u64 {
                let cid = sim_cid(10_000_000 + t).to_string();
                let mut waits = tokio::task::JoinSet::new();
                let started = Instant::now();
                for a in &agents[1..] {
                    let (client, cid) = (a.client.clone(), cid.clone());
                    waits.spawn(async move {
                        client
                            .wait_pin(&cid, Duration::from_secs(30))
                            .await
                            .map(|_| started.elapsed())
                    });
                }
                agents[0]
                    .client
                    .pin(&pin(10_000_000 + t, "latency"))
                    .await?;
                let mut slowest = Duration::ZERO;
                while let Some(done) = waits.join_next().await {
                    slowest = slowest.max(done??);
                }
                if t >= WARMUP {
                    samples.push(slowest);
                }
            }
            samples.sort();
            let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
            say(
                &mut report,
                json,
                "latency_p50_ms",
                ms(p50).into(),
                format!(
                    "single-pin convergence, {} agents, {} trials: p50 {:.2} ms, p99 {:.2} ms (pin request to every other agent holding it)",
                    args.agents,
                    args.trials,
                    ms(p50),
                    ms(p99)
                ),
            );
            report.insert("latency_p99_ms".into(), ms(p99).into());
        }
        if phases.contains(&"ingest") {
            let before = agents[0].client.digest().await?.pins;
            let took =
                bulk_pin(&agents[0].client, (20_000_000, args.ingest), 1000, 4, None).await?;
            let acked = Instant::now();
            let mut lag = Duration::ZERO;
            for a in &agents[1..] {
                let d = a
                    .client
                    .wait_digest(Some(before + args.ingest), None, Duration::from_secs(300))
                    .await?;
                if d.pins != before + args.ingest {
                    bail!(
                        "a replica holds {} pins, not {}",
                        d.pins,
                        before + args.ingest
                    );
                }
                lag = lag.max(acked.elapsed());
            }
            let rate = args.ingest as f64 / took.as_secs_f64();
            say(
                &mut report,
                json,
                "ingest_pins_per_s",
                rate.into(),
                format!(
                    "durable ingest at one agent, {} replicating: {:.0} pins/s ({} pins in {:.2} s); every replica caught up {:.0} ms after the last ack",
                    args.agents - 1,
                    rate,
                    args.ingest,
                    took.as_secs_f64(),
                    ms(lag)
                ),
            );
            report.insert("ingest_catch_up_ms".into(), ms(lag).into());
        }
    }

    if phases.contains(&"join") {
        let dir = root.path().join("join");
        let secret = pinmesh_tests::random_secret();
        let source =
            AgentProcess::start(&args.bin, &dir.join("source"), &init_args(&secret, None))?;
        let took = bulk_pin(&source.client, (0, args.join_pins), 10_000, 2, None).await?;
        let started = Instant::now();
        let fresh = AgentProcess::start(
            &args.bin,
            &dir.join("fresh"),
            &init_args(&secret, Some(&source.addr)),
        )?;
        let d = fresh
            .client
            .wait_digest(Some(args.join_pins), Some(true), Duration::from_secs(600))
            .await?;
        let synced = started.elapsed();
        if d.pins != args.join_pins || !d.synced {
            bail!(
                "the fresh agent reached {} pins, synced {}",
                d.pins,
                d.synced
            );
        }
        let entries = encoded_entries(0, args.join_pins);
        let received = d.sync_bytes_in + d.gossip_bytes_in;
        say(
            &mut report,
            json,
            "join_synced_s",
            synced.as_secs_f64().into(),
            format!(
                "fresh agent joining {} pins: synced in {:.2} s (process start to synced), {} snapshot(s); received {:.1} MB = {:.2}x the encoded entries ({:.1} MB)",
                args.join_pins,
                synced.as_secs_f64(),
                d.snapshots_joined,
                received as f64 / 1e6,
                received as f64 / entries as f64,
                entries as f64 / 1e6
            ),
        );
        report.insert(
            "join_bytes_ratio".into(),
            (received as f64 / entries as f64).into(),
        );
        report.insert("join_source_ingest_s".into(), took.as_secs_f64().into());
        let (rss_source, rss_fresh) = (
            source.rss_bytes().unwrap_or(0),
            fresh.rss_bytes().unwrap_or(0),
        );
        say(
            &mut report,
            json,
            "rss_mb_source",
            (rss_source as f64 / 1e6).into(),
            format!(
                "RSS holding {} pins: {:.1} MB (the agent that ingested them), {:.1} MB (the one that joined)",
                args.join_pins,
                rss_source as f64 / 1e6,
                rss_fresh as f64 / 1e6
            ),
        );
        report.insert("rss_mb_fresh".into(), (rss_fresh as f64 / 1e6).into());
    }
    if phases.contains(&"follow") {
        let pins = args.follow_pins;
        let f = follow::follow_phase(&args.bin, &root.path().join("follow"), pins).await?;
        let entries = encoded_entries(0, pins);
        say(
            &mut report,
            json,
            "follow_synced_s",
            f.synced.as_secs_f64().into(),
            format!(
                "new follower from the configuration URL, {} pins: synced in {:.2} s (follow init {:.2} s of it, then follow run), {} snapshot(s); received {:.1} MB = {:.2}x the encoded entries ({:.1} MB); RSS {:.1} MB",
                pins,
                f.synced.as_secs_f64(),
                f.init.as_secs_f64(),
                f.snapshots,
                f.received as f64 / 1e6,
                f.received as f64 / entries as f64,
                entries as f64 / 1e6,
                f.rss as f64 / 1e6
            ),
        );
        report.insert("follow_received_bytes".into(), f.received.into());
        report.insert("follow_init_s".into(), f.init.as_secs_f64().into());
        report.insert("follow_rss_mb".into(), (f.rss as f64 / 1e6).into());
    }
    if phases.contains(&"repin") {
        let mut agents = repin_cluster(
            &args.bin,
            &root.path().join("repin"),
            args.agents,
            args.repin_rate,
        )
        .await?;
        let total = args.repin_pins;
        bulk_pin(&agents[0].client, (30_000_000, total), 1000, 4, Some(2)).await?;
        for a in &agents {
            a.client
                .wait_digest(Some(total), None, Duration::from_secs(600))
                .await?;
        }
        let lost = agents.pop().context("agents")?;
        let lost_id = lost.client.digest().await?.peer_id;
        let held = allocated_to(&agents[0].client, &lost_id).await?;
        lost.kill9();
        let killed = Instant::now();
        // Every replica's digest, every 250 ms: converged once they are equal and stay so
        // for 15 s (longer than a repinner's pause between two seconds' work), and agent 0's
        // pinset names the lost peer no more; the time is that of the last change seen.
        let (mut last, mut changed, mut looks) = (Vec::new(), Instant::now(), 0);
        let converged = loop {
            looks += 1;
            let mut digests = Vec::with_capacity(agents.len());
            for a in &agents {
                digests.push(a.client.digest().await?.state_digest);
            }
            if digests != last {
                (last, changed) = (digests, Instant::now());
            } else if last.iter().all(|d| *d == last[0])
                && changed.elapsed() >= Duration::from_secs(15)
            {
                if allocated_to(&agents[0].client, &lost_id).await? == 0 {
                    break changed.duration_since(killed);
                }
                changed = Instant::now(); // not done: look again later
            }
            if killed.elapsed() > Duration::from_secs(3600) {
                bail!("pins of the lost peer not re-allocated within an hour");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // The peer counts as lost once its metric expired (three intervals) and repin_after
        // passed; the rest is the repinning itself.
        let detect = REPIN_METRICS * 3 + REPIN_AFTER;
        let repinning = converged.saturating_sub(detect);
        say(
            &mut report,
            json,
            "repin_converged_s",
            converged.as_secs_f64().into(),
            format!(
                "{} agents, {} pins at replication 2: one agent holding {} of them killed; every pin re-allocated and the lists converged on every agent {:.1} s later ({:.1} s after it counted lost: {:.0} pins/s, each agent repinning at most {}/s; digests read {} times)",
                args.agents,
                total,
                held,
                converged.as_secs_f64(),
                repinning.as_secs_f64(),
                held as f64 / repinning.as_secs_f64().max(0.001),
                args.repin_rate,
                looks
            ),
        );
        report.insert("repin_pins".into(), held.into());
        report.insert("repin_after_lost_s".into(), repinning.as_secs_f64().into());
    }
    if args.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(())
}
