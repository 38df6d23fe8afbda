//! Real IPFS nodes for tests: js-ipfs daemons (or Kubo, with `KUBO_BIN`) started by
//! `scripts/ipfs-testnet.sh`, and the few RPC calls tests make on them directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pinmesh_protocol::Cid;
use tempfile::TempDir;

/// `scripts/ipfs-testnet.sh` in this checkout.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/ipfs-testnet.sh")
        .canonicalize()
        .expect("scripts/ipfs-testnet.sh exists")
}

fn run_script(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .output()
        .expect("run scripts/ipfs-testnet.sh");
    assert!(
        out.status.success(),
        "scripts/ipfs-testnet.sh {} failed (install the test nodes with \
         `scripts/ipfs-testnet.sh install`):\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IPFS nodes on loopback, connected to each other; stopped when dropped.
#[derive(Debug)]
pub struct IpfsNet {
    dir: TempDir,
    /// RPC API base URLs, `http://127.0.0.1:PORT`.
    pub apis: Vec<String>,
}

impl IpfsNet {
    pub fn start(n: usize) -> IpfsNet {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().to_string_lossy().into_owned();
        run_script(&["start", &path, &n.to_string()]);
        let env = std::fs::read_to_string(dir.path().join("nodes.env")).expect("nodes.env");
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let apis = (0..n)
            .map(|i| vars[format!("IPFS_API_{i}").as_str()].to_string())
            .collect();
        IpfsNet { dir, apis }
    }

    /// One in-process agent per node, in one cluster, retrying failures within a second;
    /// `configure` adjusts each agent's config before it starts.
    pub async fn agents(
        &self,
        configure: impl Fn(&mut pinmesh_agent::config::Config),
    ) -> Vec<crate::TestAgent> {
        let secret = crate::random_secret();
        let mut agents = Vec::new();
        let mut bootstrap = Vec::new();
        for api in &self.apis {
            let mut agent = crate::TestAgent::create(&secret, &bootstrap);
            agent.configure(|c| {
                c.ipfs.api = Some(api.clone());
                c.ipfs.retry_max = Duration::from_secs(1);
                c.ipfs.pin_stall_timeout = Duration::from_secs(30);
                c.ipfs.pin_timeout = Duration::from_secs(30);
                configure(c);
            });
            let node = agent.start().await;
            if bootstrap.is_empty() {
                bootstrap = node.addrs.clone();
            }
            agents.push(agent);
        }
        agents
    }

    fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// Stops node `i` (its repo and ports are kept).
    pub fn stop_node(&self, i: usize) {
        run_script(&["stop-node", &self.path(), &i.to_string()]);
    }

    /// Starts node `i` again and reconnects it to the others.
    pub fn start_node(&self, i: usize) {
        run_script(&["start-node", &self.path(), &i.to_string()]);
    }

    pub fn node(&self, i: usize) -> IpfsNode {
        IpfsNode {
            api: self.apis[i].clone(),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for IpfsNet {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop", &self.path()]).output();
    }
}

/// Direct RPC calls on one node, as an operator would make them by hand.
#[derive(Debug, Clone)]
pub struct IpfsNode {
    pub api: String,
    http: reqwest::Client,
}

impl IpfsNode {
    async fn post(&self, path: &str) -> Result<reqwest::Response, String> {
        let response = self
            .http
            .post(format!("{}/api/v0/{path}", self.api))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(response.text().await.unwrap_or_default())
        }
    }

    /// Adds `bytes` as a file (CIDv1) and returns its CID; `pin` as `add`'s own option.
    pub async fn add(&self, bytes: &[u8], pin: bool) -> Cid {
        self.add_with(bytes, &format!("pin={pin}")).await
    }

    /// The CID `bytes` would get, without storing them anywhere.
    pub async fn hash_only(&self, bytes: &[u8]) -> Cid {
        self.add_with(bytes, "only-hash=true&pin=false").await
    }

    async fn add_with(&self, bytes: &[u8], options: &str) -> Cid {
        let mut cids = self.add_files(&[bytes], options).await;
        cids.pop().expect("one CID")
    }

    /// Adds many small files in one request (CIDv1), not wrapped; their CIDs in order.
    pub async fn add_many(&self, files: &[Vec<u8>], pin: bool) -> Vec<Cid> {
        let files: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        self.add_files(&files, &format!("pin={pin}")).await
    }

    async fn add_files(&self, files: &[&[u8]], options: &str) -> Vec<Cid> {
        let boundary = format!("pinmesh{:016x}", rand::random::<u64>());
        let mut body = Vec::new();
        for (i, bytes) in files.iter().enumerate() {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                     filename=\"f{i}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let response = self
            .http
            .post(format!("{}/api/v0/add?cid-version=1&{options}", self.api))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .expect("add");
        assert!(response.status().is_success(), "add failed");
        let text = response.text().await.expect("add answer");
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("add json"))
            .filter_map(|l| l["Hash"].as_str().map(|h| h.parse().expect("cid")))
            .collect()
    }

    /// The bytes the node's repo holds (`repo/stat`).
    pub async fn repo_size(&self) -> u64 {
        let response = self.post("repo/stat").await.expect("repo/stat");
        let stat: serde_json::Value = response.json().await.expect("repo/stat JSON");
        // js-ipfs writes it as a string, Kubo as a number.
        let size = &stat["RepoSize"];
        (size.as_u64())
            .or_else(|| size.as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("RepoSize in {stat}"))
    }

    /// `pin/add` of one CID, as a plain HTTP client would (the benchmark's baseline).
    pub async fn pin_add(&self, cid: &Cid) -> Result<(), String> {
        self.post(&format!("pin/add?arg={cid}&timeout=60s"))
            .await
            .map(|_| ())
    }

    /// The time the node takes to stream its whole recursive and direct listings.
    pub async fn list_time(&self) -> Duration {
        let started = std::time::Instant::now();
        for kind in ["recursive", "direct"] {
            let response = self
                .http
                .post(format!(
                    "{}/api/v0/pin/ls?type={kind}&stream=true",
                    self.api
                ))
                .timeout(Duration::from_secs(600))
                .send()
                .await
                .expect("pin/ls");
            response.bytes().await.expect("pin/ls body");
        }
        started.elapsed()
    }

    /// Pins by hand, outside any agent.
    pub async fn pin(&self, cid: &Cid) {
        self.post(&format!("pin/add?arg={cid}&timeout=20s"))
            .await
            .expect("pin/add");
    }

    /// Every CID the node pins recursively.
    pub async fn recursive_pins(&self) -> Result<std::collections::HashSet<Cid>, String> {
        let response = self.post("pin/ls?type=recursive&stream=true").await?;
        let text = response.text().await.map_err(|e| e.to_string())?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
                (v["Cid"].as_str())
                    .ok_or_else(|| format!("no Cid in {line}"))?
                    .parse()
                    .map_err(|e| format!("{e}"))
            })
            .collect()
    }

    /// Whether the node holds a recursive or direct pin on `cid`.
    pub async fn is_pinned(&self, cid: &Cid) -> Result<bool, String> {
        for kind in ["recursive", "direct"] {
            match self.post(&format!("pin/ls?arg={cid}&type={kind}")).await {
                Ok(_) => return Ok(true),
                Err(message) if message.contains("not pinned") => {}
                Err(message) => return Err(message),
            }
        }
        Ok(false)
    }

    /// The bytes of a file.
    pub async fn cat(&self, cid: &Cid) -> Vec<u8> {
        self.post(&format!("cat?arg={cid}&timeout=20s"))
            .await
            .expect("cat")
            .bytes()
            .await
            .expect("cat body")
            .to_vec()
    }
}
