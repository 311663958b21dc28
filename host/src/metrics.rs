//! Metrics in the Prometheus text format, served at `/metrics` by the HTTP API and by
//! `storyline run --metrics-addr`.
//!
//! The figures are read when scraped: counters of this process (events, stories, dead letters)
//! and, per tenant and shard, what the store knows (lag, late events and their lateness, dead
//! letters) and what the plugin directory holds (loads, last reload failed).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;

use crate::catalog::Catalog;
use crate::model::ShardId;
use crate::producer::now_ms;
use crate::store::{Store, StoreError};
use crate::worker::Progress;

/// Renders every metric.
pub fn render<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    catalog: &Catalog,
    progress: &Progress,
) -> Result<String, StoreError> {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let count =
        |v: &std::sync::atomic::AtomicU64| vec![(String::new(), v.load(Ordering::Relaxed) as f64)];
    metric(
        "storyline_events_processed_total",
        "counter",
        "Events handed to plugins by this process.",
        &count(&progress.events),
    );
    metric(
        "storyline_stories_published_total",
        "counter",
        "Story revisions published by this process.",
        &count(&progress.stories),
    );
    metric(
        "storyline_buckets_processed_total",
        "counter",
        "Buckets processed by this process.",
        &count(&progress.buckets),
    );

    let (mut loads, mut reload_failed, mut lag, mut late, mut lateness, mut dead) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut memory, mut memory_limit, mut ignored) = (vec![], vec![], vec![]);
    let now = now_ms();
    for slot in catalog.slots() {
        let tenant = slot.tenant();
        let status = slot.status();
        let t = format!("{{tenant=\"{tenant}\"}}");
        loads.push((t.clone(), status.loads as f64));
        reload_failed.push((t.clone(), f64::from(u8::from(status.last_error.is_some()))));
        ignored.push((t.clone(), status.ignored.len() as f64));
        let (used, limit) = catalog.memory(tenant);
        memory.push((t.clone(), used as f64));
        memory_limit.push((t.clone(), limit as f64));
        let Some(layout) = handle.block_on(store.layout(tenant))? else { continue };
        dead.push((t, handle.block_on(store.dead_letters(tenant))?.len() as f64));
        for shard in (0..layout.shards).map(ShardId) {
            let labels = format!("{{tenant=\"{tenant}\",shard=\"{shard}\"}}");
            let offset = handle.block_on(store.committed_offset(tenant, shard))?;
            let oldest = handle.block_on(store.next_bucket(tenant, shard, offset))?;
            let lag_ms = oldest.map_or(0, |b| (now - b.0 - layout.bucket_ms).max(0));
            lag.push((labels.clone(), lag_ms as f64 / 1000.0));
            let l = handle.block_on(store.late_stats(tenant, shard))?;
            late.push((labels.clone(), l.events as f64));
            lateness.push((labels, l.lateness_ms as f64 / 1000.0));
        }
    }
    metric("storyline_plugin_loads_total", "counter", "Plugin versions loaded per tenant.", &loads);
    metric(
        "storyline_plugin_reload_failed",
        "gauge",
        "1 when the tenant's last reload was rejected (the previous version serves).",
        &reload_failed,
    );
    metric(
        "storyline_plugin_ignored_files",
        "gauge",
        "Other .wasm files in the tenant's plugin folder, ignored (one plugin per tenant).",
        &ignored,
    );
    metric(
        "storyline_plugin_memory_bytes",
        "gauge",
        "Linear memory held by the tenant's plugin instances (their state lives there).",
        &memory,
    );
    metric(
        "storyline_plugin_memory_limit_bytes",
        "gauge",
        "The tenant's plugin memory limit (run --memory-mb); a growth past it fails the bucket.",
        &memory_limit,
    );
    metric(
        "storyline_lag_seconds",
        "gauge",
        "Age of the oldest bucket not yet committed, per shard.",
        &lag,
    );
    metric(
        "storyline_late_events_total",
        "counter",
        "Events written into closed buckets and moved to the first open one.",
        &late,
    );
    metric(
        "storyline_late_lateness_seconds_total",
        "counter",
        "Sum of the lateness of late events (divide by late events for the mean).",
        &lateness,
    );
    metric(
        "storyline_dead_letters",
        "gauge",
        "Buckets dead-lettered and not replayed, per tenant.",
        &dead,
    );
    Ok(out)
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `GET /metrics`, answered with `render` (503 when the store cannot be read). It is merged
/// into the HTTP API's router, and served alone by `run --metrics-addr`.
pub fn router(
    render: impl Fn() -> Result<String, StoreError> + Send + Sync + 'static,
) -> axum::Router {
    let render = std::sync::Arc::new(render);
    let scrape = move || {
        let render = render.clone();
        async move {
            // `render` blocks on the store for every tenant: off the runtime's threads.
            let (status, body) = match tokio::task::spawn_blocking(move || render()).await {
                Ok(Ok(body)) => (StatusCode::OK, body),
                Ok(Err(e)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {e}\n"))
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics failed: {e}\n")),
            };
            (status, [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body)
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}
