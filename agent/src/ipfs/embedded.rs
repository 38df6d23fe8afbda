//! [`PinBackend`] over an IPFS node running inside the agent ([rust-ipfs]): the default when no
//! Kubo API is configured, so a fresh machine runs `pinmesh run` with no other daemon.
//!
//! The node is a separate libp2p peer from the agent: its own identity (`DIR/ipfs/identity.key`),
//! its own listen addresses (`ipfs.listen`), and its repo (blocks and pins) under `DIR/ipfs/`. It
//! fetches blocks from other IPFS nodes over bitswap, from the nodes it is connected to; agents
//! connect their nodes to each other (see `crate::node`'s peering), so content added on one agent
//! can be pinned on the others.
//!
//! Pins have no progress reports here; the no-progress limit is applied per block fetched instead
//! (a pin that waits longer than `stall` for any one block fails as stalled). There is no garbage
//! collection: rust-ipfs's `gc` is not safe with CIDv0 pins (its blockstore lists blocks as v1
//! while pins keep the CID as given), so unpinned blocks stay in the repo.
//!
//! [rust-ipfs]: https://docs.rs/rust-ipfs

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use pinmesh_protocol::PinMode;
use rust_ipfs::Ipfs;
use rust_ipfs::builder::DefaultIpfsBuilder;
use rust_ipfs::unixfs::{AddOpt, UnixfsStatus};
use rust_unixfs::dir::builder::{BufferingTreeBuilder, TreeOptions};
use tokio::sync::mpsc;

use super::{AddInput, Added, ByteStream, IpfsError, NodeInfo, PinBackend, PinLimits, RepoStat};

/// Connections between IPFS nodes stay open this long without traffic (seconds). Bitswap asks
/// only connected nodes, so the links agents make between their nodes must not lapse quickly.
const IDLE_CONNECTION_SECS: u64 = 24 * 3600;

/// What [`EmbeddedBackend::start`] needs.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The node's home: identity, blocks, pins.
    pub dir: PathBuf,
    /// TCP listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Limit on calls other than pins and adds.
    pub call_timeout: Duration,
}

/// An in-process IPFS node.
pub struct EmbeddedBackend {
    ipfs: Ipfs,
    peer_id: PeerId,
    call_timeout: Duration,
    /// The repo's directory, reported by `repo_stat` (its filesystem bounds the free space).
    dir: PathBuf,
}

impl EmbeddedBackend {
    /// Opens (or creates) the node's repo under `options.dir` and starts listening. Fails with
    /// one clear line when the repo is in use by another process or an address is taken.
    pub async fn start(options: EmbeddedOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(&options.dir)
            .with_context(|| format!("cannot create {}", options.dir.display()))?;
        let keypair = load_or_create_identity(&options.dir.join("identity.key"))?;
        wait_repo_unlocked(&options.dir).await;
        let peer_id = keypair.public().to_peer_id();
        let ipfs = DefaultIpfsBuilder::with_keypair(&keypair)?
            .with_identify(Default::default())
            .with_bitswap()
            .with_ping(Default::default())
            .enable_tcp()
            .set_idle_connection_timeout(IDLE_CONNECTION_SECS)
            .set_path(&options.dir)
            .start()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start the embedded IPFS node in {}: {e:#} (is another agent using this directory?)",
                    options.dir.display()
                )
            })?;
        for addr in &options.listen {
            if let Err(e) = ipfs.add_listening_address(addr.clone()).await {
                shut_down(ipfs).await;
                anyhow::bail!(
                    "embedded IPFS node cannot listen on {addr}: {e:#} (change [ipfs] listen, or set ipfs.api to use a Kubo daemon instead)"
                );
            }
        }
        Ok(EmbeddedBackend {
            ipfs,
            peer_id,
            call_timeout: options.call_timeout,
            dir: options.dir,
        })
    }

    /// The addresses other nodes dial, each ending in `/p2p/<node id>`: what the node listens
    /// on now (an unspecified address is reported once per interface, as interfaces appear).
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, IpfsError> {
        let listening = self.within("id", self.ipfs.listening_addresses()).await?;
        Ok(listening
            .into_iter()
            .map(|a| a.with(Protocol::P2p(self.peer_id)))
            .collect())
    }

    async fn within<T>(
        &self,
        call: &'static str,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> Result<T, IpfsError> {
        match tokio::time::timeout(self.call_timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(refused(call, &e)),
            Err(_) => Err(IpfsError::Timeout {
                call,
                after: self.call_timeout,
            }),
        }
    }

    /// Stores one file from `chunks`; returns its CID and size.
    async fn add_file(
        &self,
        field: &mut multer::Field<'_>,
        name: &str,
    ) -> Result<(Cid, u64), IpfsError> {
        const CALL: &str = "add";
        // The field borrows the multipart reader; the adder wants an owned stream: bridge them.
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let stream = crate::http::tokio_stream_from(rx).boxed();
        let mut adder = self.ipfs.add_unixfs(AddOpt::Stream(stream)).pin(false);
        let feed = async move {
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the adder stopped; its error is reported
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return Err(bad_body(&e));
                    }
                }
            }
        };
        let run = async {
            while let Some(status) = adder.next().await {
                match status {
                    UnixfsStatus::CompletedStatus {
                        path,
                        written,
                        total_size,
                    } => {
                        let cid =
                            path.root()
                                .cid()
                                .copied()
                                .ok_or_else(|| IpfsError::Protocol {
                                    call: CALL,
                                    message: format!("{name}: the node returned no CID"),
                                })?;
                        return Ok((cid, total_size.unwrap_or(written) as u64));
                    }
                    UnixfsStatus::FailedStatus { error, .. } => {
                        return Err(IpfsError::Refused {
                            call: CALL,
                            message: format!("{name}: {error:#}"),
                        });
                    }
                    UnixfsStatus::ProgressStatus { .. } => {}
                }
            }
            Err(IpfsError::Protocol {
                call: CALL,
                message: format!("{name}: the adder ended without a result"),
            })
        };
        let (fed, added) = tokio::join!(feed, run);
        fed?;
        added
    }
}

