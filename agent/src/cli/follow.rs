//! `pinmesh follow-config` (on a member) and `pinmesh follow` (a follower: a read-only agent
//! that joins a cluster from its follow configuration).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use libp2p::PeerId;

use super::{Ctx, print_json};
use crate::config::{Config, FollowerConfig};
use crate::follow::{FollowConfig, Share};
use crate::home::{Home, InitOptions};

mod show;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Write it to FILE (readable by its owner only) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Prints (or writes) the follow configuration, signed by this agent. It holds the cluster's
/// secret: whoever has it can join, as a follower, and read every pin.
pub async fn config(ctx: &Ctx, args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = ctx.client()?.follow_config().await?;
    let text = format!("{}\n", serde_json::to_string_pretty(&config)?);
    match &args.out {
        None => print!("{text}"),
        Some(path) => {
            crate::files::write_private(path, text.as_bytes())?;
            eprintln!(
                "wrote {} (signed by {}; it holds the cluster's secret: give it only to those \
                 who may follow the cluster, with the writer's peer id to check it against)",
                path.display(),
                config.signer
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The follower's name; its home is --dir if given, else DATA_DIR/pinmesh/follow/NAME
    /// (DATA_DIR: $XDG_DATA_HOME, or ~/.local/share). Alone: where it stands (`info`).
    /// Without a name: the configured followers.
    name: Option<String>,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Fetch the follow configuration from SOURCE (a file, or an http(s):// URL), check its
    /// signature against the writer, and create the follower's home.
    Init(InitArgs),
    /// Run the follower: it takes the pinset from the trusted writers and pins every pin (or
    /// its share) in its IPFS node; it writes nothing.
    Run(RunArgs),
    /// Each pin with its status on the follower's node (read from its database while the
    /// follower is stopped).
    List,
    /// Where the follower stands: source, peers, synced, IPFS node, pins.
    Info,
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// A file, or an http(s):// URL (which may end in #writer=PEER_ID).
    source: String,
    /// The trusted writer the configuration must be signed by, learnt apart from it (from the
    /// cluster's owner). Needed unless the URL ends in #writer=PEER_ID.
    #[arg(long, value_name = "PEER_ID")]
    writer: Option<PeerId>,
    /// libp2p listen address; repeat for several (default: any interface, a free port).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Control API address (default: loopback, a free port; found through DIR/api.addr).
    #[arg(
        long = "api-listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:0"
    )]
    api_listen: String,
    /// Pin in this Kubo-compatible RPC API instead of an embedded IPFS node.
    #[arg(long = "ipfs-api", value_name = "URL")]
    ipfs_api: Option<String>,
    /// The embedded IPFS node's listen address; repeat for several (default: a free port).
    #[arg(
        long = "ipfs-listen",
        value_name = "MULTIADDR",
        conflicts_with = "ipfs_api"
    )]
    ipfs_listen: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Hold only the K-th of N shares of the pins (kept for later runs).
    #[arg(long, value_name = "K/N")]
    share: Option<Share>,
    /// Hold every pin again (forget a --share).
    #[arg(long, conflicts_with = "share")]
    all: bool,
    /// Stop taking new pins once the IPFS node holds this much ("100GB"); pins are taken in
    /// the order of the pinset and skipped past the cap (kept for later runs).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_storage: Option<bytesize::ByteSize>,
    /// Take pins whatever the storage used (forget a --max-storage).
    #[arg(long, conflicts_with = "max_storage")]
    no_max_storage: bool,
}

fn parse_size(text: &str) -> Result<bytesize::ByteSize, String> {
    text.parse::<bytesize::ByteSize>()
        .map_err(|_| format!("{text:?} is not a size (such as 500MB or 2GiB)"))
}

/// The largest follow configuration read.
const SOURCE_MAX: usize = 64 << 10;
/// How long fetching it may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(ctx: &Ctx, dir: Option<PathBuf>, args: Args) -> anyhow::Result<ExitCode> {
    let Some(name) = args.name else {
        return show::list_followers(ctx, &followers_root()?);
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || name.starts_with('.')
    {
        bail!("{name:?} is not a follower name: 1 to 64 letters, digits, '.', '_' or '-'");
    }
    let home = Home::new(match dir {
        Some(dir) => dir,
        None => followers_root()?.join(&name),
    });
    let ctx = Ctx {
        home,
        api: ctx.api.clone(),
        json: ctx.json,
    };
    match args.action.unwrap_or(Action::Info) {
        Action::Init(args) => super::block_on(init(&ctx, &name, args)),
        Action::Run(args) => follow_run(&ctx, &name, args),
        Action::List => super::block_on(show::list(&ctx, &name)),
        Action::Info => super::block_on(show::info(&ctx, &name)),
    }
}

