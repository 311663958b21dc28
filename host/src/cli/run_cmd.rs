//! `storyline run`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Dirs, ensure_dir, tenant_arg};
use crate::catalog::{Catalog, Reload};
use crate::model::{Story, TenantId};
use crate::plugin::{Limits, Runtime};
use crate::store::Store;
use crate::worker::{Pool, Progress, Shared, StorySink, WorkerConfig, Workers};

/// Waits for every tenant's workers (including tenants started meanwhile); their errors.
fn join_all<S: Store + Clone>(workers: &Workers<S>) -> Vec<String> {
    workers.wait().into_iter().map(|(tenant, e)| format!("tenant {tenant}: {e}")).collect()
}

/// Writes each tenant's plugin status to `<data-dir>/status/<tenant>.txt` every second (and
/// once more at the end), where `storyline status` finds it.
fn spawn_status_writer(
    dirs: &Dirs,
    catalog: Arc<Catalog>,
    shutdown: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let dir = dirs.data.join("status");
    std::thread::spawn(move || {
        let _ = std::fs::create_dir_all(&dir);
        // Only what changed is described and written: ten thousand idle tenants cost neither.
        let mut written: std::collections::HashMap<TenantId, (u64, (usize, usize))> =
            Default::default();
        loop {
            let stopping = shutdown.load(Ordering::Relaxed);
            for slot in catalog.slots() {
                let stamp = (slot.changes(), catalog.memory(slot.tenant()));
                if written.get(slot.tenant()) == Some(&stamp) {
                    continue;
                }
                let text = crate::catalog::describe(&slot, stamp.1);
                let path = dir.join(format!("{}.txt", slot.tenant()));
                match write_replacing(&path, &text) {
                    Ok(()) => {
                        written.insert(slot.tenant().clone(), stamp);
                    }
                    Err(e) => tracing::warn!("cannot write {}: {e}", path.display()),
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    })
}

/// Writes `text` to `path` through a temporary file renamed over it, so a reader sees a whole
/// file. The temporary name is this writer's own: several processes sharing a data directory
/// (workers on ScyllaDB) each replace the file without taking the others' temporary away.
fn write_replacing(path: &Path, text: &str) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// How `storyline run` runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Read a bucket once it ended this long ago, ms.
    pub delay_ms: i64,
    /// Stop once caught up and idle, after draining.
    pub exit_when_idle: bool,
    /// Also append stories as JSONL here (`-`: stdout).
    pub stories_out: Option<std::path::PathBuf>,
    /// Commit at most this often while buckets flow, ms.
    pub checkpoint_ms: i64,
    /// Attempts at a failing bucket.
    pub attempts: u32,
    /// Skip or pause on a bucket that failed every attempt.
    pub on_failure: crate::worker::OnFailure,
    /// First wait between attempts, ms.
    pub backoff_ms: u64,
    /// Where to serve metrics, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to serve the HTTP API, if anywhere.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Limits of plugin calls and of each tenant's memory.
    pub limits: Limits,
    /// Threads that run plugins, for every tenant together (default: one per core).
    pub threads: Option<usize>,
}

/// Runs the workers until SIGINT/SIGTERM (or until idle with `exit_when_idle`).
pub fn run<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenants: &[String],
    options: &RunOptions,
) -> anyhow::Result<()> {
    start(rt, store, dirs, tenants, options)?.wait()
}

/// A host serving its tenants (see [`start`]).
#[allow(missing_debug_implementations)] // holds the store
pub struct Running<S: Store> {
    /// The tenants' workers.
    pub workers: Arc<Workers<S>>,
    /// Counters of the run.
    pub progress: Arc<Progress>,
    /// Set to stop (as SIGTERM does).
    pub shutdown: Arc<AtomicBool>,
    pool: Pool,
    status_writer: std::thread::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    started: Instant,
    exit_when_idle: bool,
}

/// Starts serving: serves the HTTP API (from the start, `/readyz` answering 503 until every
/// tenant is started), loads every tenant's plugin, starts their workers, follows the plugin
/// directory, serves the ingest socket and metrics. Returns once every tenant is started.
pub fn start<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenants: &[String],
    options: &RunOptions,
) -> anyhow::Result<Running<S>> {
    ensure_dir(&dirs.data)?;
    let explicit: Vec<TenantId> =
        tenants.iter().map(|t| tenant_arg(t)).collect::<anyhow::Result<_>>()?;
    if !options.exit_when_idle {
        ensure_dir(&dirs.plugins)?;
    }
    let tenants = if explicit.is_empty() { dirs.tenants()? } else { explicit.clone() };
    if tenants.is_empty() && options.exit_when_idle {
        bail!(
            "no tenants: put a plugin in {}/<tenant>/<name>.wasm or pass --tenant",
            dirs.plugins.display()
        );
    }
    let runtime = Runtime::new(Some(dirs.cache()))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            tracing::warn!("stopping: finishing the current buckets, committing");
            shutdown.store(true, Ordering::Relaxed);
        });
    }
    let catalog = Catalog::configured(
        runtime,
        &dirs.plugins,
        options.limits,
        Some(dirs.known_good()),
        dirs.config.plugin_files(),
    );
    if dirs.socket.is_some() {
        // This process owns the embedded store: `storyline ingest` reaches it through here,
        // and routes with the versions this process serves.
        super::ingest_socket::serve(
            rt.handle().clone(),
            store.clone(),
            dirs.clone(),
            catalog.clone(),
            shutdown.clone(),
        )?;
    }
    let progress = Arc::new(Progress::default());
    let ready = Arc::new(AtomicBool::new(false));
    let api = crate::http::Api::new(
        (store.clone(), dirs.clone(), catalog.clone()),
        progress.clone(),
        rt.handle().clone(),
        (ready.clone(), shutdown.clone()),
    );
    if let Some(addr) = options.http_addr {
        let router = crate::http::router(api.clone());
        let bound = crate::http::serve(rt.handle(), addr, router, shutdown.clone())
            .with_context(|| format!("cannot serve the HTTP API on {addr}"))?;
        eprintln!("http at http://{bound}");
    }
    let sink: Option<StorySink> = match options.stories_out.as_deref() {
        None => None,
        Some(p) => {
            let writer: Box<dyn Write + Send> = if p == Path::new("-") {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("cannot open {} for appending", p.display()))?,
                )
            };
            let writer = Arc::new(Mutex::new(std::io::BufWriter::new(writer)));
            Some(Arc::new(move |stories: &[Story]| {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                for s in stories {
                    let _ = w.write_all(s.to_json().as_bytes());
                    let _ = w.write_all(b"\n");
                }
                let _ = w.flush();
            }))
        }
    };
    let started = Instant::now();
    let worker_config = WorkerConfig {
        delay_ms: options.delay_ms,
        exit_when_idle: options.exit_when_idle,
        checkpoint_ms: options.checkpoint_ms,
        attempts: options.attempts,
        on_failure: options.on_failure,
        backoff_ms: options.backoff_ms,
        limits: options.limits,
        ..WorkerConfig::default()
    };
    let pool = match options.threads {
        Some(n) => Pool::new(n),
        None => Pool::per_core(),
    }
    .context("cannot start the worker threads")?;
    let shared = Shared { sink, progress: progress.clone(), shutdown: shutdown.clone() };
    let workers = Workers::new(
        pool.clone(),
        rt.handle().clone(),
        store.clone(),
        worker_config.clone(),
        shared,
    );
    let start_tenant = {
        let (catalog, workers, config) = (catalog.clone(), workers.clone(), dirs.config.clone());
        move |tenant: TenantId| {
            let slot = catalog.slot(&tenant);
            if let Some(active) = slot.active() {
                tracing::info!(%tenant, plugin = %active.plugin.info().label(), path = %active.path.display(), "serving");
            }
            // A tenant's own read delay and memory in the config file apply to it alone.
            let mut own = worker_config.clone();
            if let Some(t) = config.tenant(&tenant) {
                if let Some(delay) = t.delay_ms {
                    own.delay_ms = delay;
                }
                if let Some(mb) = t.memory_mb {
                    own.limits.memory_bytes = mb.saturating_mul(1 << 20);
                }
            }
            workers.serve_with(&tenant, slot, own);
        }
    };
    let mut problems = Vec::new();
    for tenant in &tenants {
        match catalog.reload(tenant) {
            Reload::Loaded | Reload::Unchanged => start_tenant(tenant.clone()),
            Reload::Absent | Reload::Removed => {
                let file = dirs.config.tenant(tenant).and_then(|t| t.plugin.as_deref());
                problems.push(format!(
                    "tenant {tenant} has no plugin: put one in {}",
                    dirs.plugins
                        .join(tenant.as_str())
                        .join(file.unwrap_or("<name>.wasm"))
                        .display()
                ))
            }
            Reload::Rejected(e) => problems.push(format!("tenant {tenant}: {e}")),
        }
    }
    if options.exit_when_idle && !problems.is_empty() {
        shutdown.store(true, Ordering::Relaxed);
        join_all(&workers);
        bail!(problems.join("; "));
    }
    let served: Vec<_> = tenants.iter().filter_map(|t| catalog.slot(t).active()).collect();
    let mut files: Vec<String> = served.iter().map(|a| a.plugin.info().label()).collect();
    files.sort();
    files.dedup();
    eprintln!(
        "serving {} tenant(s) with {} plugin version(s): {}",
        served.len(),
        files.len(),
        files.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            + if files.len() > 5 { ", ..." } else { "" }
    );
    for p in &problems {
        // A running host waits for the plugin to be installed or fixed.
        eprintln!("{p} (waiting for it)");
    }
    // Hot reload: a tenant's plugin that changes is loaded again; a tenant that gets its first
    // plugin starts (when it is one of the tenants served).
    let _watcher: Option<notify::RecommendedWatcher> = if options.exit_when_idle {
        None
    } else {
        let served: Option<Vec<TenantId>> = (!explicit.is_empty()).then(|| explicit.clone());
        let started_tenants: Arc<Mutex<Vec<TenantId>>> = Arc::new(Mutex::new(
            tenants.iter().filter(|t| catalog.slot(t).active().is_some()).cloned().collect(),
        ));
        let watcher = catalog.watch(move |tenant| {
            if served.as_ref().is_some_and(|s| !s.contains(&tenant)) {
                return;
            }
            let mut started = started_tenants.lock().unwrap_or_else(|p| p.into_inner());
            if !started.contains(&tenant) {
                started.push(tenant.clone());
                start_tenant(tenant);
            }
        });
        match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!(
                    "cannot follow {} for plugin changes ({e}); plugins load only at start",
                    dirs.plugins.display()
                );
                None
            }
        }
    };
    let status_writer = spawn_status_writer(dirs, catalog.clone(), shutdown.clone());
    if let Some(addr) = options.metrics_addr {
        let router = crate::http::operations_router(api);
        let bound = crate::http::serve(rt.handle(), addr, router, shutdown.clone())
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eprintln!("metrics at http://{bound}/metrics");
    }
    ready.store(true, Ordering::Relaxed);
    Ok(Running {
        workers,
        progress,
        shutdown,
        pool,
        status_writer,
        _watcher,
        started,
        exit_when_idle: options.exit_when_idle,
    })
}

