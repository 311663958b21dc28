//! `storyline run`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Dirs, ensure_dir, tenant_arg};
use crate::model::Story;
use crate::plugin::Runtime;
use crate::store::Store;
use crate::worker::{Progress, Shared, StorySink, WorkerConfig, run_tenant};

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
}

/// Runs the workers until SIGINT/SIGTERM (or until idle with `exit_when_idle`).
pub fn run<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenants: &[String],
    options: &RunOptions,
) -> anyhow::Result<()> {
    ensure_dir(&dirs.data)?;
    let tenants = if tenants.is_empty() {
        dirs.tenants()?
    } else {
        tenants.iter().map(|t| tenant_arg(t)).collect::<anyhow::Result<_>>()?
    };
    if tenants.is_empty() {
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
    if dirs.socket.is_some() {
        // This process owns the embedded store: `storyline ingest` reaches it through here.
        super::ingest_socket::serve(
            rt.handle().clone(),
            store.clone(),
            dirs.clone(),
            shutdown.clone(),
        )?;
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
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut handles = Vec::new();
    for tenant in tenants {
        let Some((path, config)) = dirs.tenant_plugin(&tenant)? else {
            bail!(
                "tenant {tenant} has no plugin: put one in {}",
                dirs.plugins.join(tenant.as_str()).join("<name>.wasm").display()
            );
        };
        let plugin = runtime.load(&path)?;
        eprintln!("tenant {tenant}: plugin {} ({})", plugin.info().label(), path.display());
        let worker_config = WorkerConfig {
            delay_ms: options.delay_ms,
            exit_when_idle: options.exit_when_idle,
            checkpoint_ms: options.checkpoint_ms,
            plugin_config: config,
            ..WorkerConfig::default()
        };
        let shared =
            Shared { sink: sink.clone(), progress: progress.clone(), shutdown: shutdown.clone() };
        let (handle, store) = (rt.handle().clone(), store.clone());
        handles.push((
            tenant.clone(),
            std::thread::spawn(move || {
                run_tenant(&handle, &store, &tenant, &plugin, &worker_config, &shared)
            }),
        ));
    }
    let mut failed = Vec::new();
    for (tenant, h) in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("tenant {tenant}: {e}")),
            Err(_) => failed.push(format!("tenant {tenant}: worker thread panicked")),
        }
    }
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
