//! `storyline ingest`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

use super::ingest_socket::Summary;
use super::progress::{Measure, Progress};
use super::{Dirs, ensure_dir, tenant_arg};
use crate::catalog::{Catalog, Choice, Found, KnownGood, Remembered, find_plugin};
use crate::model::TenantId;
use crate::plugin::{Limits, Plugin, Runtime};
use crate::producer::{Adapter, Format, IngestReport, Producer, Router};
use crate::store::{Layout, Store};

/// What an ingest run did, and with which layout.
pub struct Ingested {
    /// Accepted and rejected lines.
    pub report: IngestReport,
    /// The tenant's layout.
    pub layout: Layout,
}

/// How to read an input: what `storyline ingest` is told about it. It travels in the ingest
/// socket's header, so that a running host reads the input as `ingest` alone would.
#[derive(Debug, Clone, Default)]
pub struct InputOptions {
    /// `--format`.
    pub format: Format,
    /// `--source`: the sensor name of every event.
    pub source: Option<String>,
    /// The input file's name, without its directory (`None` for stdin): it names a Zeek log's
    /// type when its records do not.
    pub file_name: Option<String>,
}

impl InputOptions {
    /// The adapter that reads such an input.
    pub fn adapter(&self) -> Adapter {
        let mut adapter = Adapter::new(self.format);
        if let Some(source) = &self.source {
            adapter = adapter.source(source.as_str());
        }
        if let Some(name) = &self.file_name {
            adapter = adapter.file_name(name);
        }
        adapter
    }
}

/// Validates and stores a stream for `tenant`, read with `adapter`: the part shared by
/// `storyline ingest` and the ingest socket of a running `storyline run` (`serving`: its
/// catalog).
pub fn ingest_stream<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    (dirs, serving): (&Dirs, Option<&Catalog>),
    tenant: &TenantId,
    (reader, adapter): (impl Read + Send + 'static, Adapter),
    (shards, bucket_ms): (Option<u32>, Option<i64>),
    (batch, on_durable): (usize, Option<crate::producer::OnDurable>),
) -> anyhow::Result<Ingested> {
    if shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    if bucket_ms.is_some_and(|b| b <= 0) {
        bail!("--bucket-ms must be a positive number of milliseconds");
    }
    // Explicit flags that disagree with an existing tenant are refused by the store. The
    // configuration file's layout is only that of a tenant's first events.
    let base = match handle.block_on(store.layout(tenant))? {
        Some(existing) => {
            let configured = dirs.config.first_layout(tenant);
            if dirs
                .config
                .tenant(tenant)
                .is_some_and(|t| t.shards.is_some() || t.bucket_ms.is_some())
                && configured != existing
            {
                tracing::warn!(
                    %tenant,
                    "the configuration gives {} shards of {} ms, but the tenant already has {} shards of {} ms, which it keeps",
                    configured.shards,
                    configured.bucket_ms,
                    existing.shards,
                    existing.bucket_ms
                );
            }
            existing
        }
        None => dirs.config.first_layout(tenant),
    };
    let layout = Layout {
        shards: shards.unwrap_or(base.shards),
        bucket_ms: bucket_ms.unwrap_or(base.bucket_ms),
    };
    // The tenant's plugin computes routing keys, so a story's events share a shard.
    let router = router_for(dirs, tenant, serving);
    let mut producer =
        Producer::new(store, tenant.clone(), layout, router).batch_size(batch).format(adapter);
    if let Some(f) = on_durable {
        producer = producer.on_durable(f);
    }
    let report = handle.block_on(producer.ingest(reader))?;
    crate::metrics::telemetry().ingested(tenant, report.accepted, report.rejected_count);
    Ok(Ingested { report, layout })
}

