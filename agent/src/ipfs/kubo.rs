//! [`PinBackend`] over Kubo's HTTP RPC API (`POST /api/v0/<command>`).
//!
//! Written against Kubo's documented semantics and checked against js-ipfs, an independent
//! implementation of the same API, so it tolerates where real nodes differ: numbers sent as
//! JSON strings, CIDs printed in another base or version, progress lines that never come,
//! `name` ignored. Every request carries the node-side `timeout=` and a client-side limit: a
//! node keeps fetching a pin's blocks after its client gives up, so the node must be told too.

use std::time::Duration;

use async_trait::async_trait;
use cid::Cid;
use futures::StreamExt;
use libp2p::Multiaddr;
use pinmesh_protocol::PinMode;
use serde::Deserialize;

use self::wire::{AddLine, ErrorBody, IdBody, Line, PinAddLine, PinLsLine, RepoStatBody};
use super::{
    AddInput, Added, ByteStream, IpfsError, NodeInfo, PinBackend, PinLimits, RepoStat, same_content,
};

#[cfg(test)]
mod tests;
mod wire;

/// Node-side limit on a full listing (the client side is a no-data timeout per chunk).
const LIST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest line a listing or a pin may send; a node sending more is misbehaving.
const MAX_LINE: usize = 64 << 10;

/// A Kubo-compatible RPC endpoint.
#[derive(Debug, Clone)]
pub struct KuboBackend {
    /// `http://host:port`, without `/api/v0`.
    base: String,
    http: reqwest::Client,
    /// `Authorization` header value, when the node wants one.
    auth: Option<String>,
    /// Limit on every call but pins and listings.
    call_timeout: Duration,
}