impl<S: Store + Clone> Running<S> {
    /// Serves until a signal or [`Running::shutdown`] (or, with `exit_when_idle`, until
    /// every tenant is drained); then every shard commits; prints the summary.
    pub fn wait(self) -> anyhow::Result<()> {
        let Running { workers, progress, shutdown, pool, status_writer, started, .. } = self;
        if !self.exit_when_idle {
            // Serve until a signal, or until every tenant's workers stopped on an error.
            while !shutdown.load(Ordering::Relaxed) && !workers.finished() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let failed = join_all(&workers);
        shutdown.store(true, Ordering::Relaxed);
        pool.close();
        let _ = status_writer.join();
        let secs = started.elapsed().as_secs_f64();
        let events = progress.events.load(Ordering::Relaxed);
        eprintln!(
            "processed {events} events in {} buckets, published {} stories (revisions included), {} dead letters, in {secs:.1} s ({:.0} events/s)",
            progress.buckets.load(Ordering::Relaxed),
            progress.stories.load(Ordering::Relaxed),
            progress.dead_letters.load(Ordering::Relaxed),
            events as f64 / secs.max(1e-9)
        );
        if !failed.is_empty() {
            bail!(failed.join("; "));
        }
        Ok(())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_replacing_one_status_file_at_once_never_fail_and_leave_it_whole() {
        let dir = std::env::temp_dir().join(format!("storyline-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("beta.txt");
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        write_replacing(&path, &format!("writer {w} pass {i}\n")).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("writer ") && text.ends_with("pass 199\n"), "{text}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
