//! What a guest can reach: its own memory and the `host` interface, nothing else.
//!
//! WASI is linked because Rust's standard library imports it, but configured to grant nothing:
//! no preopened directories, no environment, no arguments, no stdin, no sockets or name lookup.
//! The wall and monotonic clocks show the watermark of the bucket being processed and the random
//! sources are fixed sequences, so a replay of the same bucket from the same state sees exactly
//! what the first run saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::v0_1_0::storyline::correlator::{host, types};
use crate::model::TenantId;

/// Bytes of guest stderr kept per instance (panic messages). A guest writing more traps.
const STDERR_CAPACITY: usize = 1 << 20;

/// Everything a guest's store holds.
pub(crate) struct HostState {
    /// WASI context granting nothing (see module docs).
    wasi: WasiCtx,
    /// WASI resources (streams of the empty stdio).
    table: ResourceTable,
    /// Memory accounting for the tenant's limit.
    pub(crate) limiter: MemoryLimiter,
    /// Rate-limited forwarding of guest logs.
    pub(crate) log: GuestLog,
    /// The time the guest's clocks show, in epoch milliseconds (the current watermark).
    pub(crate) clock: Arc<AtomicI64>,
    /// Everything the guest wrote to stderr.
    pub(crate) stderr: MemoryOutputPipe,
}

impl HostState {
    /// A state holding nothing for the same tenant, plugin and limits: it replaces the state
    /// of an instance that trapped, so that its memory goes back to the tenant at once.
    pub(crate) fn emptied(&self) -> HostState {
        HostState::new(
            &self.log.tenant,
            &self.log.plugin,
            self.limiter.limit,
            self.limiter.tenant.clone(),
            self.log.caps,
        )
    }

    pub(crate) fn new(
        tenant: &TenantId,
        plugin: &str,
        memory_limit: usize,
        tenant_memory: Arc<std::sync::atomic::AtomicUsize>,
        log_caps: LogCaps,
    ) -> Self {
        let clock = Arc::new(AtomicI64::new(0));
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let seed = fixed_bytes(tenant.as_str());
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(BucketClock(clock.clone()))
            .monotonic_clock(BucketClock(clock.clone()))
            .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
            .insecure_random(wasmtime_wasi::Deterministic::new(seed))
            .insecure_random_seed(0x0057_0111_e570_11e5)
            .stderr(stderr.clone())
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                used: 0,
                tenant: tenant_memory,
                hit: false,
            },
            log: GuestLog::new(tenant.clone(), plugin.to_string(), log_caps),
            clock,
            stderr,
        }
    }

    /// Sets the guest clocks for the next call.
    pub(crate) fn set_clock(&self, ms: i64) {
        self.clock.store(ms, Ordering::Relaxed);
    }
}

/// 256 pseudo-random bytes fixed per tenant: randomness that replays identically.
fn fixed_bytes(tenant: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(256);
    let mut block = Sha256::digest(format!("storyline guest randomness {tenant}").as_bytes());
    while out.len() < 256 {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Both WASI clocks read the watermark of the bucket being processed.
struct BucketClock(Arc<AtomicI64>);

impl HostWallClock for BucketClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed).max(0) as u64)
    }
}

impl HostMonotonicClock for BucketClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        (self.0.load(Ordering::Relaxed).max(0) as u64).saturating_mul(1_000_000)
    }
}

/// Caps the total size of all memories of all instances of one tenant: the tenant's memory
/// limit. Each store reserves from the tenant's budget as its memories grow and gives its
/// share back when it is dropped.
pub(crate) struct MemoryLimiter {
    /// Bytes allowed across all linear memories of all the tenant's instances.
    limit: usize,
    /// Bytes reserved by this store's memories.
    used: usize,
    /// Bytes reserved by all the tenant's stores.
    tenant: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when a growth was refused, so that the resulting trap is reported as a memory limit.
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    /// Bytes reserved by this store's memories.
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.tenant.fetch_sub(self.used, Ordering::AcqRel);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let reserved = self.tenant.fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
            total.checked_add(growth).filter(|t| *t <= self.limit)
        });
        if reserved.is_err() {
            self.hit = true;
            return Ok(false);
        }
        self.used += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real plugin.
        Ok(desired <= 1_000_000)
    }
}

