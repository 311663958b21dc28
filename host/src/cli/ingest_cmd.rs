//! `storyline ingest`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Dirs, ensure_dir, tenant_arg};
use crate::model::TenantId;
use crate::plugin::{Limits, Runtime};
use crate::producer::{IngestReport, Producer};
use crate::store::{Layout, Store};

/// What an ingest run did, and with which layout.
pub struct Ingested {
    /// Accepted and rejected lines.
    pub report: IngestReport,
    /// The tenant's layout.
    pub layout: Layout,
}

/// Validates and stores a JSONL stream for `tenant`: the part shared by `storyline ingest` and
/// the ingest socket of a running `storyline run`.
pub fn ingest_stream<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    dirs: &Dirs,
    tenant: &TenantId,
    reader: impl Read + Send + 'static,
    (shards, bucket_ms): (Option<u32>, Option<i64>),
    (batch, on_durable): (usize, Option<crate::producer::OnDurable>),
) -> anyhow::Result<Ingested> {
    if shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    if bucket_ms.is_some_and(|b| b <= 0) {
        bail!("--bucket-ms must be a positive number of milliseconds");
    }
    // Explicit flags that disagree with an existing tenant are refused by the store.
    let base = handle.block_on(store.layout(tenant))?.unwrap_or_default();
    let layout = Layout {
        shards: shards.unwrap_or(base.shards),
        bucket_ms: bucket_ms.unwrap_or(base.bucket_ms),
    };
    // The tenant's plugin computes routing keys, so a story's events share a shard.
    let router = match dirs.tenant_plugin(tenant)? {
        Some((path, config)) => {
            let runtime = Runtime::new(Some(dirs.cache()))?;
            let plugin = runtime.load(&path)?;
            Some(plugin.instantiate(tenant, &config, Limits::default())?)
        }
        None => None,
    };
    let mut producer = Producer::new(store, tenant.clone(), layout, router).batch_size(batch);
    if let Some(f) = on_durable {
        producer = producer.on_durable(f);
    }
    let report = handle.block_on(producer.ingest(reader))?;
    Ok(Ingested { report, layout })
}

/// Reads events from `file` (or stdin) into the tenant's store. When a `storyline run` owns
/// the embedded store, the events go through its ingest socket (`dirs.socket`).
pub fn ingest<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
    file: Option<&Path>,
    flags: (Option<u32>, Option<i64>),
    (batch, progress): (usize, bool),
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    ensure_dir(&dirs.data)?;
    let reader: Box<dyn Read + Send> = match file {
        None => Box::new(std::io::stdin()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin()),
        Some(p) => Box::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        ),
    };
    let name = file.map_or("stdin".to_string(), |p| p.display().to_string());
    let started = std::time::Instant::now();
    let socket = dirs.socket.as_ref().and_then(|p| std::os::unix::net::UnixStream::connect(p).ok());
    let (accepted, batches, rejected_count, rejected, layout) = match socket {
        Some(socket) => {
            if progress {
                eprintln!(
                    "note: a running `storyline run` owns the store; --progress is not reported through its socket"
                );
            }
            let s = super::ingest_socket::send(socket, &tenant, reader, flags, batch)?;
            (
                s.accepted,
                s.batches,
                s.rejected_count,
                s.rejected,
                Layout { shards: s.shards, bucket_ms: s.bucket_ms },
            )
        }
        None => {
            let Ingested { report, layout } = ingest_stream(
                rt.handle(),
                store,
                dirs,
                &tenant,
                reader,
                flags,
                (batch, {
                    let print: crate::producer::OnDurable = Box::new(|n| {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "durable {n}");
                        let _ = out.flush();
                    });
                    progress.then_some(print)
                }),
            )?;
            let rejected = report.rejected.iter().map(|e| e.to_string()).collect();
            (report.accepted, report.batches, report.rejected_count, rejected, layout)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: accepted {accepted} events in {batches} batches ({:.0} events/s) into tenant {tenant} ({} shards, {} ms buckets); rejected {rejected_count} lines",
        accepted as f64 / secs.max(1e-9),
        layout.shards,
        layout.bucket_ms,
    );
    for e in rejected.iter().take(20) {
        eprintln!("  {name} {e}");
    }
    if rejected_count > 20 {
        eprintln!("  ... and {} more", rejected_count - 20);
    }
    if rejected_count > 0 {
        bail!(
            "{rejected_count} of {} lines rejected; the accepted events are stored",
            rejected_count + accepted
        );
    }
    Ok(())
}
