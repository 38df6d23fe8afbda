//! The libp2p stack: transport, behaviours and the cluster's gossip topic.
//!
//! Transport: TCP, then the cluster's pre-shared key (pnet), then noise and yamux. Nothing else:
//! QUIC, websocket or relay would bypass the secret. Behaviours: a block list (peers removed with
//! `peers rm`: no connection to or from them, whoever dials), gossipsub (delta batches and
//! beacons on the cluster topic, every message validated before it is forwarded), Kademlia under
//! a private protocol name in server mode, identify (feeds Kademlia), ping, and the sync
//! request-response protocol.

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::{Keypair, ed25519};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{PeerId, Swarm, Transport, allow_block_list, identify, kad, noise, ping, tcp, yamux};
use pinmesh_protocol::codec as wire;
use pinmesh_protocol::{DeltaBatch, Key};

use super::Flags;
use super::codec::{self, SyncCodec, sync_protocols};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so a connection it denies is never offered to the others.
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Peers cut off with `POST /v1/debug/cut` (a network split, for tests): refused like
    /// removed peers, but nothing about them is forgotten.
    pub(super) cut: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) sync: request_response::Behaviour<SyncCodec>,
}

impl Behaviour {
    /// The gossipsub behaviour (tests use it to speak to agents as a peer would).
    pub fn gossipsub_mut(&mut self) -> &mut gossipsub::Behaviour {
        &mut self.gossipsub
    }
}

/// Builds the swarm for `keypair` in the network of `secret`, speaking the sync and Kademlia
/// protocols of `cluster`; sync answers received are counted in `flags`.
pub fn build(
    keypair: Keypair,
    secret: [u8; 32],
    cluster: &str,
    flags: &Flags,
) -> anyhow::Result<Swarm<Behaviour>> {
    let sync_names = sync_protocols(cluster);
    let kad_name = codec::kad_protocol(cluster);
    let codec = SyncCodec::counting(flags.sync_bytes_in.clone());
    let psk = PreSharedKey::new(secret);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    // The secret first: a peer without it never reaches multistream-select.
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20)),
            )
        })?
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                // The default message id (source + sequence number): an unchanged beacon must
                // not be dropped as a duplicate of the previous one.
                .max_transmit_size(wire::MAX_DELTA_BATCH + (64 << 10))
                .heartbeat_interval(Duration::from_millis(500))
                // Publishing floods every subscribed peer, so the mesh only adds redundancy; each
                // extra copy costs a signature check. A mesh of 4 instead of 6 cut single-pin
                // convergence in a 10-agent cluster on 2 cores from 5.5 to 4.7 ms (p50).
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(8)
                .mesh_outbound_min(2)
                .build()?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let peer_id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(kad_name);
            // Catch-up decides when to bootstrap (on each new connection and on its interval).
            kad_config.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad_config,
            );
            // Server mode: without autonat an address is never confirmed, and a client-mode
            // DHT of private peers would answer nobody.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new(
                "/pinmesh/id/1.0.0".into(),
                key.public(),
            ));
            let sync = request_response::Behaviour::with_codec(
                codec,
                sync_names.map(|name| (name, ProtocolSupport::Full)),
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            );
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                cut: allow_block_list::Behaviour::default(),
                gossipsub,
                kad,
                identify,
                ping: ping::Behaviour::new(ping::Config::new()),
                sync,
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// The gossip topic of a cluster.
pub fn topic(cluster: &str) -> IdentTopic {
    IdentTopic::new(format!("pinmesh/{cluster}/v1"))
}

/// The peer id of a batch's author key.
pub fn author_peer(batch: &DeltaBatch) -> Option<PeerId> {
    peer_of_key(&batch.author)
}

/// The peer id of an ed25519 public key, if it is one.
pub fn peer_of_key(key: &Key) -> Option<PeerId> {
    let key = ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}
