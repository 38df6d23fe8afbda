//! A cluster upgraded one agent at a time. An agent of the previous release (its real binary,
//! `pinmesh-previous`, built from the commit in `scripts/previous-release` by
//! `scripts/previous-release.sh`) and agents of this release write, converge and answer each
//! other; then the old agent is restarted on this release's binary over its own database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pinmesh_agent::api::PinRequest;
use pinmesh_agent::api::client::Client;
use pinmesh_protocol::sim::sim_cid;
use pinmesh_tests::process::{AgentProcess, full_mesh};
use pinmesh_tests::{pinmesh_bin, random_secret};
use tempfile::TempDir;

const CONVERGE: Duration = Duration::from_secs(60);

fn previous_bin() -> PathBuf {
    let bin =
        pinmesh_bin().with_file_name(format!("pinmesh-previous{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with scripts/previous-release.sh (scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn start(bin: &Path, home: &Path, secret: &str, bootstrap: Option<&str>) -> AgentProcess {
    let mut args = vec![
        "--secret".to_string(),
        secret.to_string(),
        "--no-ipfs".into(),
    ];
    if let Some(addr) = bootstrap {
        args.extend(["--bootstrap".to_string(), addr.to_string()]);
    }
    AgentProcess::start(bin, home, &args).expect("start an agent")
}

async fn pin_range(client: &Client, range: std::ops::Range<u64>, name: &str) {
    let batch: Vec<PinRequest> = range
        .map(|n| {
            let mut pin = PinRequest::new(sim_cid(n).to_string(), format!("{name}-{n}"));
            pin.metadata.insert("writer".into(), name.into());
            pin
        })
        .collect();
    client.pin_many(&batch).await.expect("pins");
}

/// Waits until every agent holds `pins` pins and reports every connected peer converged.
async fn converged(agents: &[&AgentProcess], pins: u64) {
    for agent in agents {
        let digest = agent
            .client
            .wait_digest(Some(pins), Some(true), CONVERGE)
            .await
            .expect("digest");
        assert_eq!(digest.pins, pins, "{} never held {pins} pins", agent.addr);
    }
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for agent in agents {
        loop {
            let report = agent.client.debug_peers().await.expect("debug peers");
            if report.converged && report.peers.iter().filter(|p| p.connected).count() >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not converge: {report:?}",
                agent.addr
            );
            // Beacons arrive on the agents' own schedule.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_both_releases_converges_and_an_old_agent_upgrades_in_place() {
    let previous = previous_bin();
    let current = pinmesh_bin();
    let secret = random_secret();
    let homes: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("dir")).collect();

    // One agent of the previous release, two of this one.
    let old = start(&previous, homes[0].path(), &secret, None);
    let b = start(&current, homes[1].path(), &secret, Some(&old.addr));
    let c = start(&current, homes[2].path(), &secret, Some(&old.addr));
    let agents = [old, b, c];
    let meshed = full_mesh(&agents, CONVERGE).await.expect("peers");
    assert_eq!(meshed, Ok(()), "the agents never all connected");
    let [old, b, c] = agents;

    pin_range(&old.client, 0..40, "old").await;
    pin_range(&b.client, 40..80, "new").await;
    converged(&[&old, &b, &c], 80).await;
    // An unpin written by each side reaches the other.
    old.client
        .unpin(&sim_cid(41).to_string())
        .await
        .expect("unpin");
    b.client
        .unpin(&sim_cid(1).to_string())
        .await
        .expect("unpin");
    converged(&[&old, &b, &c], 78).await;

    // A refusal of the previous release (it has no IPFS node to report on) is understood:
    // the old agent is left out of the cluster status, not shown as not answering.
    let old_id = old.client.id().await.expect("id").peer_id;
    let mut status = Vec::new();
    c.client
        .cluster_status(&[sim_cid(2).to_string()], &[], |line| {
            status.push(line);
            Ok(())
        })
        .await
        .expect("cluster status");
    assert_eq!(status.len(), 1);
    assert!(
        !status[0].peers.contains_key(&old_id),
        "the old agent's refusal was not understood: {status:?}"
    );

    // The upgrade: the old agent stops, and this release starts over its database.
    let before = old.client.digest().await.expect("digest");
    old.stop().expect("stop");
    let upgraded = AgentProcess::run(&current, homes[0].path()).expect("run the upgrade");
    let after = upgraded.client.digest().await.expect("digest");
    assert_eq!(
        (after.pins, &after.state_digest),
        (before.pins, &before.state_digest),
        "the database of the previous release did not open whole"
    );
    pin_range(&upgraded.client, 100..110, "upgraded").await;
    converged(&[&upgraded, &b, &c], 88).await;
}