/// The version that computes the tenant's routing keys. The plugin folder never stops intake:
/// the version a running host serves comes first; else the tenant's plugin file; when the
/// folder has none that loads (a stray or broken file), the last version that loaded, which
/// the data directory remembers; else none (events are routed by id). Every fallback is
/// logged with its reason, and the report names the version used.
fn router_for(dirs: &Dirs, tenant: &TenantId, serving: Option<&Catalog>) -> Option<Router> {
    if let Some(catalog) = serving
        && let Some(active) = catalog.slot(tenant).active()
    {
        let origin = format!("the version the running host serves, from {}", active.path.display());
        return Some(Router::new(
            active.plugin.clone(),
            active.config.clone(),
            tenant.clone(),
            catalog.limits(),
            origin,
        ));
    }
    let runtime = match serving {
        Some(catalog) => catalog.runtime().clone(),
        None => match Runtime::new(Some(dirs.cache())) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%tenant, "cannot start the plugin runtime ({e:#}); routing by event id");
                return None;
            }
        },
    };
    let limits = serving.map_or_else(Limits::default, Catalog::limits);
    let known = dirs.known_good();
    let remembered = known.recall(tenant);
    let choice = match dirs.config.tenant(tenant).and_then(|t| t.plugin.as_deref()) {
        Some(name) => Choice::Named(name),
        None => Choice::Prefer(remembered.as_ref().map(|r| r.path.as_path())),
    };
    let problem = match find_plugin(&dirs.plugins, tenant, choice) {
        Ok(Some(found)) => match load_checked(&runtime, tenant, &found, limits) {
            Ok((plugin, bytes)) => {
                for file in &found.ignored {
                    tracing::warn!(%tenant, "ignoring {}: the tenant's plugin is {} (one .wasm per tenant folder; remove the other file)", file.display(), found.path.display());
                }
                let record = Remembered {
                    path: found.path.clone(),
                    sha256: plugin.info().sha256.clone(),
                    config: found.config.clone(),
                };
                if let Err(e) = known.remember(tenant, &bytes, &record) {
                    tracing::debug!(%tenant, "cannot remember the version that loaded: {e}");
                }
                let origin = found.path.display().to_string();
                return Some(Router::new(plugin, found.config, tenant.clone(), limits, origin));
            }
            Err(e) => e,
        },
        Ok(None) => format!("no plugin in {}", dirs.plugins.join(tenant.as_str()).display()),
        Err(e) => e,
    };
    match remembered.and_then(|r| recall(&runtime, &known, tenant, r, limits)) {
        Some(router) => {
            tracing::warn!(%tenant, "{problem}; routing with {}", router.describe());
            Some(router)
        }
        None => {
            if dirs.plugins.join(tenant.as_str()).exists() {
                tracing::warn!(%tenant, "{problem}, and no earlier version is known; routing by event id");
            }
            None
        }
    }
}

/// Loads a plugin file and checks that `init` takes its configuration.
fn load_checked(
    runtime: &Runtime,
    tenant: &TenantId,
    found: &Found,
    limits: Limits,
) -> Result<(Plugin, Vec<u8>), String> {
    let bytes = std::fs::read(&found.path)
        .map_err(|e| format!("cannot read {}: {e}", found.path.display()))?;
    let plugin = runtime.load_bytes(&found.path, &bytes).map_err(|e| e.to_string())?;
    plugin.instantiate(tenant, &found.config, limits).map_err(|e| e.to_string())?;
    Ok((plugin, bytes))
}

/// A router with the tenant's remembered version, if it still loads.
fn recall(
    runtime: &Runtime,
    known: &KnownGood,
    tenant: &TenantId,
    remembered: Remembered,
    limits: Limits,
) -> Option<Router> {
    let copy = known.copy(&remembered.sha256);
    // Loaded under the name of the file it came from, so logs name it as the host does.
    let loaded = std::fs::read(&copy)
        .map_err(|e| format!("cannot read {}: {e}", copy.display()))
        .and_then(|bytes| runtime.load_bytes(&remembered.path, &bytes).map_err(|e| e.to_string()));
    let plugin = match loaded {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%tenant, "the last version that loaded no longer does: {e}");
            return None;
        }
    };
    let origin = format!("the last version that loaded, from {}", remembered.path.display());
    Some(Router::new(plugin, remembered.config, tenant.clone(), limits, origin))
}

