//! Checks on listen addresses before libp2p binds them.
//!
//! libp2p's TCP transport sets `SO_REUSEPORT` on every listener, so a second process (another
//! agent, another IPFS node) binding the same port succeeds and the kernel splits incoming
//! connections between the two. A plain bind first, without that option, fails on a port that
//! anything listens on, and so turns that into one clear error.

use std::net::{IpAddr, SocketAddr, TcpListener};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Fails when the TCP port of `addr` (`/ip4|ip6/…/tcp/PORT`) is taken; port 0 and other
/// address forms pass. `setting` names the configuration key to change.
pub fn ensure_port_free(addr: &Multiaddr, setting: &str) -> anyhow::Result<()> {
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
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match TcpListener::bind(SocketAddr::new(ip, port)) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {addr}: TCP port {port} is already in use (another agent or IPFS \
             node?); change {setting}"
        ),
        Err(err) => anyhow::bail!("cannot listen on {addr}: {err}; change {setting}"),
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
}
