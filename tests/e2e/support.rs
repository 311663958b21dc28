//! Helpers shared by the end-to-end tests: the plugins (built once per run), the `storyline`
//! binary, and scratch directories.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use storyline::model::{Bucket, Event, TenantId};
use storyline::plugin::{Limits, Plugin, PluginInstance, Runtime};

#[path = "plugin_build.rs"]
mod plugin_build;
pub use plugin_build::{plugin, root};

/// One runtime per test binary; it has no disk cache, so tests do not depend on each other.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(None).expect("runtime"))
}

/// A loaded plugin, compiled once per test binary.
pub fn loaded(name: &str) -> Plugin {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(String, Plugin)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = cache.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let p = runtime().load(&plugin(name)).unwrap_or_else(|e| panic!("{e}"));
    cache.push((name.to_string(), p.clone()));
    p
}

/// Instantiates a plugin for `tenant` with `config` and short limits.
pub fn instance(name: &str, tenant: &str, config: &str) -> PluginInstance {
    loaded(name)
        .instantiate(&TenantId::new(tenant).unwrap(), config, test_limits())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Limits with a short deadline and a small memory cap, so fault tests end quickly.
pub fn test_limits() -> Limits {
    Limits {
        call_timeout: std::time::Duration::from_millis(500),
        memory_bytes: 64 << 20,
        output_bytes: 8 << 20,
        ..Limits::default()
    }
}

/// A bucket of simple events `ids` at `start` (1 s long; watermark = end).
pub fn bucket(tenant: &str, start: i64, ids: &[&str]) -> Bucket {
    bucket_of_kind(tenant, start, ids, "flow")
}

/// Like [`bucket`] with a chosen event kind.
pub fn bucket_of_kind(tenant: &str, start: i64, ids: &[&str], kind: &str) -> Bucket {
    Bucket {
        tenant: tenant.into(),
        shard: 0,
        start,
        end: start + 1000,
        watermark: start + 1000,
        events: ids
            .iter()
            .map(|id| Event {
                id: id.to_string(),
                source: "test".into(),
                kind: kind.into(),
                event_time: start,
                insert_time: start,
                attributes: vec![],
                payload: b"{}".to_vec(),
            })
            .collect(),
    }
}

/// Runs the real `storyline` binary with `args`.
pub fn storyline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(args)
        .env_remove("STORYLINE_DATA_DIR")
        .env_remove("STORYLINE_PLUGIN_DIR")
        .env_remove("STORYLINE_CONFIG")
        .output()
        .expect("cannot run storyline")
}

/// A fresh scratch directory under target/, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = root().join("target").join("e2e-scratch").join(format!(
            "{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A component exporting one interface `name` with a single `init` function: the right file
/// type, the wrong plugin.
pub fn component_exporting(name: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $api (export "init" (func $f)))
            (export "{name}" (instance $api)))"#
    ))
    .unwrap()
}

/// Sends SIGTERM to a child process (asserting the signal was delivered).
pub fn sigterm(child: &std::process::Child) {
    let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -TERM {} failed", child.id());
}

/// Threads that keep every core busy until dropped: a test run beside it sees a loaded machine.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    /// One spinning thread per core, plus one.
    pub fn start() -> CpuHog {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..=cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
