//! The agent's home directory: what `init` writes and `run` reads.
//!
//! ```text
//! DIR/config.toml    configuration (contains the cluster secret; 0600)
//! DIR/identity.key   ed25519 libp2p identity, protobuf encoding (0600)
//! DIR/api.token      bearer token of the control API (0600)
//! DIR/api.addr       address the running agent's API listens on (written by `run`)
//! DIR/pinmesh.redb   the database
//! DIR/ipfs/          the embedded IPFS node: its identity.key, blocks and pins
//! ```

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, bail};
use libp2p::identity::Keypair;

#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
}

impl Home {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Home { dir: dir.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn identity(&self) -> PathBuf {
        self.dir.join("identity.key")
    }
    pub fn token(&self) -> PathBuf {
        self.dir.join("api.token")
    }
    pub fn api_addr(&self) -> PathBuf {
        self.dir.join("api.addr")
    }
    /// The embedded IPFS node's repo and identity.
    pub fn ipfs_dir(&self) -> PathBuf {
        self.dir.join("ipfs")
    }
    pub fn database(&self) -> PathBuf {
        self.dir.join("pinmesh.redb")
    }

    /// The agent files (besides `config.toml`) this home already holds: a home with any of
    /// them belongs to an agent, whose identity and pinset a new `init` would replace.
    pub fn agent_files(&self) -> Vec<&'static str> {
        ["identity.key", "api.token", "pinmesh.redb", "ipfs"]
            .into_iter()
            .filter(|name| self.dir.join(name).exists())
            .collect()
    }

    pub fn load_identity(&self) -> anyhow::Result<Keypair> {
        let path = self.identity();
        let bytes = fs::read(&path).with_context(|| {
            format!("cannot read {} (run `pinmesh init` first)", path.display())
        })?;
        let key = Keypair::from_protobuf_encoding(&bytes)
            .with_context(|| format!("{} is not a libp2p identity", path.display()))?;
        if key.clone().try_into_ed25519().is_err() {
            bail!("{} must hold an ed25519 key", path.display());
        }
        Ok(key)
    }

    pub fn load_token(&self) -> anyhow::Result<String> {
        let path = self.token();
        let token =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let token = token.trim();
        if token.len() < 16 {
            bail!(
                "{} holds no usable token (16 characters at least)",
                path.display()
            );
        }
        Ok(token.to_string())
    }
}

pub use crate::files::write_private;

/// A random token of 32 bytes, hex.
pub fn random_hex32() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What [`init`] needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cluster: String,
    /// None: generate one.
    pub secret: Option<String>,
    /// Empty: the default listen address.
    pub listen: Vec<String>,
    pub api_listen: String,
    pub bootstrap: Vec<String>,
    /// A Kubo-compatible RPC API to pin in.
    pub ipfs_api: Option<String>,
    /// The embedded IPFS node's listen addresses (empty: the default).
    pub ipfs_listen: Vec<String>,
    /// Drive no IPFS node at all.
    pub no_ipfs: bool,
    pub force: bool,
    /// Peer ids allowed to write (empty: every member); `self` is this agent's own.
    pub trusted_writers: Vec<String>,
    /// Makes the home a follower's.
    pub follower: Option<crate::config::FollowerConfig>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            cluster: "default".into(),
            secret: None,
            listen: Vec::new(),
            api_listen: crate::config::ApiConfig::default().listen,
            bootstrap: Vec::new(),
            ipfs_api: None,
            ipfs_listen: Vec::new(),
            no_ipfs: false,
            force: false,
            trusted_writers: Vec::new(),
            follower: None,
        }
    }
}

/// What [`init`] made.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub peer_id: libp2p::PeerId,
    pub config: crate::config::Validated,
    pub secret_generated: bool,
}

/// Creates the home: validated config, identity and API token, all owner-only. Validates
/// everything before writing anything, and refuses to overwrite without `force`.
pub fn init(home: &Home, options: InitOptions) -> anyhow::Result<Initialized> {
    use crate::config::{
        ApiConfig, ClusterConfig, Config, IpfsConfig, NetworkConfig, StorageConfig, SyncConfig,
    };
    if home.database().exists() && options.force {
        // A new identity over an old database would serve the old pinset as somebody else,
        // and the pins the old agent made in its IPFS node would have no owner any more.
        bail!(
            "{} holds this agent's pinset; --force does not replace it: move the whole \
             directory away (or delete it) to start a new agent there",
            home.database().display()
        );
    }
    if !options.force {
        if home.config().exists() {
            bail!(
                "{} already exists; pass --force to overwrite it (the agent gets a new identity)",
                home.config().display()
            );
        }
        let found = home.agent_files();
        if !found.is_empty() {
            bail!(
                "{} holds an agent's files ({}) but no config.toml; restore config.toml \
                 rather than create a new agent over them (--force replaces the identity)",
                home.dir.display(),
                found.join(", ")
            );
        }
    }
    let secret_generated = options.secret.is_none();
    let keypair = Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id().to_string();
    let config = Config {
        cluster: ClusterConfig {
            trusted_writers: (options.trusted_writers.into_iter())
                .map(|p| if p == "self" { me.clone() } else { p })
                .collect(),
            ..ClusterConfig::new(options.cluster, options.secret.unwrap_or_else(random_hex32))
        },
        network: NetworkConfig {
            listen: if options.listen.is_empty() {
                NetworkConfig::default().listen
            } else {
                options.listen
            },
            bootstrap: options.bootstrap,
        },
        api: ApiConfig {
            listen: options.api_listen,
            ..ApiConfig::default()
        },
        sync: SyncConfig::default(),
        storage: StorageConfig::default(),
        ipfs: IpfsConfig {
            api: options.ipfs_api,
            embedded: !options.no_ipfs,
            listen: if options.ipfs_listen.is_empty() {
                IpfsConfig::default().listen
            } else {
                options.ipfs_listen
            },
            ..IpfsConfig::default()
        },
        follower: options.follower,
    };
    let validated = config.clone().validate("the given options")?;
    fs::create_dir_all(&home.dir)
        .with_context(|| format!("cannot create {}", home.dir.display()))?;
    write_private(&home.identity(), &keypair.to_protobuf_encoding()?)?;
    write_private(&home.token(), format!("{}\n", random_hex32()).as_bytes())?;
    write_private(&home.config(), config.to_toml().as_bytes())?;
    Ok(Initialized {
        peer_id: keypair.public().to_peer_id(),
        config: validated,
        secret_generated,
    })
}
