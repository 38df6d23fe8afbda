//! Parsing of single configuration values: the secret, listen and peer addresses, sizes.

use libp2p::Multiaddr;

/// Parses a 64-hex-digit secret.
pub fn parse_secret(text: &str) -> Result<[u8; 32], &'static str> {
    let bytes =
        hex::decode(text.trim()).map_err(|_| "cluster.secret must be 64 hexadecimal digits")?;
    bytes
        .try_into()
        .map_err(|_| "cluster.secret must be 64 hexadecimal digits (32 bytes)")
}

/// A TCP listen multiaddr: `/ip4|ip6/<addr>/tcp/<port>`.
pub fn parse_listen(text: &str) -> Result<Multiaddr, String> {
    use libp2p::multiaddr::Protocol;
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| format!("{text:?} is not a multiaddr: {e}"))?;
    let mut it = addr.iter();
    match (it.next(), it.next(), it.next()) {
        (Some(Protocol::Ip4(_) | Protocol::Ip6(_)), Some(Protocol::Tcp(_)), None) => Ok(addr),
        _ => Err(format!(
            "{text:?} must be /ip4/<address>/tcp/<port> or /ip6/<address>/tcp/<port>"
        )),
    }
}

/// A peer's dialable multiaddr, ending in `/p2p/<peer id>`.
pub fn parse_peer_addr(text: &str) -> Result<Multiaddr, String> {
    use libp2p::multiaddr::Protocol;
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| format!("{text:?} is not a multiaddr: {e}"))?;
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => Ok(addr),
        _ => Err(format!("{text:?} must end with /p2p/<peer id>")),
    }
}

/// A size read as `"500 GB"` or a number of bytes, and written back as the exact number of
/// bytes (a rounded `"465.7 GiB"` would change the limit at each rewrite of the file).
pub(super) mod exact_size {
    use bytesize::ByteSize;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(size: &Option<ByteSize>, s: S) -> Result<S::Ok, S::Error> {
        match size {
            Some(size) => s.serialize_u64(size.as_u64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ByteSize>, D::Error> {
        Ok(Some(ByteSize::deserialize(d)?))
    }
}
