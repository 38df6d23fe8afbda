//! `pinmesh add PATH...`: stores files and directories in this agent's IPFS node and pins the
//! root in the cluster.
//!
//! The files are streamed from disk to the agent (never read whole into memory) as a
//! multipart body in Kubo's `add` layout, which the agent passes on to its node.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pinmesh_protocol::Cid;
use tokio::sync::mpsc;

use super::pin::{PinOptions, pin_with};
use super::{Ctx, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (added recursively). Several are wrapped in one directory.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Only store the content in this agent's IPFS node; pin nothing in the cluster.
    #[arg(long = "no-pin", conflicts_with_all = ["name", "replication", "rmin", "rmax", "mode", "expire_in", "meta", "wait"])]
    no_pin: bool,
    #[command(flatten)]
    options: PinOptions,
}

/// One part of the upload.
#[derive(Debug)]
struct Entry {
    /// Relative path with `/` separators.
    name: String,
    /// `None` for a directory.
    file: Option<PathBuf>,
    size: u64,
}

/// Chunks of the upload in flight to the HTTP client.
const UPLOAD_BUFFER: usize = 8;

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let mut entries = Vec::new();
    for path in &args.paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: cannot add a path without a file name", path.display()))?
            .to_string();
        collect(path, name, &mut entries)?;
    }
    let client = ctx.client()?;
    if !client.id().await?.writer {
        // The agent refuses too; asked first, so that nothing is uploaded to be refused.
        bail!("this agent is not in cluster.trusted_writers: it replicates read-only");
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let boundary = format!("pinmesh-{:032x}", rand::random::<u128>());
    let progress = if ctx.json {
        ProgressBar::hidden()
    } else {
        // Drawn only when stderr is a terminal.
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(UPLOAD_BUFFER);
    let writer = tokio::spawn(write_body(entries, boundary.clone(), progress.clone(), tx));
    let body = crate::http::tokio_stream_from(rx);
    let added = client
        .add(
            &format!("multipart/form-data; boundary={boundary}"),
            reqwest::Body::wrap_stream(body),
            args.paths.len() > 1,
        )
        .await;
    progress.finish_and_clear();
    // A file that could not be read is the real cause of a failed upload.
    writer.await.context("the upload stopped")??;
    let added = added?;
    let Some(root) = added.last() else {
        bail!("the IPFS node added nothing");
    };
    for line in &added {
        if ctx.json {
            print_json(line)?;
        } else {
            println!("added {}  {}  ({} bytes)", line.cid, line.name, line.size);
        }
    }
    let cid: Cid = root
        .cid
        .parse()
        .context("the node answered an invalid root CID")?;
    if args.no_pin {
        return Ok(ExitCode::SUCCESS);
    }
    let default_name = match args.paths.as_slice() {
        [one] => one
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    // With `--json` the listing stays the whole output, the root its last line.
    pin_with(ctx, &cid, &args.options, &default_name, false).await
}

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// The file's CID.
    cid: String,
}

pub async fn cat(ctx: &Ctx, args: CatArgs) -> anyhow::Result<ExitCode> {
    let cid: Cid = args
        .cid
        .parse()
        .map_err(|e| anyhow::anyhow!("{:?} is not a CID: {e}", args.cid))?;
    let client = ctx.client()?;
    let mut out = std::io::stdout();
    client.cat(&cid.to_string(), &mut out).await?;
    Ok(ExitCode::SUCCESS)
}

/// Lists `path` (a file, or a directory and everything below it, directories first).
fn collect(path: &Path, name: String, out: &mut Vec<Entry>) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        out.push(Entry {
            name,
            file: Some(path.to_path_buf()),
            size: meta.len(),
        });
        return Ok(());
    }
    if !meta.is_dir() {
        bail!("{}: neither a file nor a directory", path.display());
    }
    out.push(Entry {
        name: name.clone(),
        file: None,
        size: 0,
    });
    let mut children: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", path.display()))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let file_name = child.file_name();
        let Some(child_name) = file_name.to_str() else {
            bail!("{}: file names must be UTF-8", child.path().display());
        };
        collect(&child.path(), format!("{name}/{child_name}"), out)?;
    }
    Ok(())
}

/// Writes the multipart body into `tx`, file by file, advancing `progress`.
async fn write_body(
    entries: Vec<Entry>,
    boundary: String,
    progress: ProgressBar,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> anyhow::Result<()> {
    for entry in entries {
        let kind = if entry.file.is_some() {
            "application/octet-stream"
        } else {
            "application/x-directory"
        };
        let header = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
             Content-Type: {kind}\r\n\r\n",
            escape(&entry.name)
        );
        if tx.send(Ok(Bytes::from(header))).await.is_err() {
            return Ok(()); // the request ended; its error is reported
        }
        if let Some(path) = &entry.file {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.with_context(|| format!("cannot read {}", path.display()))?;
                progress.inc(chunk.len() as u64);
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if tx.send(Ok(Bytes::from_static(b"\r\n"))).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx
        .send(Ok(Bytes::from(format!("--{boundary}--\r\n"))))
        .await;
    Ok(())
}

/// Percent-escapes a relative path for a part's `filename` (as Kubo's clients do).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_directories_listed_first() {
        assert_eq!(escape("dir/a b.txt"), "dir%2Fa%20b.txt");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::write(dir.path().join("sub/b"), b"bb").expect("b");
        std::fs::write(dir.path().join("a"), b"a").expect("a");
        let mut out = Vec::new();
        collect(dir.path(), "top".into(), &mut out).expect("collect");
        let names: Vec<_> = out.iter().map(|e| (e.name.as_str(), e.size)).collect();
        assert_eq!(
            names,
            [("top", 0), ("top/a", 1), ("top/sub", 0), ("top/sub/b", 2)]
        );
        let missing = collect(&dir.path().join("nope"), "nope".into(), &mut out);
        assert!(missing.is_err());
    }
}
