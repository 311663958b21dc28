//! The plugin directory while the host runs: which plugin version each tenant runs now.
//!
//! Operators keep one folder per tenant, `DIR/<tenant>/<name>.wasm` with an optional
//! `DIR/<tenant>/<name>.json` passed to `init`. [`Catalog::watch`] follows the directory with
//! `notify`: after a change settles (no event for [`SETTLE`]), the tenant's plugin is loaded
//! again. A new version is compiled, checked against the WIT world and instantiated with `init`
//! *before* it replaces the old one; a file that fails any step (half-written, not a component,
//! wrong world or version, `init` refuses its configuration) is rejected with its error, in the
//! log and in [`SlotStatus`], and the previous version keeps serving. Each shard takes the new
//! version at its next bucket boundary, handing its state over (`snapshot` → `restore`).
//! Deleting a tenant's plugin stops its shards after their commit; offsets stay.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::{TenantId, TimestampMs};
use crate::plugin::{Limits, Plugin, Runtime};
use crate::producer::now_ms;

mod known_good;
pub use known_good::{KnownGood, Remembered};

/// Quiet time after the last file event before a tenant is reloaded: a writer still copying
/// keeps producing events, so a half-written file is retried once it stops.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The version of a tenant's plugin that serves now.
#[derive(Debug)]
pub struct Active {
    /// The loaded component.
    pub plugin: Plugin,
    /// Configuration passed to `init`.
    pub config: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// When it was loaded, epoch ms.
    pub loaded_ms: TimestampMs,
    /// Increases with every change of version (or removal).
    pub generation: u64,
}

/// What status shows of a tenant's plugin.
#[derive(Debug, Clone, Default)]
pub struct SlotStatus {
    /// The last reload that failed: when (epoch ms) and why. Cleared by a successful reload.
    pub last_error: Option<(TimestampMs, String)>,
    /// Successful loads so far.
    pub loads: u64,
    /// Other `.wasm` files in the tenant's folder, ignored (see [`find_plugin`]).
    pub ignored: Vec<PathBuf>,
}

/// One tenant's plugin: the active version and its history.
#[derive(Debug)]
pub struct Slot {
    tenant: TenantId,
    generation: AtomicU64,
    active: Mutex<Option<Arc<Active>>>,
    status: Mutex<SlotStatus>,
    /// Told of every new version or removal (workers sleeping until then wake up).
    watchers: Watchers,
    /// Counts changes of the active version or the status (what status writers compare).
    changes: AtomicU64,
}

/// Callbacks told of a slot's changes.
#[derive(Default)]
struct Watchers(Mutex<Vec<Arc<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().unwrap_or_else(|p| p.into_inner()).len();
        write!(f, "{n} watchers")
    }
}

impl Slot {
    /// A slot with no plugin yet.
    pub fn empty(tenant: TenantId) -> Self {
        Slot {
            tenant,
            generation: AtomicU64::new(0),
            active: Mutex::new(None),
            status: Mutex::new(SlotStatus::default()),
            watchers: Watchers::default(),
            changes: AtomicU64::new(0),
        }
    }

    /// Changes with every change of version or status: what was described at one value is
    /// still true at the same value.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Calls `f` after every change of version (or removal) from now on.
    pub fn on_change(&self, f: Arc<dyn Fn() + Send + Sync>) {
        self.watchers.0.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let watchers = self.watchers.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for f in watchers {
            f();
        }
    }

    /// A slot holding `plugin` (for library users and tests that run a fixed plugin).
    pub fn fixed(tenant: TenantId, plugin: Plugin, config: &str) -> Arc<Self> {
        let slot = Slot::empty(tenant);
        slot.install(plugin, config.to_string(), PathBuf::new());
        Arc::new(slot)
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Changes with every new version or removal: shards compare it at bucket boundaries.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The version serving now, if any.
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Load history and the last error.
    pub fn status(&self) -> SlotStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a failure that leaves the current version serving.
    pub fn record_error(&self, message: String) {
        tracing::error!(tenant = %self.tenant, "{message}");
        self.status.lock().unwrap_or_else(|p| p.into_inner()).last_error =
            Some((now_ms(), message));
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Records the other `.wasm` files of the folder, logging those not reported before.
    fn set_ignored(&self, ignored: Vec<PathBuf>, serving: &Path) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for file in ignored.iter().filter(|f| !status.ignored.contains(f)) {
            tracing::warn!(
                tenant = %self.tenant,
                "ignoring {}: the tenant's plugin is {} (one .wasm per tenant folder; remove the other file)",
                file.display(),
                serving.display()
            );
        }
        status.ignored = ignored;
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    fn install(&self, plugin: Plugin, config: String, path: PathBuf) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(Ordering::Acquire) + 1;
        *active = Some(Arc::new(Active { plugin, config, path, loaded_ms: now_ms(), generation }));
        self.generation.store(generation, Ordering::Release);
        drop(active);
        {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.loads += 1;
            status.last_error = None;
        }
        self.changed();
    }

    fn remove(&self) {
        let removed = self.active.lock().unwrap_or_else(|p| p.into_inner()).take().is_some();
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.changed();
        }
    }
}