#[async_trait]
impl PinBackend for EmbeddedBackend {
    fn describe(&self) -> String {
        format!("embedded IPFS node {}", self.peer_id)
    }

    async fn id(&self) -> Result<NodeInfo, IpfsError> {
        Ok(NodeInfo {
            id: self.peer_id,
            addresses: self.addresses().await?,
            agent_version: format!("pinmesh/{} (embedded rust-ipfs)", env!("CARGO_PKG_VERSION")),
        })
    }

    async fn pin(
        &self,
        cid: &Cid,
        mode: PinMode,
        _name: &str,
        limits: PinLimits,
    ) -> Result<(), IpfsError> {
        // Each block fetch is bounded by `stall`: a pin that waits that long for any one block
        // has stopped making progress. `exit_on_error` fails the pin when a child block cannot
        // be fetched instead of recording a pin whose DAG is incomplete.
        let mut op = self
            .ipfs
            .insert_pin(cid)
            .timeout(limits.stall)
            .exit_on_error();
        if mode == PinMode::Recursive {
            op = op.recursive();
        }
        match tokio::time::timeout(limits.total, op).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                if text.contains("already pinned recursively") {
                    // A direct pin asked for what the node already holds in full.
                    Ok(())
                } else if text.contains("timed out") {
                    Err(IpfsError::Stalled(limits.stall))
                } else {
                    Err(refused("pin/add", &e))
                }
            }
            Err(_) => Err(IpfsError::Timeout {
                call: "pin/add",
                after: limits.total,
            }),
        }
    }

    async fn pinned(&self, cid: &Cid) -> Result<Option<PinMode>, IpfsError> {
        for (mode, wanted) in [
            (PinMode::Recursive, rust_ipfs::PinMode::Recursive),
            (PinMode::Direct, rust_ipfs::PinMode::Direct),
        ] {
            let found = self
                .within("pin/ls", async {
                    match self.ipfs.query_pins(vec![*cid], Some(wanted)).await {
                        Ok(found) => Ok(!found.is_empty()),
                        // The repo answers "not pinned" as an error.
                        Err(e) if format!("{e}").contains("is not pinned") => Ok(false),
                        Err(e) => Err(e),
                    }
                })
                .await?;
            if found {
                return Ok(Some(mode));
            }
        }
        Ok(None)
    }

    async fn unpin(&self, cid: &Cid) -> Result<(), IpfsError> {
        let recursive = match self.pinned(cid).await? {
            None => return Ok(()),
            Some(mode) => mode == PinMode::Recursive,
        };
        self.within("pin/rm", async {
            let op = self.ipfs.remove_pin(cid);
            if recursive {
                op.recursive().await
            } else {
                op.await
            }
        })
        .await
    }

    async fn list(
        &self,
        mode: PinMode,
        sink: &mut (dyn FnMut(Cid) + Send),
    ) -> Result<u64, IpfsError> {
        let wanted = match mode {
            PinMode::Recursive => rust_ipfs::PinMode::Recursive,
            PinMode::Direct => rust_ipfs::PinMode::Direct,
        };
        let mut pins = self.ipfs.list_pins(Some(wanted)).await;
        let mut count = 0;
        while let Some(item) = pins.next().await {
            let (cid, _) = item.map_err(|e| refused("pin/ls", &e))?;
            sink(cid);
            count += 1;
        }
        Ok(count)
    }

    async fn repo_stat(&self) -> Result<RepoStat, IpfsError> {
        let repo_size = self
            .within("repo/stat", self.ipfs.repo().get_total_size())
            .await?;
        Ok(RepoStat {
            repo_size: repo_size as u64,
            // No limit of its own: `ipfs.storage_max` and the filesystem bound it.
            storage_max: 0,
            path: Some(self.dir.clone()),
        })
    }

    async fn add(&self, input: AddInput, limit: Duration) -> Result<Vec<Added>, IpfsError> {
        tokio::time::timeout(limit, self.add_all(input))
            .await
            .map_err(|_| IpfsError::Timeout {
                call: "add",
                after: limit,
            })?
    }

    async fn connect(&self, addr: &Multiaddr) -> Result<(), IpfsError> {
        const CALL: &str = "swarm/connect";
        let mut addr = addr.clone();
        let Some(Protocol::P2p(peer)) = addr.pop() else {
            return Err(IpfsError::Refused {
                call: CALL,
                message: format!("{addr} does not end in /p2p/<peer id>"),
            });
        };
        if peer == self.peer_id {
            return Ok(());
        }
        self.within(CALL, async {
            if self.ipfs.is_connected(peer).await? {
                return Ok(());
            }
            let dial = rust_ipfs::DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .build();
            match self.ipfs.connect(dial).await {
                Ok(_) => Ok(()),
                // Two nodes told of each other at once dial each other at once; one of the
                // two handshakes fails, and the nodes are connected by the other.
                Err(_) if self.ipfs.is_connected(peer).await? => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn cat(&self, cid: &Cid) -> Result<ByteStream, IpfsError> {
        let stream = self.ipfs.cat_unixfs(*cid).local().map(|chunk| {
            chunk.map_err(|e| IpfsError::Refused {
                call: "cat",
                message: format!("{e:#}"),
            })
        });
        Ok(stream.boxed())
    }

    async fn stop(&self) {
        shut_down(self.ipfs.clone()).await;
    }
}

impl EmbeddedBackend {
    /// Reads a multipart body in Kubo's `add` layout: files are stored as they arrive, then the
    /// directories are built from their paths; the root comes last.
    async fn add_all(&self, input: AddInput) -> Result<Vec<Added>, IpfsError> {
        const CALL: &str = "add";
        let boundary = multer::parse_boundary(&input.content_type).map_err(|e| bad_body(&e))?;
        let mut multipart = multer::Multipart::new(input.body, boundary);
        let mut options = TreeOptions::default();
        if input.wrap {
            options.wrap_with_directory();
        }
        let mut tree = BufferingTreeBuilder::new(options);
        let mut added = Vec::new();
        let mut directories = false;
        while let Some(mut field) = multipart.next_field().await.map_err(|e| bad_body(&e))? {
            let raw = field.file_name().unwrap_or_default().to_string();
            let name = entry_name(&raw).map_err(|message| IpfsError::Refused {
                call: CALL,
                message,
            })?;
            let is_dir = field
                .content_type()
                .is_some_and(|m| m.essence_str() == "application/x-directory");
            let tree_error =
                |e: rust_unixfs::dir::builder::TreeBuildingFailed| IpfsError::Refused {
                    call: CALL,
                    message: format!("{name}: {e}"),
                };
            if is_dir {
                directories = true;
                tree.set_metadata(&name, Default::default())
                    .map_err(tree_error)?;
                continue;
            }
            let (cid, size) = self.add_file(&mut field, &name).await?;
            tree.put_link(&name, cid, size).map_err(tree_error)?;
            added.push(Added {
                name: name.clone(),
                cid,
                size,
            });
        }
        if added.is_empty() && !directories {
            return Err(IpfsError::Refused {
                call: CALL,
                message: "nothing to add".into(),
            });
        }
        if !directories && !input.wrap && added.len() == 1 {
            return Ok(added);
        }
        // Directory nodes come out children first, the root last. The shards of a large
        // directory come out too, with no path of their own: stored, not listed.
        let mut nodes = tree.build();
        let mut root = None;
        while let Some(node) = nodes.next_borrowed() {
            let node = node.map_err(|e| IpfsError::Refused {
                call: CALL,
                message: format!("cannot build the directory: {e}"),
            })?;
            let block = rust_ipfs::Block::new(*node.cid, node.block.to_vec()).map_err(|e| {
                IpfsError::Protocol {
                    call: CALL,
                    message: format!("directory block: {e}"),
                }
            })?;
            self.ipfs
                .put_block(&block)
                .await
                .map_err(|e| refused(CALL, &e))?;
            let entry = Added {
                name: node.path.to_string(),
                cid: *node.cid,
                size: node.total_size,
            };
            if let Some(previous) = root.replace(entry)
                && !previous.name.is_empty()
            {
                added.push(previous);
            }
        }
        // The last node is the root, whatever its name (`""` when wrapped).
        added.extend(root);
        Ok(added)
    }
}

/// A part's `filename`: percent-decoded, relative, without `.` or `..` segments.
fn entry_name(raw: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                bytes.push(v);
                rest = &tail[2..];
                continue;
            }
        }
        bytes.push(b);
        rest = tail;
    }
    let name = String::from_utf8(bytes).map_err(|_| format!("file name {raw:?} is not UTF-8"))?;
    if name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("file name {name:?} is not a relative path"));
    }
    Ok(name)
}

