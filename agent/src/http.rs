//! The one HTTP server every listener of the agent uses (today the control API).
//!
//! `axum::serve` has no header timeout and no connection limit, and both matter before any
//! token is checked: a client that opens connections and sends half a request line holds a
//! task, a socket and its buffers for as long as it likes. This server bounds that:
//!
//! - at most [`Limits::max_connections`] connections are served at once; one more is closed
//!   the moment it is accepted (cheap, and the listener never stops accepting);
//! - a request's headers must arrive within [`Limits::header_timeout`], which also closes an
//!   idle kept-alive connection (hyper restarts the timer for every request head);
//! - a client that takes nothing of an answer for [`Limits::send_timeout`] (a stalled
//!   `pin ls | less`) is disconnected: every write that stays blocked that long fails, which
//!   ends the connection and drops the answer's producer with it;
//! - on shutdown, open connections finish their request for up to [`Limits::drain`], then are
//!   cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// A listener that cannot accept (out of file descriptors) says so at most this often.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Longest a write to a client may stay blocked.
    pub send_timeout: Duration,
    /// How long open requests may hold up a shutdown.
    pub drain: Duration,
}

/// Counters of one server, for logs and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections closed on accept because `max_connections` were open.
    pub refused: AtomicU64,
}

/// Serves `router` on `listener` until `shutdown`; returns once every connection has ended
/// (or was cut after the drain).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut warned = false;
    let mut accept_warned = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: let some close instead of spinning,
                // and say so once in a while, not every time.
                if accept_warned
                    .is_none_or(|at: std::time::Instant| at.elapsed() >= ACCEPT_WARN_EVERY)
                {
                    warn!(error = %err, "API cannot accept connections");
                    accept_warned = Some(std::time::Instant::now());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if !warned {
                warn!(
                    limit = limits.max_connections,
                    "API connection limit reached; closing new connections until some end"
                );
                warned = true;
            }
            drop(tcp);
            continue;
        };
        if slots.available_permits() > limits.max_connections / 2 {
            warned = false;
        }
        // Small answers (acks, long-poll wake-ups) must not wait on Nagle and delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let io = TokioIo::new(SendTimeout::new(tcp, limits.send_timeout));
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.drain, connection.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => {
                            debug!(%remote, "API request still open at shutdown was cut");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(err) = result {
                debug!(%remote, error = %err, "API connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// A stream whose writes fail once one has been blocked for `limit`: the peer took nothing
/// for that long. Reads are untouched (the header timeout covers a client that sends
/// nothing; a long-poll sends nothing while it waits, and writes nothing either).
struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write is blocked.
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> SendTimeout<T> {
    fn new(inner: T, limit: Duration) -> Self {
        SendTimeout {
            inner,
            limit,
            blocked: None,
        }
    }

    /// After the inner write returned `Pending`: arms the timer, or fails once it fired.
    fn check_blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took no data for {}",
                humantime::format_duration(limit)
            ),
        ))
    }

    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(result) => {
                self.blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => match self.check_blocked(cx) {
                Poll::Ready(err) => Poll::Ready(Err(err)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream of what arrives on `rx` (a response body fed by a task).
pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
