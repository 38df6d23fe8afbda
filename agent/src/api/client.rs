//! The control API's client, used by the CLI and by tests.

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::{
    AddedLine, ClusterStatusLine, RecoverReply, RecoverRequest, StatusFilter, StatusLine,
};
use super::{
    DigestInfo, ErrorBody, IdInfo, JoinRequest, OpReceipt, PeersReport, PinInfo, PinRequest,
    StateDump,
};
use crate::home::Home;
use crate::reconcile::Status;
use crate::swarm::SwarmInfo;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let base = base.into().trim_end_matches('/').to_string();
        Client {
            base,
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The API of the agent living in `home`, or at `api` (a URL or host:port) if given.
    pub fn for_home(home: &Home, api: Option<&str>) -> anyhow::Result<Self> {
        let base = match api {
            Some(url) => url.to_string(),
            None => {
                let path = home.api_addr();
                let addr = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "no running agent found: cannot read {} (start one with `pinmesh run`, or pass --api)",
                        path.display()
                    )
                })?;
                addr.trim().to_string()
            }
        };
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base
        } else {
            format!("http://{base}")
        };
        let token = home
            .load_token()
            .context("the API token is needed to talk to the agent")?;
        Ok(Client::new(base, token))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let response = self.send(method, path, body).await?;
        Ok(response.json().await?)
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the agent at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        Err(anyhow!(ApiFailure { status, message }))
    }

    pub async fn id(&self) -> anyhow::Result<IdInfo> {
        self.call::<(), _>(Method::GET, "/v1/id", None).await
    }

    /// The follow configuration, signed by this agent (`GET /v1/follow-config`).
    pub async fn follow_config(&self) -> anyhow::Result<crate::follow::FollowConfig> {
        self.call::<(), _>(Method::GET, "/v1/follow-config", None)
            .await
    }

    pub async fn peers(&self) -> anyhow::Result<SwarmInfo> {
        self.call::<(), _>(Method::GET, "/v1/peers", None).await
    }

    pub async fn join(&self, addr: &str) -> anyhow::Result<serde_json::Value> {
        let body = JoinRequest {
            addr: addr.to_string(),
        };
        self.call(Method::POST, "/v1/peers/join", Some(&body)).await
    }

    /// Removes a peer (`peers rm`): no more connections with it, its metrics ignored.
    pub async fn remove_peer(&self, peer: &str) -> anyhow::Result<serde_json::Value> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/peers/{peer}"), None)
            .await
    }

    pub async fn pin(&self, request: &PinRequest) -> anyhow::Result<OpReceipt> {
        self.call(Method::POST, "/v1/pins", Some(request)).await
    }

    /// Pins many CIDs in one request and one commit.
    pub async fn pin_many(&self, requests: &[PinRequest]) -> anyhow::Result<Vec<OpReceipt>> {
        self.call(Method::POST, "/v1/pins/batch", Some(&requests))
            .await
    }

    pub async fn unpin(&self, cid: &str) -> anyhow::Result<OpReceipt> {
        self.call::<(), _>(Method::DELETE, &format!("/v1/pins/{cid}"), None)
            .await
    }

    pub async fn show(&self, cid: &str) -> anyhow::Result<PinInfo> {
        self.call::<(), _>(Method::GET, &format!("/v1/pins/{cid}"), None)
            .await
    }

    /// Waits up to `wait` for `cid` to be pinned here.
    pub async fn wait_pin(&self, cid: &str, wait: std::time::Duration) -> anyhow::Result<PinInfo> {
        let path = format!("/v1/pins/{cid}?wait={}ms", wait.as_millis());
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Waits up to `wait` until this agent holds `pins` pins (and is synced, if asked).
    pub async fn wait_digest(
        &self,
        pins: Option<u64>,
        synced: Option<bool>,
        wait: std::time::Duration,
    ) -> anyhow::Result<DigestInfo> {
        let mut path = format!("/v1/debug/digest?wait={}ms", wait.as_millis());
        if let Some(p) = pins {
            path.push_str(&format!("&pins={p}"));
        }
        if let Some(s) = synced {
            path.push_str(&format!("&synced={s}"));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// Streams every pin to `each`, line by line.
    pub async fn list(
        &self,
        each: impl FnMut(PinInfo) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        self.ndjson("/v1/pins", "pin listing", each).await
    }

    /// Streams this agent's pin statuses to `each`: the given CIDs, or all; only the given
    /// statuses, or all.
    pub async fn status(
        &self,
        cids: &[String],
        filter: &[Status],
        mut each: impl FnMut(StatusLine) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut count = 0;
        for path in status_paths("/v1/status", cids, filter) {
            count += self.ndjson(&path, "status listing", &mut each).await?;
        }
        Ok(count)
    }

    /// Streams the cluster's pin statuses to `each`: every peer's, per CID; only the lines
    /// where a peer is in one of the given statuses, or all.
    pub async fn cluster_status(
        &self,
        cids: &[String],
        filter: &[StatusFilter],
        mut each: impl FnMut(ClusterStatusLine) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut count = 0;
        for path in status_paths("/v1/status/cluster", cids, filter) {
            count += self
                .ndjson(&path, "cluster status listing", &mut each)
                .await?;
        }
        Ok(count)
    }

    /// Retries failed pins and unpins now: one CID, or all. Returns how many were queued.
    pub async fn recover(&self, cid: Option<&str>) -> anyhow::Result<RecoverReply> {
        let body = RecoverRequest {
            cid: cid.map(str::to_string),
        };
        self.call(Method::POST, "/v1/recover", Some(&body)).await
    }

    /// Streams a multipart body (Kubo's `add` layout) to the agent's IPFS node.
    pub async fn add(
        &self,
        content_type: &str,
        body: reqwest::Body,
        wrap: bool,
    ) -> anyhow::Result<Vec<AddedLine>> {
        let url = format!("{}/v1/add?wrap={wrap}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot reach the agent at {}: {}",
                    self.base,
                    root_cause(&e)
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            return Err(anyhow!(ApiFailure { status, message }));
        }
        Ok(response.json().await?)
    }

    /// Streams the bytes of a file the agent's IPFS node holds into `out`; returns how many.
    pub async fn cat(
        &self,
        cid: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> anyhow::Result<u64> {
        let response = self
            .send::<()>(Method::GET, &format!("/v1/cat/{cid}"), None)
            .await?;
        let mut stream = response.bytes_stream();
        let mut written = 0;
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| anyhow!("{cid}: read interrupted: {}", root_cause(&e)))?;
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        out.flush()?;
        Ok(written)
    }

    /// GETs an NDJSON listing and hands each line to `each`.
    async fn ndjson<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        mut each: impl FnMut(T) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let response = self.send::<()>(Method::GET, path, None).await?;
        let mut stream = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut count = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| anyhow!("{what} interrupted: {}", root_cause(&e)))?;
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                each(
                    serde_json::from_slice(&line)
                        .with_context(|| format!("malformed {what} line"))?,
                )?;
                count += 1;
            }
        }
        if !buf.is_empty() {
            bail!("{what} ended in the middle of a line: the answer is incomplete");
        }
        Ok(count)
    }

    pub async fn reconciler(&self) -> anyhow::Result<crate::reconcile::Report> {
        self.call::<(), _>(Method::GET, "/v1/debug/reconciler", None)
            .await
    }

    pub async fn digest(&self) -> anyhow::Result<DigestInfo> {
        self.call::<(), _>(Method::GET, "/v1/debug/digest", None)
            .await
    }

    pub async fn debug_peers(&self) -> anyhow::Result<PeersReport> {
        self.call::<(), _>(Method::GET, "/v1/debug/peers", None)
            .await
    }

    /// Asks the agent to request fresh status from its connected peers.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .call::<(), _>(Method::POST, "/v1/debug/refresh", None)
            .await?;
        Ok(())
    }

    /// Refuses (`cut`) or allows again connections with `peers` (a network split, for tests).
    pub async fn cut(&self, peers: &[libp2p::PeerId], cut: bool) -> anyhow::Result<()> {
        let request = super::types::CutRequest {
            peers: peers.to_vec(),
            cut,
        };
        let _: serde_json::Value = self
            .call(Method::POST, "/v1/debug/cut", Some(&request))
            .await?;
        Ok(())
    }

    pub async fn state(&self) -> anyhow::Result<StateDump> {
        self.call::<(), _>(Method::GET, "/v1/debug/state", None)
            .await
    }
}

/// `path?cids=A,B&filter=S,T` (both comma-separated; empty means all).
/// CIDs per status request: many CIDs go in several requests, each URL well under the limits
/// of HTTP servers and clients (about 6 kB).
const STATUS_CIDS_PER_REQUEST: usize = 100;

/// The request paths for a status query: one for everything, or one per run of CIDs.
fn status_paths(path: &str, cids: &[String], filter: &[impl ToString]) -> Vec<String> {
    let filter: Vec<String> = filter.iter().map(ToString::to_string).collect();
    let filter = filter.join(",");
    if cids.is_empty() {
        return vec![format!("{path}?cids=&filter={filter}")];
    }
    cids.chunks(STATUS_CIDS_PER_REQUEST)
        .map(|chunk| format!("{path}?cids={}&filter={filter}", chunk.join(",")))
        .collect()
}

/// A non-success answer from the API.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
}

pub fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
