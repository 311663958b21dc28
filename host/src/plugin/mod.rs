//! Tenant plugins: load a component, check it against the WIT world, run it sandboxed.
//!
//! - [`Runtime`] owns the wasmtime engine (one per process), the epoch ticker that enforces
//!   call deadlines, the linker with the sandbox's imports and the compiled-component cache.
//! - [`Runtime::load`] turns a file into a [`Plugin`]: checked ([`inspect`]), compiled or
//!   loaded from the cache, its imports and exports type-checked. Errors name the file and say
//!   what to do ([`LoadError`]).
//! - [`Plugin::instantiate`] gives a tenant its own [`PluginInstance`] (its own store, memory
//!   limit and clocks); every call runs under [`Limits`] and fails with a [`CallError`] naming
//!   tenant, plugin, call, bucket and [`Failure`].
//!
//! Calls are synchronous and run on the caller's thread. Callers on an async runtime run them
//! on a blocking thread: a guest that never yields is stopped by its deadline, not by the
//! scheduler.

mod bindings;
mod cache;
mod error;
mod inspect;
mod instance;
mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

pub use cache::{ComponentCache, Origin};
pub use error::{BucketRef, CallError, Failure, GuestError, LoadError};
pub use inspect::{EXPORT_PREFIX, Manifest, inspect};
pub use instance::{BucketHeader, EventView, PluginInstance};
pub use sandbox::LogCaps;

use bindings::{v0_1_0, v0_2_0};
use sandbox::HostState;

use crate::model::TenantId;

/// The versions of `storyline:correlator` this host runs, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// How often the epoch advances; deadlines are enforced with this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-instance limits. Each bounds one way a plugin could hurt the host or other tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a single call may run (a loop that never returns). Default 10 s.
    pub call_timeout: Duration,
    /// Total bytes of the memories of all of a tenant's instances, every shard and plugin
    /// version together (a plugin that allocates without bound). Default 2 GiB: the
    /// network-session plugin holds ~600 MiB over four shards after a burst of a million
    /// events (250,000 open sessions).
    pub memory_bytes: usize,
    /// Bytes of stories one call may return (a plugin that returns garbage). Default 256 MiB:
    /// `drain` returns every open session at once, which after a burst of a million events is
    /// tens of megabytes; the memory limit bounds the rest.
    pub output_bytes: usize,
    /// Bytes of state `snapshot` may return (it is written with every changed checkpoint).
    /// Default 256 MiB.
    pub state_bytes: usize,
    /// Guest log allowance per call (a chatty plugin flooding the host's log).
    pub log: LogCaps,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 2 << 30,
            output_bytes: 256 << 20,
            state_bytes: 256 << 20,
            log: LogCaps::default(),
        }
    }
}

/// The process-wide Wasm runtime.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<ComponentCache>,
    /// Memory reserved by each tenant's instances, of every plugin and version.
    budgets: TenantBudgets,
    /// Components in use, shared by content.
    loaded: Loaded,
    /// Advances the epoch while guests run.
    ticker: Arc<Ticker>,
}

/// Bytes of memory reserved per tenant, shared by all its instances.
type TenantBudgets =
    Arc<std::sync::Mutex<std::collections::HashMap<TenantId, Arc<std::sync::atomic::AtomicUsize>>>>;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime whose compiled components are cached in `cache_dir` (none: always compile).
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Deadlines: the engine's epoch advances every EPOCH_TICK; each call gets a budget.
        config.epoch_interruption(true);
        // A guest recursing without bound traps on its stack, not the host's.
        config.max_wasm_stack(1 << 20);
        // `STORYLINE_PERFMAP=1` names JIT code for `perf` (writes /tmp/perf-<pid>.map).
        if std::env::var_os("STORYLINE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let ticker = Ticker::start(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        v0_1_0::Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| anyhow::anyhow!("cannot link the host interface: {e:#}"))?;
        v0_2_0::Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| anyhow::anyhow!("cannot link the host interface: {e:#}"))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache: cache_dir.map(ComponentCache::new),
            budgets: Default::default(),
            loaded: Default::default(),
            ticker,
        })
    }

    /// Bytes of linear memory the tenant's instances hold now (all plugins and versions): what
    /// counts against its memory limit.
    pub fn memory_in_use(&self, tenant: &TenantId) -> usize {
        let budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        budgets.get(tenant).map_or(0, |b| b.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Loads and checks the plugin in `path`.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes =
            std::fs::read(path).map_err(|error| LoadError::Io { path: path.into(), error })?;
        self.load_bytes(path, &bytes)
    }

    /// Loads and checks a plugin from its bytes; `path` names it in errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Plugin, LoadError> {
        let manifest = inspect(path, bytes)?;
        let sha256 = hex(&Sha256::digest(bytes));
        let started = Instant::now();
        let shared = {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            loaded.get(&sha256).and_then(std::sync::Weak::upgrade)
        };
        let (compiled, origin) = match shared {
            Some(compiled) => (compiled, Origin::Shared),
            None => {
                let (compiled, origin) = self.compile(path, bytes, &sha256, &manifest)?;
                let compiled = Arc::new(compiled);
                let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded.retain(|_, c| c.strong_count() > 0);
                loaded.insert(sha256.clone(), Arc::downgrade(&compiled));
                (compiled, origin)
            }
        };
        let compile_time = started.elapsed();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        Ok(Plugin {
            info: Arc::new(PluginInfo {
                name,
                path: path.to_path_buf(),
                size: bytes.len(),
                sha256,
                manifest,
                origin,
                compile_time,
            }),
            compiled,
            engine: self.engine.clone(),
            budgets: self.budgets.clone(),
            ticker: self.ticker.clone(),
        })
    }

    /// Compiles `bytes` (or loads the compiled artefact from the cache) and checks it against
    /// the world of the version it claims.
    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        sha256: &str,
        manifest: &Manifest,
    ) -> Result<(Compiled, Origin), LoadError> {
        let compiled = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, bytes, sha256),
            None => wasmtime::component::Component::new(&self.engine, bytes)
                .map(|c| (c, Origin::Compiled)),
        };
        let (component, origin) = compiled
            .map_err(|e| LoadError::Compile { path: path.into(), reason: format!("{e:#}") })?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            path: path.into(),
            version: manifest.version.clone(),
            reason: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        // The world's exports are checked against the version the component claims.
        let abi = Abi::of(&manifest.version).ok_or_else(|| LoadError::WrongVersion {
            path: path.into(),
            found: manifest.version.clone(),
        })?;
        let pre = match abi {
            Abi::V0_1 => v0_1_0::PluginPre::new(pre).map(|p| p.instance_pre().clone()),
            Abi::V0_2 => v0_2_0::PluginPre::new(pre).map(|p| p.instance_pre().clone()),
        }
        .map_err(wrong_world)?;
        Ok((Compiled { pre, abi }, origin))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest call runs, and sleeps