/// A tenant's plugin file as its folder names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The plugin file.
    pub path: PathBuf,
    /// Its configuration: the `.json` beside it, `{}` when there is none.
    pub config: String,
    /// Other `.wasm` files in the folder, which are not the tenant's plugin (reported, never
    /// loaded).
    pub ignored: Vec<PathBuf>,
}

/// Which `.wasm` of a tenant's folder is its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// The only one; when the folder holds several, the one with this file name (the file
    /// serving now, or the last one that loaded).
    Prefer(Option<&'a Path>),
    /// The file of this name, which the configuration file names (`tenants.<name>.plugin`),
    /// even when it is not the only one. When the folder holds other `.wasm` files but not
    /// this one, that is an error: another file is never taken in its place.
    Named(&'a str),
}

/// The tenant's plugin file, or `None` when the tenant has no folder or no `.wasm` in it.
///
/// One plugin per tenant: the only `.wasm` of its folder (names starting with `.` are
/// temporary files and never count), unless the configuration names one ([`Choice::Named`]).
/// When the folder holds several, the preferred one decides (the file serving now, or the last
/// one that loaded): the others are ignored and reported. Several with none preferred is an
/// error naming them: which file is a tenant's plugin never depends on file-name order.
pub fn find_plugin(
    dir: &Path,
    tenant: &TenantId,
    choice: Choice<'_>,
) -> Result<Option<Found>, String> {
    let folder = dir.join(tenant.as_str());
    let Ok(entries) = std::fs::read_dir(&folder) else { return Ok(None) };
    let mut wasm: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .collect();
    wasm.sort();
    let names = |wasm: &[PathBuf]| -> String {
        let names: Vec<String> = wasm
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect();
        names.join(", ")
    };
    let prefer = match choice {
        Choice::Prefer(prefer) => prefer,
        Choice::Named(name) => {
            if wasm.is_empty() {
                return Ok(None);
            }
            let Some(i) = wasm.iter().position(|w| w.file_name() == Some(name.as_ref())) else {
                return Err(format!(
                    "the configuration names {name} as tenant {tenant}'s plugin (tenants.{tenant}.plugin), but {} holds only {}: install {name} there or change tenants.{tenant}.plugin",
                    folder.display(),
                    names(&wasm)
                ));
            };
            return found(wasm, i).map(Some);
        }
    };
    let chosen = match wasm.len() {
        0 => return Ok(None),
        1 => 0,
        n => {
            let preferred = prefer.and_then(|p| p.file_name());
            match wasm.iter().position(|w| w.file_name() == preferred) {
                Some(i) => i,
                None => {
                    return Err(format!(
                        "{} holds {n} plugin files ({}) and none of them served tenant {tenant} before: keep one .wasm per tenant folder (install a new version by renaming it over the old one), or name the plugin in the configuration file (tenants.{tenant}.plugin)",
                        folder.display(),
                        names(&wasm)
                    ));
                }
            }
        }
    };
    found(wasm, chosen).map(Some)
}

/// `wasm[chosen]` with its configuration, the other files ignored.
fn found(mut wasm: Vec<PathBuf>, chosen: usize) -> Result<Found, String> {
    let path = wasm.remove(chosen);
    let config_path = path.with_extension("json");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "{}".to_string(),
        Err(e) => {
            return Err(format!("cannot read plugin configuration {}: {e}", config_path.display()));
        }
    };
    Ok(Found { path, config, ignored: wasm })
}

