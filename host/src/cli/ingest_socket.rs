//! The ingest socket: the embedded store belongs to one process, so while `storyline run`
//! owns it, `storyline ingest` hands its lines to the running process through a Unix socket
//! in the data directory, and gets the same report back. Events are acknowledged only after
//! the running process wrote them durably.
//!
//! `storyline status` and `storyline stories` ask the running process the same way.
//!
//! Protocol, one line each: the client sends a JSON header (`command`: `ingest`, `status` or
//! `stories`; `tenant`; for ingest `shards`, `bucket_ms`, `batch`, and `format`, `source`,
//! `file_name`, which say how to read the lines (an older client sends none of these three:
//! its lines are read as storyline's own format); for stories `all`). For
//! ingest it then sends the event lines and closes its side; the server answers
//! `REJECT\t<error>` lines (at most 100) and a final `SUMMARY\t<json>`. For status and stories
//! the server answers the command's output followed by `END`. Any failure is `ERROR\t<message>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::Dirs;
use super::ingest_cmd::{Ingested, InputOptions, ingest_stream};
use crate::catalog::Catalog;
use crate::model::TenantId;
use crate::producer::Format;
use crate::store::Store;

/// Longest socket path used in the data directory: Unix socket paths are limited to about 108
/// bytes.
const MAX_SOCKET_PATH: usize = 100;

/// The socket of a data directory: `ingest.sock` in it, or, when that path is too long for a
/// Unix socket, a name in the system temp directory derived from the directory's full path (the
/// host and its clients compute the same one).
pub fn path(data_dir: &Path) -> PathBuf {
    let inside = data_dir.join("ingest.sock");
    if inside.as_os_str().len() <= MAX_SOCKET_PATH {
        return inside;
    }
    // Absolute, not canonical: the same whether or not the directory exists yet.
    let full = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = crate::producer::fnv1a(full.as_os_str().as_encoded_bytes());
    std::env::temp_dir().join(format!("storyline-{hash:016x}.sock"))
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(default = "ingest")]
    command: String,
    tenant: String,
    #[serde(default)]
    shards: Option<u32>,
    #[serde(default)]
    bucket_ms: Option<i64>,
    #[serde(default)]
    batch: usize,
    #[serde(default)]
    all: bool,
    /// For `stories`: only revisions published at or after this time (epoch ms).
    #[serde(default)]
    since: Option<i64>,
    /// For ingest: the lines' format (`--format`).
    #[serde(default)]
    format: Format,
    /// For ingest: the sensor name of every event (`--source`).
    #[serde(default)]
    source: Option<String>,
    /// For ingest: the input file's name, which names a Zeek log's type.
    #[serde(default)]
    file_name: Option<String>,
}

fn ingest() -> String {
    "ingest".into()
}

/// A connection to the process that owns the data directory, if one is listening.
pub fn connect(dirs: &Dirs) -> Option<UnixStream> {
    UnixStream::connect(dirs.socket.as_ref()?).ok()
}

/// Asks the running process for the stories of `tenant`; returns its output.
pub fn query_stories(
    socket: UnixStream,
    tenant: &TenantId,
    listing: super::stories_cmd::Listing,
) -> anyhow::Result<String> {
    use super::stories_cmd::Listing;
    let (all, since) = match listing {
        Listing::Latest => (false, None),
        Listing::All => (true, None),
        Listing::Since(ms) => (true, Some(ms)),
    };
    ask(socket, "stories", tenant, all, since)
}

/// Asks the running process for `status` or `replay` of `tenant`; returns its output.
pub fn query(socket: UnixStream, command: &str, tenant: &TenantId) -> anyhow::Result<String> {
    ask(socket, command, tenant, false, None)
}

fn ask(
    mut socket: UnixStream,
    command: &str,
    tenant: &TenantId,
    all: bool,
    since: Option<i64>,
) -> anyhow::Result<String> {
    let header = Header {
        command: command.into(),
        tenant: tenant.to_string(),
        shards: None,
        bucket_ms: None,
        batch: 0,
        all,
        since,
        format: Format::default(),
        source: None,
        file_name: None,
    };
    serde_json::to_writer(&mut socket, &header)?;
    socket.write_all(b"\n")?;
    socket.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    for line in BufReader::new(socket).lines() {
        let line = line.context("the running storyline closed its socket")?;
        if line == "END" {
            return Ok(text);
        }
        if let Some(e) = line.strip_prefix("ERROR\t") {
            bail!("{e}");
        }
        text.push_str(&line);
        text.push('\n');
    }
    bail!("the running storyline ended its answer early")
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
    /// The plugin version that computed routing keys, and where it came from.
    #[serde(default)]
    pub routed_by: Option<String>,
    /// Batches whose `route` call failed (routed by event id instead).
    #[serde(default)]
    pub route_failures: u64,
}

