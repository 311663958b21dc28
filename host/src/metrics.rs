//! Metrics in the Prometheus text format, served at `/metrics` by the HTTP API and by
//! `storyline run --metrics-addr`.
//!
//! The figures are read when scraped: counters of this process (events, stories, dead letters)
//! and, per tenant and shard, what the store knows (lag, late events and their lateness, dead
//! letters) and what the plugin directory holds (loads, last reload failed); then what the
//! process counted as it went ([`Telemetry`]: plugin calls, failures, reloads, ingest). Encoded
//! with `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::catalog::Catalog;
use crate::model::ShardId;
use crate::producer::now_ms;
use crate::store::{Store, StoreError};
use crate::worker::Progress;

/// A shard's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    tenant: String,
    shard: String,
}

/// A counter whose value is read when scraped (the store keeps it, or the run's counters).
fn counter_of(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// Renders every metric: what the store and the plugin directory say now, read into a
/// registry of this scrape, then what the process counted ([`telemetry`]).
pub fn render<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    catalog: &Catalog,
    progress: &Progress,
) -> Result<String, StoreError> {
    let mut registry = Registry::with_prefix("storyline");
    let processed = |v: &AtomicU64| counter_of(v.load(Ordering::Relaxed));
    registry.register(
        "events_processed",
        "Events handed to plugins by this process",
        processed(&progress.events),
    );
    registry.register(
        "stories_published",
        "Story revisions published by this process",
        processed(&progress.stories),
    );
    registry.register(
        "buckets_processed",
        "Buckets processed by this process",
        processed(&progress.buckets),
    );

    let loads = Family::<TenantLabels, Counter>::default();
    let reload_failed = Family::<TenantLabels, Gauge>::default();
    let ignored = Family::<TenantLabels, Gauge>::default();
    let memory = Family::<TenantLabels, Gauge>::default();
    let memory_limit = Family::<TenantLabels, Gauge>::default();
    let dead = Family::<TenantLabels, Gauge>::default();
    let lag = Family::<ShardLabels, Gauge<f64, AtomicU64>>::default();
    let late = Family::<ShardLabels, Counter>::default();
    let lateness = Family::<ShardLabels, Counter<f64, AtomicU64>>::default();
    let now = now_ms();
    let mut slots = catalog.slots();
    slots.sort_by(|a, b| a.tenant().cmp(b.tenant()));
    for slot in slots {
        let tenant = slot.tenant();
        let status = slot.status();
        let t = TenantLabels { tenant: tenant.to_string() };
        loads.get_or_create(&t).inc_by(status.loads);
        reload_failed.get_or_create(&t).set(i64::from(status.last_error.is_some()));
        ignored.get_or_create(&t).set(status.ignored.len() as i64);
        let (used, limit) = catalog.memory(tenant);
        memory.get_or_create(&t).set(used as i64);
        memory_limit.get_or_create(&t).set(limit as i64);
        let Some(layout) = handle.block_on(store.layout(tenant))? else { continue };
        dead.get_or_create(&t).set(handle.block_on(store.dead_letters(tenant))?.len() as i64);
        for shard in (0..layout.shards).map(ShardId) {
            let labels = ShardLabels { tenant: tenant.to_string(), shard: shard.to_string() };
            let offset = handle.block_on(store.committed_offset(tenant, shard))?;
            let oldest = handle.block_on(store.next_bucket(tenant, shard, offset))?;
            let lag_ms = oldest.map_or(0, |b| (now - b.0 - layout.bucket_ms).max(0));
            lag.get_or_create(&labels).set(lag_ms as f64 / 1000.0);
            let l = handle.block_on(store.late_stats(tenant, shard))?;
            late.get_or_create(&labels).inc_by(l.events);
            lateness.get_or_create(&labels).inc_by(l.lateness_ms as f64 / 1000.0);
        }
    }
    registry.register("plugin_loads", "Plugin versions loaded per tenant", loads);
    registry.register(
        "plugin_reload_failed",
        "1 when the tenant's last reload was rejected (the previous version serves)",
        reload_failed,
    );
    registry.register(
        "plugin_ignored_files",
        "Other .wasm files in the tenant's plugin folder, ignored (one plugin per tenant)",
        ignored,
    );
    registry.register(
        "plugin_memory_bytes",
        "Linear memory held by the tenant's plugin instances (their state lives there)",
        memory,
    );
    registry.register(
        "plugin_memory_limit_bytes",
        "The tenant's plugin memory limit (run --memory-mb); a growth past it fails the bucket",
        memory_limit,
    );
    registry.register("lag_seconds", "Age of the oldest bucket not yet committed, per shard", lag);
    registry.register(
        "late_events",
        "Events written into closed buckets and moved to the first open one",
        late,
    );
    registry.register(
        "late_lateness_seconds",
        "Sum of the lateness of late events (divide by late events for the mean)",
        lateness,
    );
    registry.register("dead_letters", "Buckets dead-lettered and not replayed, per tenant", dead);
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, &registry)
        .map_err(|e| StoreError::Backend { backend: "metrics", message: e.to_string() })?;
    out.push_str(&telemetry().encode());
    out.push_str("# EOF\n");
    Ok(out)
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// What this process does, counted as it happens (plugin calls, reloads, ingest), kept for the
/// life of the process and encoded with every scrape after the figures read from the store.
/// One per process, as logging is: the plugin runtime, the catalog and ingest record into it
/// without being handed anything.
pub struct Telemetry {
    registry: prometheus_client::registry::Registry,
    calls: Family<CallLabels, Histogram>,
    failures: Family<FailureLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    accepted: Family<TenantLabels, Counter>,
    rejected: Family<TenantLabels, Counter>,
}

