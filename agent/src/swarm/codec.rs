//! The request-response codec of the sync protocol: one protocol message per stream, read with
//! a hard size limit and decoded by the protocol crate. Bad bytes become an `InvalidData` error
//! on that stream only.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use pinmesh_protocol::codec::{self, MAX_REQUEST, MAX_RESPONSE};
use pinmesh_protocol::{Request, Response};

/// The sync protocol of release 0.1, bound to no cluster. Peers that still speak it only are
/// recognised (and told to upgrade), never synced with.
pub const LEGACY_SYNC_PROTOCOL: &str = "/pinmesh/sync/1";

/// A short id of a cluster name, for protocol names: `blake3("pinmesh cluster " + name)`, the
/// first 8 bytes in hex.
pub fn cluster_id(cluster: &str) -> String {
    let hash = blake3::hash(format!("pinmesh cluster {cluster}").as_bytes());
    hex::encode(&hash.as_bytes()[..8])
}

/// The sync protocols of `cluster`, newest first, each with the wire version its messages
/// are in: `/pinmesh/<cluster id>/sync/3` (wire 2) and `/pinmesh/<cluster id>/sync/2` (wire 1,
/// the previous release). A stream negotiates the newest both peers speak, so an agent answers
/// an agent of the previous release in its version. Bound to the cluster, so a peer of another
/// cluster that shares the secret cannot negotiate them (no request of one cluster reaches the
/// other), and identify tells agents which cluster a peer is in.
pub fn sync_protocols(cluster: &str) -> [StreamProtocol; 2] {
    let name = |n: u64| {
        StreamProtocol::try_from_owned(format!("/pinmesh/{}/sync/{n}", cluster_id(cluster)))
            .expect("a hex id makes a valid protocol name")
    };
    [name(3), name(2)]
}

/// The wire version of a sync protocol's messages (see [`sync_protocols`]).
pub fn wire_version(protocol: &StreamProtocol) -> u64 {
    if protocol.as_ref().ends_with("/sync/2") {
        1
    } else {
        codec::WIRE_VERSION
    }
}

/// The Kademlia protocol of `cluster`, bound to it like [`sync_protocols`].
pub fn kad_protocol(cluster: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/pinmesh/{}/kad/1.0.0", cluster_id(cluster)))
        .expect("a hex id makes a valid protocol name")
}

/// Whether `protocol` is some pinmesh cluster's sync protocol (this one's or another's, of
/// this release or the previous one).
pub fn is_sync_protocol(protocol: &str) -> bool {
    protocol.starts_with("/pinmesh/")
        && (protocol.ends_with("/sync/2") || protocol.ends_with("/sync/3"))
}

#[derive(Debug, Clone, Default)]
pub struct SyncCodec {
    /// Bytes of responses read.
    bytes_in: Arc<AtomicU64>,
}

impl SyncCodec {
    pub fn counting(bytes_in: Arc<AtomicU64>) -> Self {
        SyncCodec { bytes_in }
    }
}

/// Reads the whole stream, refusing more than `max` bytes.
async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

fn invalid(err: codec::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

#[async_trait]
impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        codec::decode_request(&read_limited(io, MAX_REQUEST).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, MAX_RESPONSE).await?;
        self.bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        codec::decode_response(&bytes).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&codec::encode_request(wire_version(protocol), &req))
            .await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&codec::encode_response(wire_version(protocol), &res))
            .await?;
        io.close().await
    }
}