impl Summary {
    /// The summary of an ingest done here.
    pub fn of(report: &crate::producer::IngestReport, layout: crate::store::Layout) -> Self {
        Summary {
            accepted: report.accepted,
            batches: report.batches,
            rejected_count: report.rejected_count,
            shards: layout.shards,
            bucket_ms: layout.bucket_ms,
            rejected: report.rejected_messages().collect(),
            routed_by: report.routed_by.clone(),
            route_failures: report.route_failures,
        }
    }
}

/// Client side: streams `reader` to a running worker, which reads it as `input` says.
pub fn send(
    mut socket: UnixStream,
    tenant: &TenantId,
    (reader, input): (impl Read, &InputOptions),
    (shards, bucket_ms): (Option<u32>, Option<i64>),
    batch: usize,
) -> anyhow::Result<Summary> {
    let header = Header {
        command: "ingest".into(),
        tenant: tenant.to_string(),
        shards,
        bucket_ms,
        batch,
        all: false,
        since: None,
        format: input.format,
        source: input.source.clone(),
        file_name: input.file_name.clone(),
    };
    let answer = BufReader::new(socket.try_clone().context("ingest socket")?);
    let mut out = std::io::BufWriter::new(&mut socket);
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    // Lines go as read (the server rejects a line that is not UTF-8, with its number), and
    // what is buffered leaves whenever the input has nothing more for now: a slow source's
    // events reach the running process at once, not when a buffer fills.
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).context("cannot read events")? == 0 {
            break;
        }
        out.write_all(&line)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        if reader.buffer().is_empty() {
            out.flush()?;
        }
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
    serving: Arc<Catalog>,
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
                    let (handle, store, dirs, serving) =
                        (handle.clone(), store.clone(), dirs.clone(), serving.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = answer(&handle, &store, &dirs, &serving, stream) {
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
    serving: &Catalog,
    stream: UnixStream,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reply = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let header = serde_json::from_str::<Header>(&first)
        .context("bad request header")
        .and_then(|h| Ok((TenantId::new(&h.tenant)?, h)));
    let (tenant, header) = match header {
        Ok(h) => h,
        Err(e) => {
            writeln!(reply, "ERROR\t{e:#}")?;
            return Ok(());
        }
    };
    if header.command != "ingest" {
        let mut buf: Vec<u8> = Vec::new();
        let done = match header.command.as_str() {
            "status" => {
                super::stories_cmd::write_status(handle, store, &dirs.data, &tenant, &mut buf)
            }
            "stories" => {
                use super::stories_cmd::Listing;
                let listing = match (header.since, header.all) {
                    (Some(ms), _) => Listing::Since(ms),
                    (None, true) => Listing::All,
                    (None, false) => Listing::Latest,
                };
                super::stories_cmd::write_stories(handle, store, &tenant, listing, &mut buf)
            }
            "replay" => super::stories_cmd::mark_replay(handle, store, &tenant, &mut buf),
            other => Err(anyhow::anyhow!("unknown command {other}")),
        };
        match done {
            Ok(()) => {
                reply.write_all(&buf)?;
                writeln!(reply, "END")?;
            }
            Err(e) => writeln!(reply, "ERROR\t{e:#}")?,
        }
        return Ok(());
    }
    let input = InputOptions {
        format: header.format,
        source: header.source.clone(),
        file_name: header.file_name.clone(),
    };
    let result = ingest_stream(
        handle,
        store,
        (dirs, Some(serving)),
        &tenant,
        (reader, input.adapter()),
        (header.shards, header.bucket_ms),
        (header.batch.max(1), None),
    );
    match result {
        Ok(Ingested { report, layout }) => {
            for e in report.rejected_messages() {
                writeln!(reply, "REJECT\t{e}")?;
            }
            let summary = Summary::of(&report, layout);
            writeln!(reply, "SUMMARY\t{}", serde_json::to_string(&summary)?)?;
        }
        Err(e) => writeln!(reply, "ERROR\t{e:#}")?,
    }
    Ok(())
}
