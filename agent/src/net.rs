//! Checks on listen addresses before libp2p binds them, and dialable addresses.
//!
//! libp2p's TCP transport sets `SO_REUSEPORT` on every listener, so a second process (another
//! agent, another IPFS node) binding the same port succeeds and the kernel splits incoming
//! connections between the two. A plain bind first, without that option, fails on a port that
//! anything listens on, and so turns that into one clear error.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Fails when the TCP port of `addr` (`/ip4|ip6/…/tcp/PORT`) is taken; port 0 and other
/// address forms pass. `setting` names the configuration key to change.
pub fn ensure_port_free(addr: &Multiaddr, setting: &str) -> anyhow::Result<()> {
    match probe(addr) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {addr}: TCP port {} is already in use (another agent or IPFS \
             node?); change {setting}",
            tcp_socket(addr).map_or(0, |s| s.port())
        ),
        Err(err) => anyhow::bail!("cannot listen on {addr}: {err}; change {setting}"),
    }
}

/// Waits until nothing listens on the TCP port of any of `addrs` (a listener that a stopped
/// task still holds closes when the runtime drops that task, a moment later), for at most
/// `limit`. Returns the addresses still taken when the limit ran out.
pub async fn wait_ports_released(addrs: &[Multiaddr], limit: Duration) -> Vec<Multiaddr> {
    const POLL: Duration = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let taken: Vec<Multiaddr> = addrs
            .iter()
            .filter(
                |addr| matches!(probe(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse),
            )
            .cloned()
            .collect();
        if taken.is_empty() || tokio::time::Instant::now() >= deadline {
            return taken;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The TCP socket address of `/ip4|ip6/…/tcp/PORT`; `None` for other forms.
fn tcp_socket(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for part in addr.iter() {
        match part {
            Protocol::Ip4(a) => ip = Some(a.into()),
            Protocol::Ip6(a) => ip = Some(a.into()),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// Binds the TCP port of `addr` for a moment (and lets it go); port 0 and other forms pass.
fn probe(addr: &Multiaddr) -> std::io::Result<()> {
    match tcp_socket(addr) {
        Some(socket) if socket.port() != 0 => TcpListener::bind(socket).map(drop),
        _ => Ok(()),
    }
}

/// `addr` ending in `/p2p/<peer>`, as a dialable address names its peer.
pub fn with_peer(addr: Multiaddr, peer: &libp2p::PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr,
        _ => addr.with(Protocol::P2p(*peer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_refused_and_a_free_one_passes() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let err = ensure_port_free(&addr, "network.listen").expect_err("taken");
        assert!(
            err.to_string().contains(&format!("TCP port {port}")),
            "{err}"
        );
        drop(taken);
        ensure_port_free(&addr, "network.listen").expect("free again");
        let any: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("addr");
        ensure_port_free(&any, "network.listen").expect("port 0");
    }

    #[tokio::test]
    async fn a_wait_ends_once_a_stopped_task_has_let_its_port_go() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let holder = tokio::spawn(async move {
            let _held = listener;
            std::future::pending::<()>().await;
        });
        let still = wait_ports_released(std::slice::from_ref(&addr), Duration::from_millis(30));
        assert_eq!(still.await, vec![addr.clone()], "held by the task");
        holder.abort();
        let still = wait_ports_released(std::slice::from_ref(&addr), Duration::from_secs(10));
        assert!(
            still.await.is_empty(),
            "the aborted task dropped its listener"
        );
    }
}