/// otherwise: ten thousand idle tenants cost no wake-ups. Ends when the engine is dropped.
#[derive(Debug, Default)]
struct Ticker {
    /// Calls running now.
    calls: std::sync::atomic::AtomicUsize,
    /// The ticking thread, woken when the first call starts.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Held while a guest call runs: the epoch advances meanwhile.
struct Ticking<'t>(&'t Ticker);

impl Ticker {
    fn start(engine: &Engine) -> Arc<Ticker> {
        let ticker = Arc::new(Ticker::default());
        let weak = engine.weak();
        let t = ticker.clone();
        let spawned = std::thread::Builder::new().name("storyline-epoch".into()).spawn(move || {
            loop {
                if t.calls.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    // Woken by the next call; the timeout only notices a dropped engine.
                    std::thread::park_timeout(Duration::from_secs(1));
                } else {
                    std::thread::sleep(EPOCH_TICK);
                }
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        });
        match spawned {
            Ok(handle) => {
                let _ = ticker.thread.set(handle.thread().clone());
            }
            // Without the ticker no deadline fires; say so loudly rather than fail every call.
            Err(e) => tracing::error!(
                "cannot start the epoch thread; plugin deadlines are not enforced: {e}"
            ),
        }
        ticker
    }

    /// Marks a call as running until the guard drops.
    fn enter(&self) -> Ticking<'_> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Facts about a loaded plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// File name without extension.
    pub name: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Version, exports and imports.
    pub manifest: Manifest,
    /// Compiled now or loaded from the cache.
    pub origin: Origin,
    /// Time spent compiling or loading the compiled artefact.
    pub compile_time: Duration,
}

impl PluginInfo {
    /// `name@` and the first 12 hex digits of the hash: how logs and errors name a plugin.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, &self.sha256[..12])
    }
}

/// How a supported version of `storyline:correlator` hands events to the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abi {
    /// 0.1.0: a list of event records; `route` one event per call.
    V0_1,
    /// 0.2.0: packed events; `route` many per call.
    V0_2,
}

impl Abi {
    /// The shape of a version; `None` for a version without one here.
    fn of(version: &str) -> Option<Abi> {
        match version {
            "0.1.0" => Some(Abi::V0_1),
            "0.2.0" => Some(Abi::V0_2),
            _ => None,
        }
    }
}

/// A compiled component ready to instantiate, and how its version hands events over.
struct Compiled {
    pre: wasmtime::component::InstancePre<HostState>,
    abi: Abi,
}

/// Components loaded and still in use, by SHA-256: a thousand tenants running the same file
/// share one compiled copy (its code is mapped once) instead of a copy each.
type Loaded = Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Compiled>>>>;

/// A checked, compiled plugin, ready to be instantiated for any number of tenants.
#[derive(Clone)]
pub struct Plugin {
    info: Arc<PluginInfo>,
    /// The compiled component, shared by every plugin loaded from the same bytes.
    compiled: Arc<Compiled>,
    ticker: Arc<Ticker>,
    engine: Engine,
    budgets: TenantBudgets,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Plugin {
    /// Facts about the file.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_its_way_of_handing_events() {
        for v in SUPPORTED_VERSIONS {
            assert!(Abi::of(v).is_some(), "{v}");
        }
        assert_eq!(Abi::of("0.9.0"), None);
    }
}
