//! The ingest socket: the embedded store belongs to one process, so while `storyline run`
//! owns it, `storyline ingest` hands its lines to the running process through a Unix socket
//! in the data directory, and gets the same report back. Events are acknowledged only after
//! the running process wrote them durably.
//!
//! Protocol, one line each: the client sends a JSON header (`tenant`, `shards`, `bucket_ms`,
//! `batch`), then the event lines, then closes its side. The server answers `REJECT\t<error>`
//! lines (at most 100) and a final `SUMMARY\t<json>`, or `ERROR\t<message>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::Dirs;
use super::ingest_cmd::{Ingested, ingest_stream};
use crate::model::TenantId;
use crate::store::Store;

/// The socket of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("ingest.sock")
}

#[derive(Serialize, Deserialize)]
struct Header {
    tenant: String,
    shards: Option<u32>,
    bucket_ms: Option<i64>,
    batch: usize,
}

/// The server's final answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Events stored.
    pub accepted: u64,
    /// Durable batches written.
    pub batches: u64,
    /// Lines refused.
    pub rejected_count: u64,
    /// The tenant's shards.
    pub shards: u32,
    /// The tenant's bucket length.
    pub bucket_ms: i64,
    /// The first refused lines, as `line N: reason`.
    #[serde(skip)]
    pub rejected: Vec<String>,
}

/// Client side: streams `reader` to a running worker.
pub fn send(
    mut socket: UnixStream,
    tenant: &TenantId,
    reader: impl BufRead,
    (shards, bucket_ms): (Option<u32>, Option<i64>),
    batch: usize,
) -> anyhow::Result<Summary> {
    let header = Header { tenant: tenant.to_string(), shards, bucket_ms, batch };
    let answer = BufReader::new(socket.try_clone().context("ingest socket")?);
    let mut out = std::io::BufWriter::new(&mut socket);
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    for line in reader.lines() {
        out.write_all(line.context("cannot read events")?.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    socket.shutdown(std::net::Shutdown::Write)?;
    let mut rejected = Vec::new();
    for line in answer.lines() {
        let line = line.context("the running storyline closed the ingest socket")?;
        if let Some(r) = line.strip_prefix("REJECT\t") {
            rejected.push(r.to_string());
        } else if let Some(s) = line.strip_prefix("SUMMARY\t") {
            let mut summary: Summary = serde_json::from_str(s)?;
            summary.rejected = rejected;
            return Ok(summary);
        } else if let Some(e) = line.strip_prefix("ERROR\t") {
            bail!("{e}");
        }
    }
    bail!(
        "the running storyline ended the ingest socket without a summary; some events may not be stored"
    )
}

/// Server side: accepts connections until `shutdown`, each on its own thread.
pub fn serve<S: Store + Clone>(
    handle: tokio::runtime::Handle,
    store: S,
    dirs: Dirs,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let path = path(&dirs.data);
    // A socket file left by a process that died is stale: nobody listens on it.
    if path.exists() && UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).with_context(|| {
        format!("cannot listen on {} (is another storyline running here?)", path.display())
    })?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let (handle, store, dirs) = (handle.clone(), store.clone(), dirs.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = answer(&handle, &store, &dirs, stream) {
                            tracing::warn!("ingest socket: {e:#}");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    tracing::warn!("ingest socket: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

fn answer<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    dirs: &Dirs,
    stream: UnixStream,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reply = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let result = serde_json::from_str::<Header>(&first)
        .context("bad ingest header")
        .and_then(|h| Ok((TenantId::new(&h.tenant)?, h)))
        .and_then(|(tenant, h)| {
            ingest_stream(handle, store, dirs, &tenant, reader, (h.shards, h.bucket_ms), h.batch)
        });
    match result {
        Ok(Ingested { report, layout }) => {
            for e in &report.rejected {
                writeln!(reply, "REJECT\t{e}")?;
            }
            let summary = Summary {
                accepted: report.accepted,
                batches: report.batches,
                rejected_count: report.rejected_count,
                shards: layout.shards,
                bucket_ms: layout.bucket_ms,
                rejected: Vec::new(),
            };
            writeln!(reply, "SUMMARY\t{}", serde_json::to_string(&summary)?)?;
        }
        Err(e) => writeln!(reply, "ERROR\t{e:#}")?,
    }
    Ok(())
}