/// Limits on what a guest may log: per call, and per second across calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCaps {
    /// Records forwarded per call; the rest are counted and dropped. Default 100.
    pub records_per_call: u32,
    /// Bytes (message plus fields) forwarded per call. Default 64 KiB.
    pub bytes_per_call: usize,
    /// Records forwarded per second by one instance, whatever the number of calls. Default 200.
    pub records_per_second: u32,
}

impl Default for LogCaps {
    fn default() -> Self {
        LogCaps { records_per_call: 100, bytes_per_call: 64 << 10, records_per_second: 200 }
    }
}

/// Forwards guest log records into the host's log, tagged with tenant and plugin, within caps.
pub(crate) struct GuestLog {
    tenant: TenantId,
    plugin: String,
    caps: LogCaps,
    records: u32,
    bytes: usize,
    /// Records dropped during the current call.
    pub(crate) dropped: u64,
    /// Start of the current one-second window, and records forwarded in it.
    window: (std::time::Instant, u32),
    /// Records forwarded and dropped over the instance's life.
    pub(crate) totals: (u64, u64),
}

impl GuestLog {
    fn new(tenant: TenantId, plugin: String, caps: LogCaps) -> Self {
        GuestLog {
            tenant,
            plugin,
            caps,
            records: 0,
            bytes: 0,
            dropped: 0,
            window: (std::time::Instant::now(), 0),
            totals: (0, 0),
        }
    }

    /// Starts a new call's allowance; reports what the previous call dropped.
    pub(crate) fn reset(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                tenant = %self.tenant,
                plugin = %self.plugin,
                dropped = self.dropped,
                "plugin logged more than {} records or {} bytes in one call, or {} records in a second; the excess was dropped",
                self.caps.records_per_call,
                self.caps.bytes_per_call,
                self.caps.records_per_second
            );
        }
        self.records = 0;
        self.bytes = 0;
        self.dropped = 0;
    }
}

impl types::Host for HostState {}

impl super::bindings::v0_2_0::storyline::correlator::types::Host for HostState {}

/// 0.2.0's `log` is 0.1.0's.
impl super::bindings::v0_2_0::storyline::correlator::host::Host for HostState {
    fn log(
        &mut self,
        level: super::bindings::v0_2_0::storyline::correlator::types::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        use super::bindings::v0_2_0::storyline::correlator::types::Level as L;
        let level = match level {
            L::Trace => types::Level::Trace,
            L::Debug => types::Level::Debug,
            L::Info => types::Level::Info,
            L::Warn => types::Level::Warn,
            L::Error => types::Level::Error,
        };
        host::Host::log(self, level, message, fields);
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: types::Level, message: String, fields: Vec<(String, String)>) {
        let log = &mut self.log;
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if log.window.0.elapsed() >= std::time::Duration::from_secs(1) {
            log.window = (std::time::Instant::now(), 0);
        }
        if log.records >= log.caps.records_per_call
            || log.bytes + size > log.caps.bytes_per_call
            || log.window.1 >= log.caps.records_per_second
        {
            log.dropped += 1;
            log.totals.1 += 1;
            return;
        }
        log.records += 1;
        log.bytes += size;
        log.window.1 += 1;
        log.totals.0 += 1;
        let fields = fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let (tenant, plugin) = (&log.tenant, &log.plugin);
        match level {
            types::Level::Trace => {
                tracing::trace!(target: "guest", %tenant, %plugin, fields, "{message}")
            }
            types::Level::Debug => {
                tracing::debug!(target: "guest", %tenant, %plugin, fields, "{message}")
            }
            types::Level::Info => {
                tracing::info!(target: "guest", %tenant, %plugin, fields, "{message}")
            }
            types::Level::Warn => {
                tracing::warn!(target: "guest", %tenant, %plugin, fields, "{message}")
            }
            types::Level::Error => {
                tracing::error!(target: "guest", %tenant, %plugin, fields, "{message}")
            }
        }
    }
}