/// A plugin call's labels. (Not the tenant: ten thousand tenants would make the histogram
/// ten thousand times larger; failures are counted per tenant.)
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    tenant: String,
    call: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    tenant: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// The process's telemetry.
pub fn telemetry() -> &'static Telemetry {
    static TELEMETRY: std::sync::OnceLock<Telemetry> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(Telemetry::new)
}

impl Telemetry {
    fn new() -> Telemetry {
        let mut registry = prometheus_client::registry::Registry::with_prefix("storyline");
        // 50 µs to ~26 s, doubling: a route of a few events to a process that hits its deadline.
        let calls = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_05, 2.0, 20,
            ))
        });
        let (failures, reloads) = (Family::default(), Family::default());
        let (accepted, rejected) = (Family::default(), Family::default());
        registry.register(
            "plugin_call_seconds",
            "Time of plugin calls (init, process, route, snapshot, restore, drain), by call",
            calls.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by tenant, call and kind (trap, deadline, memory, ...)",
            failures.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin files loaded or rejected by the catalog, by tenant and outcome",
            reloads.clone(),
        );
        registry.register(
            "ingest_accepted_events",
            "Events accepted (durable) by ingest in this process, by tenant",
            accepted.clone(),
        );
        registry.register(
            "ingest_rejected_events",
            "Input lines rejected by ingest in this process, by tenant",
            rejected.clone(),
        );
        Telemetry { registry, calls, failures, reloads, accepted, rejected }
    }

    /// A plugin call (`init`, `process`, ...) took `elapsed`.
    pub fn plugin_call(&self, call: &'static str, elapsed: std::time::Duration) {
        self.calls.get_or_create(&CallLabels { call }).observe(elapsed.as_secs_f64());
    }

    /// A plugin call of `tenant` failed with a failure of `kind` ([`crate::plugin::Failure::kind`]).
    pub fn plugin_failure(
        &self,
        tenant: &crate::model::TenantId,
        call: &'static str,
        kind: &'static str,
    ) {
        self.failures
            .get_or_create(&FailureLabels { tenant: tenant.to_string(), call, kind })
            .inc();
    }

    /// A tenant's plugin file was loaded (`true`) or rejected.
    pub fn reload(&self, tenant: &crate::model::TenantId, loaded: bool) {
        let outcome = if loaded { "loaded" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { tenant: tenant.to_string(), outcome }).inc();
    }

    /// Ingest of a tenant's input ended: events accepted (durable) and lines rejected.
    pub fn ingested(&self, tenant: &crate::model::TenantId, accepted: u64, rejected: u64) {
        let labels = TenantLabels { tenant: tenant.to_string() };
        self.accepted.get_or_create(&labels).inc_by(accepted);
        self.rejected.get_or_create(&labels).inc_by(rejected);
    }

    /// The Prometheus text of everything recorded so far (without the final `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_counts_failures_by_kind_reloads_and_ingest_per_tenant() {
        let t = Telemetry::new();
        let acme = crate::model::TenantId::new("acme").unwrap();
        t.plugin_call("process", std::time::Duration::from_millis(3));
        t.plugin_failure(&acme, "process", "deadline");
        t.plugin_failure(&acme, "process", "deadline");
        t.reload(&acme, false);
        t.ingested(&acme, 10, 2);
        let text = t.encode();
        for line in [
            "storyline_plugin_call_seconds_count{call=\"process\"} 1",
            "storyline_plugin_failures_total{tenant=\"acme\",call=\"process\",kind=\"deadline\"} 2",
            "storyline_plugin_reloads_total{tenant=\"acme\",outcome=\"rejected\"} 1",
            "storyline_ingest_accepted_events_total{tenant=\"acme\"} 10",
            "storyline_ingest_rejected_events_total{tenant=\"acme\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}: {text}");
        }
        // 3 ms falls in the bucket up to 3.2 ms, not in the one up to 1.6 ms.
        assert!(
            text.contains("storyline_plugin_call_seconds_bucket{le=\"0.0032\",call=\"process\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("storyline_plugin_call_seconds_bucket{le=\"0.0016\",call=\"process\"} 0"),
            "{text}"
        );
    }
}
