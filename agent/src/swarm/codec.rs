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

/// Protocol name of the sync request-response protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/pinmesh/sync/1");

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
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&codec::encode_request(&req)).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&codec::encode_response(&res)).await?;
        io.close().await
    }
}
