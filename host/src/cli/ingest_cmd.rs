//! `storyline ingest`.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};

use super::{Dirs, ensure_dir, tenant_arg};
use crate::plugin::{Limits, Runtime};
use crate::producer::Producer;
use crate::store::{Layout, Store};

/// Reads events from `file` (or stdin) into the tenant's store.
pub fn ingest<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
    file: Option<&Path>,
    (shards, bucket_ms): (Option<u32>, Option<i64>),
    batch: usize,
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    if shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    if bucket_ms.is_some_and(|b| b <= 0) {
        bail!("--bucket-ms must be a positive number of milliseconds");
    }
    ensure_dir(&dirs.data)?;
    let existing = rt.block_on(store.layout(&tenant))?;
    let layout = match existing {
        Some(l) => {
            // Explicit flags that disagree are refused by the store with the layout it has.
            Layout {
                shards: shards.unwrap_or(l.shards),
                bucket_ms: bucket_ms.unwrap_or(l.bucket_ms),
            }
        }
        None => {
            let d = Layout::default();
            Layout {
                shards: shards.unwrap_or(d.shards),
                bucket_ms: bucket_ms.unwrap_or(d.bucket_ms),
            }
        }
    };
    // The tenant's plugin computes routing keys, so a story's events share a shard.
    let router = match dirs.tenant_plugin(&tenant)? {
        Some((path, config)) => {
            let runtime = Runtime::new(Some(dirs.cache()))?;
            let plugin = runtime.load(&path)?;
            Some(plugin.instantiate(&tenant, &config, Limits::default())?)
        }
        None => None,
    };
    let reader: Box<dyn BufRead> = match file {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    };
    let name = file.map_or("stdin".to_string(), |p| p.display().to_string());
    let started = std::time::Instant::now();
    let mut producer = Producer::new(store, tenant.clone(), layout, router).batch_size(batch);
    let report = rt.block_on(producer.ingest(reader))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: accepted {} events in {} batches ({:.0} events/s) into tenant {tenant} ({} shards, {} ms buckets); rejected {} lines",
        report.accepted,
        report.batches,
        report.accepted as f64 / secs.max(1e-9),
        layout.shards,
        layout.bucket_ms,
        report.rejected_count
    );
    for e in report.rejected.iter().take(20) {
        eprintln!("  {name} {e}");
    }
    if report.rejected_count > 20 {
        eprintln!("  ... and {} more", report.rejected_count - 20);
    }
    if report.rejected_count > 0 {
        bail!(
            "{} of {} lines rejected; the accepted events are stored",
            report.rejected_count,
            report.rejected_count + report.accepted
        );
    }
    Ok(())
}