/// Reads events from `file` (or stdin), written in `format` (`source`: `--source`), into the
/// tenant's store. When a `storyline run` owns the embedded store, the events go through its
/// ingest socket (`dirs.socket`).
pub fn ingest<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
    (file, format, source): (Option<&Path>, Format, Option<&str>),
    flags: (Option<u32>, Option<i64>),
    (batch, progress): (usize, bool),
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    if format == Format::Storyline && source.is_some() {
        bail!(
            "--source names the sensor of --format zeek, suricata or ecs input; each line of \
             the storyline format names its own source"
        );
    }
    ensure_dir(&dirs.data)?;
    let input = InputOptions {
        format,
        source: source.map(str::to_string),
        file_name: file
            .filter(|p| *p != Path::new("-"))
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned()),
    };
    let (reader, size): (Box<dyn Read + Send>, Option<u64>) = match file {
        None => (Box::new(std::io::stdin()), None),
        Some(p) if p == Path::new("-") => (Box::new(std::io::stdin()), None),
        Some(p) => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            // A regular file's size is the bar's length; a FIFO or a device has none.
            let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (Box::new(f), size)
        }
    };
    let name = file.map_or("stdin".to_string(), |p| p.display().to_string());
    let started = std::time::Instant::now();
    // Progress counts the bytes read: a large file's ingest shows how far it is (stderr; quiet
    // when quick). `--progress`'s `durable N` lines on stdout stay as they are.
    let meter = Progress::start(format!("ingest {name}"));
    meter.phase("", Measure::Bytes, size);
    let tracker = meter.tracker();
    let reader: Box<dyn Read + Send> = Box::new(tracker.reader(reader));
    let socket = dirs.socket.as_ref().and_then(|p| std::os::unix::net::UnixStream::connect(p).ok());
    let summary = match socket {
        Some(socket) => {
            if progress {
                eprintln!(
                    "note: a running `storyline run` owns the store; --progress is not reported through its socket"
                );
            }
            super::ingest_socket::send(socket, &tenant, (reader, &input), flags, batch)?
        }
        None => {
            let Ingested { report, layout } = ingest_stream(
                rt.handle(),
                store,
                (dirs, None),
                &tenant,
                (reader, input.adapter()),
                flags,
                (batch, {
                    let tracker = tracker.clone();
                    let on_durable: crate::producer::OnDurable = Box::new(move |n| {
                        tracker.set_events(n);
                        if progress {
                            use std::io::Write;
                            // Past the bar, if it shows on the same terminal.
                            tracker.suspend(|| {
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(out, "durable {n}");
                                let _ = out.flush();
                            });
                        }
                    });
                    Some(on_durable)
                }),
            )?;
            Summary::of(&report, layout)
        }
    };
    meter.finish();
    let Summary { accepted, batches, rejected_count, ref rejected, shards, bucket_ms, .. } =
        summary;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: accepted {accepted} events in {batches} batches ({:.0} events/s) into tenant {tenant} ({} shards, {} ms buckets); rejected {rejected_count} lines",
        accepted as f64 / secs.max(1e-9),
        shards,
        bucket_ms,
    );
    match &summary.routed_by {
        Some(router) => eprintln!("{name}: routed by {router}"),
        None => eprintln!("{name}: routed by event id (the tenant has no plugin to route with)"),
    }
    if summary.route_failures > 0 {
        eprintln!(
            "{name}: the plugin's route failed on {} batches; their events were routed by event id (see the warnings above)",
            summary.route_failures
        );
    }
    rejected_lines(rejected.iter().map(|e| format!("{name} {e}")), rejected_count, accepted)
}

/// Prints the first 20 rejected lines (each already described) and fails when any was
/// rejected: what a local and a remote `ingest` end with.
pub(super) fn rejected_lines(
    shown: impl Iterator<Item = String>,
    rejected: u64,
    accepted: u64,
) -> anyhow::Result<()> {
    for line in shown.take(20) {
        eprintln!("  {line}");
    }
    if rejected > 20 {
        eprintln!("  ... and {} more", rejected - 20);
    }
    if rejected > 0 {
        bail!(
            "{rejected} of {} lines rejected; the accepted events are stored",
            rejected + accepted
        );
    }
    Ok(())
}
