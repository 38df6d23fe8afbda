//! `pinmesh run` as a separate process: the one harness of the black-box tests and of the
//! benchmarks that measure agents from outside.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use pinmesh_agent::api::client::Client;

/// One `pinmesh run` process; killed when dropped.
pub struct AgentProcess {
    child: Child,
    pub client: Client,
    /// Its API's base URL, as it printed it.
    pub api: String,
    /// Its first libp2p listen address, with `/p2p/`.
    pub addr: String,
    pub home: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    /// `pinmesh init` in `home` on loopback with free ports, plus `init_args`; then `run`.
    /// Returns once the agent printed its API address.
    pub fn start(bin: &Path, home: &Path, init_args: &[String]) -> anyhow::Result<AgentProcess> {
        init(bin, home, init_args)?;
        Self::run(bin, home)
    }

    /// `pinmesh run` in an existing home.
    /// Its warnings and errors go to `home/agent.log`.
    pub fn run(bin: &Path, home: &Path) -> anyhow::Result<AgentProcess> {
        Self::run_with(bin, home, &[])
    }

    /// `pinmesh run ARGS` in an existing home.
    pub fn run_with(bin: &Path, home: &Path, args: &[&str]) -> anyhow::Result<AgentProcess> {
        let mut command = vec!["run"];
        command.extend_from_slice(args);
        Self::command(bin, home, &command)
    }

    /// `pinmesh --dir HOME COMMAND...`, a command that runs an agent (`run`, `follow NAME
    /// run`), in an existing home.
    pub fn command(bin: &Path, home: &Path, command: &[&str]) -> anyhow::Result<AgentProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("agent.log"))
            .context("open agent.log")?;
        let mut child = Command::new(bin)
            .arg("--dir")
            .arg(home)
            .args(command)
            .env("PINMESH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawn pinmesh run")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (mut api, mut addr) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(a) = line.strip_prefix("listening on ") {
                addr.get_or_insert_with(|| a.to_string());
            }
            if let Some(a) = line.strip_prefix("api: ") {
                api = Some(a.to_string());
                break;
            }
        }
        let token = std::fs::read_to_string(home.join("api.token"))?;
        let api = api.context("agent printed no API address")?;
        Ok(AgentProcess {
            child,
            client: Client::new(api.clone(), token.trim()),
            api,
            addr: addr.context("agent printed no listen address")?,
            home: home.to_path_buf(),
        })
    }

    /// Stops the agent as a supervisor would (SIGTERM: a final flush, a clean close) and
    /// waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM failed");
        }
        Ok(self.child.wait()?)
    }

    /// Kills the agent with SIGKILL (no flush, no close) and reaps it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

/// `pinmesh init` in `home` on loopback with free ports, plus `init_args`.
pub fn init(bin: &Path, home: &Path, init_args: &[String]) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .arg("--dir")
        .arg(home)
        .arg("init")
        .args(crate::LOOPBACK)
        .args(init_args)
        .output()
        .context("run pinmesh init")?;
    if !out.status.success() {
        bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Waits (up to `timeout`) until every agent is connected to every other. `Err` holds the
/// connection count of the first agent that was not, at the timeout.
pub async fn full_mesh(
    agents: &[AgentProcess],
    timeout: std::time::Duration,
) -> anyhow::Result<Result<(), usize>> {
    let deadline = tokio::time::Instant::now() + timeout;
    for a in agents {
        loop {
            let peers = a.client.peers().await?.peers;
            let connected = peers.iter().filter(|p| p.connected).count();
            if connected + 1 >= agents.len() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(Err(connected));
            }
            // Connections form on the agents' own schedule (identify, then Kademlia dials).
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(Ok(()))
}

/// A benchmark's checks on its command line: the `pinmesh` binary exists; the phases asked.
pub fn bench_setup<'a>(bin: &Path, phases: &'a str) -> anyhow::Result<Vec<&'a str>> {
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            bin.display()
        );
    }
    Ok(phases.split(',').map(str::trim).collect())
}