/// Where followers' homes are made when no --dir is given.
fn followers_root() -> anyhow::Result<PathBuf> {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(data).join("pinmesh/follow"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither XDG_DATA_HOME nor HOME is set: pass --dir")?;
    Ok(PathBuf::from(home).join(".local/share/pinmesh/follow"))
}

/// The follow configuration's text at `source`, and the writer a URL names in its fragment.
async fn fetch(source: &str) -> anyhow::Result<(Vec<u8>, Option<PeerId>)> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let mut url =
            reqwest::Url::parse(source).with_context(|| format!("{source:?} is not a URL"))?;
        let writer = match url.fragment() {
            None => None,
            Some(fragment) => {
                let peer = fragment.strip_prefix("writer=").with_context(|| {
                    format!(
                        "the URL ends in #{fragment}: the only fragment read is #writer=PEER_ID"
                    )
                })?;
                Some(
                    peer.parse::<PeerId>()
                        .with_context(|| format!("#writer={peer} in the URL is not a peer id"))?,
                )
            }
        };
        url.set_fragment(None);
        let response = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()?
            .get(url.clone())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot fetch {url}: {}", crate::api::client::root_cause(&e))
            })?;
        if !response.status().is_success() {
            bail!(
                "cannot fetch {url}: the server answered {}",
                response.status()
            );
        }
        let body = response
            .bytes()
            .await
            .with_context(|| format!("cannot fetch {url}"))?;
        if body.len() > SOURCE_MAX {
            bail!("{url} is larger than a follow configuration can be ({SOURCE_MAX} bytes)");
        }
        return Ok((body.to_vec(), writer));
    }
    if source.contains("://") {
        bail!("{source:?}: the follow configuration is read from a file or an http(s):// URL");
    }
    let meta = std::fs::metadata(source).with_context(|| format!("cannot read {source}"))?;
    if meta.len() > SOURCE_MAX as u64 {
        bail!("{source} is larger than a follow configuration can be ({SOURCE_MAX} bytes)");
    }
    Ok((
        std::fs::read(source).with_context(|| format!("cannot read {source}"))?,
        None,
    ))
}

async fn init(ctx: &Ctx, name: &str, args: InitArgs) -> anyhow::Result<ExitCode> {
    let (bytes, named) = fetch(&args.source).await?;
    let writer = match (args.writer, named) {
        (Some(given), Some(named)) if given != named => {
            bail!("--writer {given} and #writer={named} in the URL name different writers")
        }
        (Some(writer), _) | (None, Some(writer)) => writer,
        (None, None) => bail!(
            "name the trusted writer that signed it: --writer PEER_ID (or #writer=PEER_ID at \
             the end of the URL), learnt from the cluster's owner; a follow configuration \
             cannot vouch for itself"
        ),
    };
    let config: FollowConfig = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a follow configuration: {e}", args.source))?;
    let following = config.verify(&writer)?;
    let port_zero = |v: Vec<String>| {
        if v.is_empty() {
            vec!["/ip4/0.0.0.0/tcp/0".to_string()]
        } else {
            v
        }
    };
    let made = crate::home::init(
        &ctx.home,
        InitOptions {
            cluster: following.cluster.clone(),
            secret: Some(following.secret.clone()),
            listen: port_zero(args.listen),
            api_listen: args.api_listen,
            bootstrap: following
                .bootstrap
                .iter()
                .map(ToString::to_string)
                .collect(),
            ipfs_api: args.ipfs_api,
            ipfs_listen: port_zero(args.ipfs_listen),
            trusted_writers: (following.trusted_writers.iter())
                .map(ToString::to_string)
                .collect(),
            follower: Some(FollowerConfig {
                source: args.source.clone(),
                writer: writer.to_string(),
                share: None,
                max_storage: None,
            }),
            ..InitOptions::default()
        },
    )?;
    if ctx.json {
        print_json(&serde_json::json!({
            "name": name,
            "dir": ctx.home.dir.display().to_string(),
            "peer_id": made.peer_id.to_string(),
            "cluster": following.cluster,
            "writer": writer.to_string(),
            "members": following.bootstrap.len(),
        }))?;
    } else {
        println!("Created follower {name} in {}", ctx.home.dir.display());
        println!("peer id: {}", made.peer_id);
        println!(
            "cluster: {} (signed by {writer}; {} trusted writers, {} members to dial)",
            following.cluster,
            following.trusted_writers.len(),
            following.bootstrap.len()
        );
        println!("Run it with: pinmesh follow {name} run");
    }
    Ok(ExitCode::SUCCESS)
}