/// Every tenant's slot, loaded from the plugin directory.
#[derive(Debug)]
pub struct Catalog {
    runtime: Runtime,
    dir: PathBuf,
    limits: Limits,
    /// Where each tenant's last version that loaded is remembered, if anywhere.
    known_good: Option<KnownGood>,
    /// Tenants whose plugin file the configuration names (see [`Choice::Named`]).
    named: BTreeMap<TenantId, String>,
    slots: Mutex<BTreeMap<TenantId, Arc<Slot>>>,
    /// One reload at a time (the watcher's and a caller's may race): compare and install are
    /// one step.
    reloading: Mutex<()>,
    /// Reloads so far (each reads and hashes the tenant's file).
    reloads: std::sync::atomic::AtomicU64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// A new version serves.
    Loaded,
    /// The same file and configuration were already serving.
    Unchanged,
    /// The tenant has no plugin any more; its shards stop.
    Removed,
    /// Still no plugin.
    Absent,
    /// The new version was rejected; the previous one (if any) keeps serving.
    Rejected(String),
}

impl Catalog {
    /// A catalog of the plugin directory `dir`; nothing is loaded yet.
    pub fn new(runtime: Runtime, dir: impl Into<PathBuf>, limits: Limits) -> Arc<Self> {
        Self::remembering(runtime, dir, limits, None)
    }

    /// Like [`Catalog::new`], remembering each tenant's version that loaded in `known_good`
    /// (so that `storyline ingest` routes with it even when the folder is broken).
    pub fn remembering(
        runtime: Runtime,
        dir: impl Into<PathBuf>,
        limits: Limits,
        known_good: Option<KnownGood>,
    ) -> Arc<Self> {
        Self::configured(runtime, dir, limits, known_good, BTreeMap::new())
    }

    /// Like [`Catalog::remembering`], where the tenants of `named` run the plugin file of that
    /// name in their folder (the configuration file's `tenants.<name>.plugin`).
    pub fn configured(
        runtime: Runtime,
        dir: impl Into<PathBuf>,
        limits: Limits,
        known_good: Option<KnownGood>,
        named: BTreeMap<TenantId, String>,
    ) -> Arc<Self> {
        Arc::new(Catalog {
            runtime,
            dir: dir.into(),
            limits,
            known_good,
            named,
            slots: Mutex::new(BTreeMap::new()),
            reloading: Mutex::new(()),
            reloads: Default::default(),
        })
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The runtime the plugins are loaded in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The limits each instance runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The tenant's slot (empty until [`Catalog::reload`] finds its plugin).
    pub fn slot(&self, tenant: &TenantId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(tenant.clone()).or_insert_with(|| Arc::new(Slot::empty(tenant.clone()))).clone()
    }

    /// Bytes of plugin memory the tenant's instances hold, and the tenant's limit.
    pub fn memory(&self, tenant: &TenantId) -> (usize, usize) {
        (self.runtime.memory_in_use(tenant), self.limits.memory_bytes)
    }

    /// Every tenant seen so far, with its slot.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Tenants with a folder in the plugin directory.
    pub fn tenants_on_disk(&self) -> Vec<TenantId> {
        let mut out: Vec<TenantId> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| TenantId::new(&e.file_name().to_string_lossy()).ok())
            .collect();
        out.sort();
        out
    }