impl KuboBackend {
    /// `url` is the node's API address (`http://127.0.0.1:5001`, a trailing `/api/v0` is
    /// accepted); `auth` is Kubo's `API.Authorizations` syntax: `bearer:TOKEN` or
    /// `basic:USER:PASSWORD`.
    pub fn new(url: &str, auth: Option<&str>, call_timeout: Duration) -> Result<Self, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("IPFS API {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "IPFS API {url:?} must be an http(s) URL like http://127.0.0.1:5001"
            ));
        }
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/api/v0")
            .to_string();
        let auth = auth.map(parse_auth).transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(KuboBackend {
            base,
            http,
            auth,
            call_timeout,
        })
    }

    /// Sends one command. Non-2xx answers become [`IpfsError::Refused`] with the node's message.
    /// `timeout` bounds the whole call; `headers_within` the wait for the answer to begin (a
    /// node that accepts connections but never answers must not hold a caller forever).
    async fn post(
        &self,
        call: &'static str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
        headers_within: Duration,
    ) -> Result<reqwest::Response, IpfsError> {
        let mut request = self.request(call, query);
        if let Some(limit) = timeout {
            request = request.timeout(limit);
        }
        self.send(call, request, headers_within).await
    }

    /// A command's request, authorized.
    fn request(&self, call: &'static str, query: &[(&str, String)]) -> reqwest::RequestBuilder {
        let url = format!("{}/api/v0/{call}", self.base);
        let request = self.http.post(&url).query(query);
        match &self.auth {
            Some(auth) => request.header(reqwest::header::AUTHORIZATION, auth),
            None => request,
        }
    }

    /// Sends a request built by [`Self::request`]; see [`Self::post`].
    async fn send(
        &self,
        call: &'static str,
        request: reqwest::RequestBuilder,
        headers_within: Duration,
    ) -> Result<reqwest::Response, IpfsError> {
        let response = tokio::time::timeout(headers_within, request.send())
            .await
            .map_err(|_| IpfsError::Timeout {
                call,
                after: headers_within,
            })?
            .map_err(|e| self.transport(call, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| {
                let text = body.trim();
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", truncate(text, 200))
                }
            });
        Err(IpfsError::Refused { call, message })
    }

    /// One command answered by one JSON object.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        call: &'static str,
        query: &[(&str, String)],
    ) -> Result<T, IpfsError> {
        let mut query = query.to_vec();
        query.push(("timeout", go_duration(self.call_timeout)));
        let response = self
            .post(call, &query, Some(self.call_timeout), self.call_timeout)
            .await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(call, e))?;
        serde_json::from_slice(&body).map_err(|e| IpfsError::Protocol {
            call,
            message: format!("{e} in {}", truncate(&String::from_utf8_lossy(&body), 200)),
        })
    }

    /// No bytes of a streamed answer for `call_timeout`.
    fn idle(&self, call: &'static str) -> IpfsError {
        IpfsError::Timeout {
            call,
            after: self.call_timeout,
        }
    }

    fn transport(&self, call: &'static str, err: reqwest::Error) -> IpfsError {
        if err.is_timeout() {
            IpfsError::Timeout {
                call,
                after: self.call_timeout,
            }
        } else {
            IpfsError::Unreachable {
                url: self.base.clone(),
                reason: root_cause(&err),
            }
        }
    }

    /// Reads an NDJSON body as `T`s, line by line; a line carrying `Message` is an error the node
    /// reported after its 200. `on_item` returns `Some` to stop early. Waiting longer than
    /// `idle` for the next bytes fails with `on_idle`.
    async fn json_lines<T: serde::de::DeserializeOwned, R>(
        &self,
        call: &'static str,
        response: reqwest::Response,
        idle: Duration,
        on_idle: impl Fn() -> IpfsError,
        mut on_item: impl FnMut(T) -> Result<Option<R>, IpfsError>,
    ) -> Result<Option<R>, IpfsError> {
        let mut on_line = |line: &[u8]| {
            let line: Line<T> = serde_json::from_slice(line).map_err(|e| IpfsError::Protocol {
                call,
                message: e.to_string(),
            })?;
            match line.message {
                Some(message) => Err(IpfsError::Refused { call, message }),
                None => on_item(line.body),
            }
        };
        let mut body = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(idle, body.next()).await {
                Err(_) => return Err(on_idle()),
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| self.transport(call, e))?,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = line.trim_ascii();
                if !line.is_empty()
                    && let Some(done) = on_line(line)?
                {
                    return Ok(Some(done));
                }
            }
            if buffer.len() > MAX_LINE {
                return Err(IpfsError::Protocol {
                    call,
                    message: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
        }
        let rest = buffer.trim_ascii();
        if rest.is_empty() {
            Ok(None)
        } else {
            on_line(rest)
        }
    }
}

#[async_trait]
impl PinBackend for KuboBackend {
    fn describe(&self) -> String {
        format!("IPFS RPC API at {}", self.base)
    }

    async fn id(&self) -> Result<NodeInfo, IpfsError> {
        const CALL: &str = "id";
        let id: IdBody = self.call(CALL, &[]).await?;
        let peer = id.id.parse().map_err(|e| IpfsError::Protocol {
            call: CALL,
            message: format!("the node's ID {:?} is not a peer id: {e}", id.id),
        })?;
        Ok(NodeInfo {
            id: peer,
            // Transports this build does not know are not addresses it could pass on.
            addresses: (id.addresses.unwrap_or_default().iter())
                .filter_map(|a| a.parse().ok())
                .collect(),
            agent_version: id.agent_version.unwrap_or_default(),
        })
    }

