//! `pinmesh follow-config`: the follow configuration a follower joins the cluster from.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;

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