    /// How many reloads were made (each reads and hashes a plugin file).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Loads the tenant's plugin from the directory if it changed. The new version must
    /// compile, match the world and pass `init` before it replaces the current one.
    pub fn reload(&self, tenant: &TenantId) -> Reload {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = self.slot(tenant);
        // With several files in the folder, the one serving (else the last that loaded) stays
        // the tenant's plugin.
        let remembered = self.known_good.as_ref().and_then(|k| k.recall(tenant));
        let prefer = match slot.active() {
            Some(active) => Some(active.path.clone()),
            None => remembered.map(|r| r.path),
        };
        let choice = match self.named.get(tenant) {
            Some(name) => Choice::Named(name),
            None => Choice::Prefer(prefer.as_deref()),
        };
        let found = match find_plugin(&self.dir, tenant, choice) {
            Ok(found) => found,
            Err(e) => {
                return reject(&slot, format!("{e}; the previous version, if any, keeps serving"));
            }
        };
        let Some(Found { path, config, ignored }) = found else {
            slot.set_ignored(Vec::new(), Path::new(""));
            if slot.active().is_some() {
                slot.remove();
                tracing::warn!(%tenant, "plugin removed: the tenant's shards stop after their commit; offsets are kept");
                return Reload::Removed;
            }
            return Reload::Absent;
        };
        slot.set_ignored(ignored, &path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return reject(&slot, format!("cannot read {}: {e}", path.display())),
        };
        let plugin = match self.runtime.load_bytes(&path, &bytes) {
            Ok(p) => p,
            Err(e) => return reject(&slot, format!("{e}; the previous version keeps serving")),
        };
        if let Some(active) = slot.active()
            && active.plugin.info().sha256 == plugin.info().sha256
            && active.config == config
        {
            return Reload::Unchanged;
        }
        // A probe instance: `init` must accept the configuration before anything switches.
        if let Err(e) = plugin.instantiate(tenant, &config, self.limits) {
            return reject(&slot, format!("{e}; the previous version keeps serving"));
        }
        tracing::info!(%tenant, plugin = %plugin.info().label(), path = %path.display(), "plugin loaded");
        if let Some(known) = &self.known_good {
            let record = Remembered {
                path: path.clone(),
                sha256: plugin.info().sha256.clone(),
                config: config.clone(),
            };
            if let Err(e) = known.remember(tenant, &bytes, &record) {
                tracing::warn!(%tenant, "cannot remember the version that loaded (a standalone ingest may not route with it): {e}");
            }
        }
        slot.install(plugin, config, path);
        crate::metrics::telemetry().reload(tenant, true);
        Reload::Loaded
    }