    async fn pin(
        &self,
        cid: &Cid,
        mode: PinMode,
        name: &str,
        limits: PinLimits,
    ) -> Result<(), IpfsError> {
        const CALL: &str = "pin/add";
        let query = [
            ("arg", cid.to_string()),
            ("recursive", (mode == PinMode::Recursive).to_string()),
            ("progress", "true".into()),
            ("name", name.to_string()),
            ("timeout", go_duration(limits.total)),
        ];
        let work = async {
            // Nodes that report no progress answer only when done: then the stall limit is
            // also the limit on the whole pin.
            let response = self.post(CALL, &query, None, limits.stall).await?;
            // Kubo repeats `{"Progress":n}` every 500 ms whether n grows or not: only growth
            // counts as progress.
            let (mut best, mut grew) = (0u64, std::time::Instant::now());
            self.json_lines(
                CALL,
                response,
                limits.stall,
                || IpfsError::Stalled(limits.stall),
                |answer: PinAddLine| {
                    if let Some(progress) = answer.progress {
                        if progress > best {
                            (best, grew) = (progress, std::time::Instant::now());
                        } else if grew.elapsed() >= limits.stall {
                            return Err(IpfsError::Stalled(limits.stall));
                        }
                    }
                    let confirmed = answer
                        .pins
                        .iter()
                        .flatten()
                        .filter_map(|p| p.parse::<Cid>().ok())
                        .any(|p| same_content(&p, cid));
                    Ok(confirmed.then_some(()))
                },
            )
            .await?
            .ok_or_else(|| IpfsError::Protocol {
                call: CALL,
                message: format!("the answer ended without confirming {cid}"),
            })
        };
        // The node was told `limits.total`; give it a moment to say so itself.
        let limit = limits.total + Duration::from_secs(5);
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| IpfsError::Timeout {
                call: CALL,
                after: limits.total,
            })?
    }

    async fn pinned(&self, cid: &Cid) -> Result<Option<PinMode>, IpfsError> {
        // By type, both at once: `type=all` would also look for the CID inside every DAG.
        let ask = |kind: &'static str| async move {
            let query = [("arg", cid.to_string()), ("type", kind.to_string())];
            match self.call::<serde_json::Value>("pin/ls", &query).await {
                Ok(_) => Ok(true),
                Err(IpfsError::Refused { message, .. })
                    if message.to_ascii_lowercase().contains("not pinned") =>
                {
                    Ok(false)
                }
                Err(err) => Err(err),
            }
        };
        let (recursive, direct) = futures::join!(ask("recursive"), ask("direct"));
        Ok(if recursive? {
            Some(PinMode::Recursive)
        } else if direct? {
            Some(PinMode::Direct)
        } else {
            None
        })
    }

    async fn unpin(&self, cid: &Cid) -> Result<(), IpfsError> {
        // `recursive=true` removes a recursive or a direct pin.
        let query = [("arg", cid.to_string()), ("recursive", "true".into())];
        match self.call::<serde_json::Value>("pin/rm", &query).await {
            Ok(_) => Ok(()),
            Err(IpfsError::Refused { message, .. })
                if message.to_ascii_lowercase().contains("not pinned") =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn list(
        &self,
        mode: PinMode,
        sink: &mut (dyn FnMut(Cid) + Send),
    ) -> Result<u64, IpfsError> {
        const CALL: &str = "pin/ls";
        let kind = match mode {
            PinMode::Recursive => "recursive",
            PinMode::Direct => "direct",
        };
        let query = [
            ("type", kind.to_string()),
            ("stream", "true".into()),
            ("timeout", go_duration(LIST_TIMEOUT)),
        ];
        let response = self.post(CALL, &query, None, self.call_timeout).await?;
        let mut count = 0u64;
        self.json_lines::<PinLsLine, ()>(
            CALL,
            response,
            self.call_timeout,
            || self.idle(CALL),
            |item| {
                let protocol = |message: String| IpfsError::Protocol {
                    call: CALL,
                    message,
                };
                // Streamed: one `{"Cid","Type"}` per line. Older nodes answer one `{"Keys"}`.
                let cids = item.cid.into_iter().chain(item.keys.into_keys());
                for text in cids {
                    let cid = text
                        .parse::<Cid>()
                        .map_err(|e| protocol(format!("listed CID {text:?}: {e}")))?;
                    sink(cid);
                    count += 1;
                }
                Ok(None)
            },
        )
        .await?;
        Ok(count)
    }

    async fn repo_stat(&self) -> Result<RepoStat, IpfsError> {
        let stat: RepoStatBody = self
            .call("repo/stat", &[("size-only", "true".into())])
            .await?;
        Ok(RepoStat {
            repo_size: stat.repo_size.0,
            storage_max: stat.storage_max.0,
            path: stat.repo_path.map(Into::into),
        })
    }

    async fn add(&self, input: AddInput, limit: Duration) -> Result<Vec<Added>, IpfsError> {
        const CALL: &str = "add";
        let query = [
            ("cid-version", "1".to_string()),
            ("pin", "false".into()),
            // Progress lines keep the answer alive through large files (they carry no hash).
            ("progress", "true".into()),
            ("wrap-with-directory", input.wrap.to_string()),
            ("timeout", go_duration(limit)),
        ];
        let request = self
            .request(CALL, &query)
            .header(reqwest::header::CONTENT_TYPE, input.content_type)
            .body(reqwest::Body::wrap_stream(input.body));
        let work = async {
            // The answer begins once the upload is through: only the whole limit applies.
            let response = self.send(CALL, request, limit).await?;
            let mut added = Vec::new();
            self.json_lines::<AddLine, ()>(
                CALL,
                response,
                self.call_timeout,
                || self.idle(CALL),
                |item| {
                    // Progress lines carry no hash.
                    if let Some(hash) = item.hash {
                        let cid = hash.parse::<Cid>().map_err(|e| IpfsError::Protocol {
                            call: CALL,
                            message: format!("added CID {hash:?}: {e}"),
                        })?;
                        added.push(Added {
                            name: item.name.unwrap_or_default(),
                            cid,
                            size: item.size.map_or(0, |s| s.0),
                        });
                    }
                    Ok(None)
                },
            )
            .await?;
            if added.is_empty() {
                return Err(IpfsError::Protocol {
                    call: CALL,
                    message: "the node added nothing".into(),
                });
            }
            Ok(added)
        };
        tokio::time::timeout(limit + Duration::from_secs(5), work)
            .await
            .map_err(|_| IpfsError::Timeout {
                call: CALL,
                after: limit,
            })?
    }

    async fn connect(&self, addr: &Multiaddr) -> Result<(), IpfsError> {
        self.call::<serde_json::Value>("swarm/connect", &[("arg", addr.to_string())])
            .await
            .map(|_| ())
    }

    async fn cat(&self, cid: &Cid) -> Result<ByteStream, IpfsError> {
        const CALL: &str = "cat";
        // No node-side `timeout=`: it bounds the whole command, which would cut large files
        // short. Stalls are bounded per chunk below. Kubo reports an error after the first
        // byte only in an HTTP trailer, which this client cannot read; with `offline` the node
        // reads its own blocks only, so such errors are unlikely.
        let query = [
            ("arg", cid.to_string()),
            // Only what the node holds; Kubo's global option (others ignore it).
            ("offline", "true".into()),
        ];
        let response = self.post(CALL, &query, None, self.call_timeout).await?;
        let idle = self.call_timeout;
        let chunks = futures::stream::unfold(Some(response), move |response| async move {
            let mut response = response?;
            match tokio::time::timeout(idle, response.chunk()).await {
                Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(response))),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((
                    Err(IpfsError::Protocol {
                        call: CALL,
                        message: format!("the answer broke off: {e}"),
                    }),
                    None,
                )),
                Err(_) => Some((
                    Err(IpfsError::Timeout {
                        call: CALL,
                        after: idle,
                    }),
                    None,
                )),
            }
        });
        Ok(chunks.boxed())
    }
}

/// `bearer:TOKEN` or `basic:USER:PASSWORD` (Kubo's `API.Authorizations` syntax) to a header.
fn parse_auth(text: &str) -> Result<String, String> {
    use base64::Engine;
    match text.split_once(':') {
        Some(("bearer", token)) if !token.is_empty() => Ok(format!("Bearer {token}")),
        Some(("basic", userpass)) if userpass.contains(':') => Ok(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(userpass)
        )),
        _ => Err("ipfs.auth must be \"bearer:TOKEN\" or \"basic:USER:PASSWORD\"".into()),
    }
}

/// A duration in Go's syntax, which Kubo's `timeout=` parses.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The innermost error's text: reqwest's own wording says only "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