fn follow_run(ctx: &Ctx, name: &str, args: RunArgs) -> anyhow::Result<ExitCode> {
    load_follower(&ctx.home, name)?;
    let share = (args.share.is_some() || args.all).then(|| args.share.map(|s| s.to_string()));
    let cap = (args.max_storage.is_some() || args.no_max_storage)
        .then(|| args.max_storage.map(|size| size.as_u64()));
    if share.is_some() || cap.is_some() {
        keep_settings(&ctx.home.config(), share, cap)?;
    }
    super::run::serve(ctx, Vec::new())
}

/// Writes `--share` and `--max-storage` into `[follower]` of the config at `path`, for later
/// runs (`Some(None)`: removed), leaving the rest of the file, comments included, as it was.
fn keep_settings(
    path: &Path,
    share: Option<Option<String>>,
    cap: Option<Option<u64>>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot edit {}", path.display()))?;
    let follower = (doc.get_mut("follower"))
        .and_then(|item| item.as_table_mut())
        .with_context(|| format!("{} has no [follower] table", path.display()))?;
    match share {
        Some(Some(share)) => follower["share"] = toml_edit::value(share),
        Some(None) => drop(follower.remove("share")),
        None => {}
    }
    match cap {
        Some(Some(bytes)) => {
            let bytes = i64::try_from(bytes).context("--max-storage is too large")?;
            follower["max_storage"] = toml_edit::value(bytes);
        }
        Some(None) => drop(follower.remove("max_storage")),
        None => {}
    }
    crate::files::write_private(path, doc.to_string().as_bytes())?;
    Ok(())
}

/// The follower's checked config, or one line saying there is none.
fn load_follower(home: &Home, name: &str) -> anyhow::Result<crate::config::Validated> {
    if !home.config().exists() {
        bail!(
            "no follower {name} in {}: create it with `pinmesh follow {name} init SOURCE`",
            home.dir.display()
        );
    }
    let config = Config::load(&home.config())?;
    if config.follower.is_none() {
        bail!(
            "{} is a member's home, not a follower's (run it with `pinmesh run`)",
            home.dir.display()
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keeps_share_and_cap_in_the_config_with_its_comments() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("config.toml");
        let text = "# the operator's note\n[cluster]\nname = \"archive\" # ours\n\n\
                    [follower]\nsource = \"f.json\"\nwriter = \"W\"\n";
        std::fs::write(&path, text).expect("write");
        keep_settings(&path, Some(Some("1/4".into())), Some(Some(5 << 30))).expect("kept");
        let kept = std::fs::read_to_string(&path).expect("read");
        assert!(
            kept.contains("# the operator's note") && kept.contains("# ours"),
            "{kept}"
        );
        let value: toml::Value = toml::from_str(&kept).expect("toml");
        assert_eq!(value["follower"]["share"].as_str(), Some("1/4"));
        assert_eq!(value["follower"]["max_storage"].as_integer(), Some(5 << 30));
        // --all and --no-max-storage remove them; a run without either changes nothing.
        keep_settings(&path, Some(None), Some(None)).expect("kept");
        keep_settings(&path, None, None).expect("kept");
        let value: toml::Value =
            toml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("toml");
        let follower = value["follower"].as_table().expect("table");
        assert!(!follower.contains_key("share") && !follower.contains_key("max_storage"));
        assert_eq!(follower["source"].as_str(), Some("f.json"));
        // A config without [follower] is refused, not changed.
        std::fs::write(&path, "[cluster]\n").expect("write");
        assert!(keep_settings(&path, Some(None), None).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[cluster]\n");
    }
}