    /// Follows the directory: changed tenants are reloaded once their files settle, and
    /// `on_new` is called for a tenant whose first plugin appears. Runs until the returned
    /// watcher is dropped.
    pub fn watch(
        self: &Arc<Self>,
        on_new: impl Fn(TenantId) + Send + 'static,
    ) -> Result<notify::RecommendedWatcher, notify::Error> {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(tx)?;
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        let catalog = self.clone();
        std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || catalog.follow(rx, on_new))
            .map_err(|e| notify::Error::generic(&format!("cannot start the watcher: {e}")))?;
        Ok(watcher)
    }

    fn follow(
        &self,
        rx: std::sync::mpsc::Receiver<notify::Result<notify::Event>>,
        on_new: impl Fn(TenantId),
    ) {
        let mut pending: HashMap<TenantId, Instant> = HashMap::new();
        loop {
            let wait = if pending.is_empty() { Duration::from_secs(3600) } else { SETTLE / 4 };
            match rx.recv_timeout(wait) {
                // Opening a file is an event too (inotify's IN_OPEN), and a reload opens the
                // tenant's file: only changes count, or every plugin would be read again and
                // again.
                Ok(Ok(event)) if matches!(event.kind, notify::EventKind::Access(_)) => {}
                Ok(Ok(event)) => {
                    for path in &event.paths {
                        if let Some(tenant) = self.tenant_of(path) {
                            pending.insert(tenant, Instant::now());
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!("plugin directory watch: {e}"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                // The watcher was dropped: the host is stopping.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let settled: Vec<TenantId> = pending
                .iter()
                .filter(|(_, at)| at.elapsed() >= SETTLE)
                .map(|(t, _)| t.clone())
                .collect();
            for tenant in settled {
                pending.remove(&tenant);
                let had = self.slot(&tenant).active().is_some();
                match self.reload(&tenant) {
                    Reload::Loaded if !had => on_new(tenant),
                    _ => {}
                }
            }
        }
    }

    /// The tenant a path in the plugin directory belongs to.
    fn tenant_of(&self, path: &Path) -> Option<TenantId> {
        let rel = path.strip_prefix(&self.dir).ok()?;
        let first = rel.components().next()?;
        TenantId::new(&first.as_os_str().to_string_lossy()).ok()
    }
}

/// What status prints of a tenant's plugin: version, hash, load time, last reload error, and
/// `memory`: the bytes its instances hold and the tenant's limit (see [`Catalog::memory`]).
pub fn describe(slot: &Slot, memory: (usize, usize)) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let status = slot.status();
    match slot.active() {
        Some(a) => {
            let info = a.plugin.info();
            let _ = writeln!(
                out,
                "plugin: {} (storyline:correlator@{}, sha256 {}), loaded {} from {}; {} loads",
                info.label(),
                info.manifest.version,
                info.sha256,
                storyline_sdk::format::format_rfc3339(a.loaded_ms),
                a.path.display(),
                status.loads
            );
        }
        None => out.push_str("plugin: none (the tenant's shards wait for one)\n"),
    }
    match status.last_error {
        Some((at, e)) => {
            let _ = writeln!(
                out,
                "last reload error: {}: {e}",
                storyline_sdk::format::format_rfc3339(at)
            );
        }
        None => out.push_str("last reload error: none\n"),
    }
    if !status.ignored.is_empty() {
        let names: Vec<String> = status.ignored.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(
            out,
            "ignored plugin files: {} (one .wasm per tenant folder; remove them)",
            names.join(", ")
        );
    }
    let (used, limit) = memory;
    let _ = writeln!(
        out,
        "plugin memory: {} MiB of {} MiB (the rule's state in every shard's instance)",
        used >> 20,
        limit >> 20
    );
    out
}

fn reject(slot: &Slot, message: String) -> Reload {
    crate::metrics::telemetry().reload(slot.tenant(), false);
    slot.record_error(message.clone());
    Reload::Rejected(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, files: &[&str]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("storyline-find-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("acme")).unwrap();
        for f in files {
            std::fs::write(dir.join("acme").join(f), "x").unwrap();
        }
        dir
    }

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn the_only_wasm_of_a_folder_is_the_plugin_and_temporary_files_never_count() {
        let dir = folder("only", &["rules.wasm", ".rules.wasm", "rules.json.tmp", "notes.txt"]);
        let found = find_plugin(&dir, &acme(), Choice::Prefer(None)).unwrap().unwrap();
        assert_eq!(found.path, dir.join("acme/rules.wasm"));
        assert_eq!(found.config, "{}");
        assert!(found.ignored.is_empty(), "{:?}", found.ignored);
        assert_eq!(
            find_plugin(&dir, &TenantId::new("beta").unwrap(), Choice::Prefer(None)),
            Ok(None)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_several_wasm_the_preferred_one_serves_and_the_others_are_ignored_whatever_their_names()
    {
        let dir = folder("several", &["a-stray.wasm", "rules.wasm", "z-stray.wasm"]);
        let prefer = Path::new("/elsewhere/plugins/acme/rules.wasm");
        let found = find_plugin(&dir, &acme(), Choice::Prefer(Some(prefer))).unwrap().unwrap();
        assert_eq!(found.path, dir.join("acme/rules.wasm"));
        assert_eq!(
            found.ignored,
            vec![dir.join("acme/a-stray.wasm"), dir.join("acme/z-stray.wasm")]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn several_wasm_and_none_preferred_is_an_error_naming_them_never_a_choice_by_name() {
        let dir = folder("ambiguous", &["b.wasm", "a.wasm"]);
        for prefer in [None, Some(Path::new("gone.wasm"))] {
            let err = find_plugin(&dir, &acme(), Choice::Prefer(prefer)).unwrap_err();
            assert!(err.contains("holds 2 plugin files (a.wasm, b.wasm)"), "{err}");
            assert!(err.contains("keep one .wasm per tenant folder"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_configured_name_wins_over_the_file_serving() {
        let dir = folder("named", &["old.wasm", "rules.wasm"]);
        let found = find_plugin(&dir, &acme(), Choice::Named("rules.wasm")).unwrap().unwrap();
        assert_eq!(found.path, dir.join("acme/rules.wasm"));
        assert_eq!(found.ignored, vec![dir.join("acme/old.wasm")]);
        // Without the configuration, the file serving would have stayed.
        let serving = Path::new("/plugins/acme/old.wasm");
        assert_eq!(
            find_plugin(&dir, &acme(), Choice::Prefer(Some(serving))).unwrap().unwrap().path,
            dir.join("acme/old.wasm")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_configured_file_that_is_missing_is_reported_never_replaced_by_another() {
        let dir = folder("named-missing", &["other.wasm"]);
        let err = find_plugin(&dir, &acme(), Choice::Named("rules.wasm")).unwrap_err();
        assert!(err.contains("names rules.wasm") && err.contains("tenants.acme.plugin"), "{err}");
        assert!(err.contains("holds only other.wasm"), "{err}");
        let empty = folder("named-empty", &[]);
        assert_eq!(find_plugin(&empty, &acme(), Choice::Named("rules.wasm")), Ok(None));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&empty);
    }
}