fn bad_body(err: &multer::Error) -> IpfsError {
    IpfsError::Refused {
        call: "add",
        message: format!("malformed multipart body: {err}"),
    }
}

fn refused(call: &'static str, err: &anyhow::Error) -> IpfsError {
    IpfsError::Refused {
        call,
        message: format!("{err:#}"),
    }
}

/// How long a stop waits for the node's listeners to close. rust-ipfs stops its node by
/// aborting the task that owns the swarm and a clone of the repo; the runtime drops that task a
/// moment later, and only then are its ports and its repo free.
const RELEASE_LIMIT: Duration = Duration::from_secs(10);

/// How long a start waits for a repo lock that a node stopped a moment ago in this process
/// still holds (see [`RELEASE_LIMIT`]); a repo locked by another process fails this much later.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Stops the node and returns once nothing listens on its ports any more, so that a start right
/// after (the same agent restarted in this process) can listen on them again.
async fn shut_down(ipfs: Ipfs) {
    let listening = tokio::time::timeout(Duration::from_secs(5), ipfs.listening_addresses())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    ipfs.exit_daemon().await;
    let still = crate::net::wait_ports_released(&listening, RELEASE_LIMIT).await;
    if !still.is_empty() {
        tracing::warn!(
            addresses = ?still,
            "the stopped embedded IPFS node still listens after {RELEASE_LIMIT:?}"
        );
    }
}

/// Waits, at most [`LOCK_WAIT`], while the lock file of the repo in `dir` is held, so that
/// a start right after a stop in this process finds the repo free. Another process that holds
/// the lock still fails the start (rust-ipfs reports it) once the wait is over.
async fn wait_repo_unlocked(dir: &Path) {
    const POLL: Duration = Duration::from_millis(10);
    let Ok(file) = std::fs::File::open(dir.join("repo_lock")) else {
        return; // a new repo, or one rust-ipfs reports on itself
    };
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    while let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    // Dropping `file` lets go of the lock if the loop took it.
}

/// The node's libp2p identity, created on first start (owner-only, protobuf encoding).
fn load_or_create_identity(path: &Path) -> anyhow::Result<Keypair> {
    use anyhow::Context;
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p identity", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            crate::files::write_private(path, &keypair.to_protobuf_encoding()?)?;
            Ok(keypair)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_decoded_and_must_stay_relative() {
        assert_eq!(entry_name("dir%2Fa%20b.txt").as_deref(), Ok("dir/a b.txt"));
        assert_eq!(entry_name("plain").as_deref(), Ok("plain"));
        for bad in ["", "/abs", "a/../b", "a//b", "%2E%2E", "./a"] {
            assert!(entry_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
