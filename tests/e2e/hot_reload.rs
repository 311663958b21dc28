//! Hot reload with the real watcher on a real plugin directory: versions replaced while events
//! flow, bad files rejected while the last good version keeps serving, tenants isolated from
//! each other's faults, dead letters replayed after a fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storyline::catalog::{Catalog, Reload};
use storyline::model::{Story, TenantId};
use storyline::producer::{IngestReport, Producer};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};
use storyline::worker::{OnFailure, Progress, Shared, WorkerConfig, WorkerError, run_tenant};

use crate::support::{Scratch, component_exporting, plugin, runtime, test_limits};

/// Short buckets so that a version switch shows within a fraction of a second.
const LAYOUT: Layout = Layout { shards: 4, bucket_ms: 100 };

/// Writes `bytes` next to `path` and renames it into place, as operators are told to.
fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn faulty_config(dir: &Path, tenant: &str, config: &str) {
    put(&dir.join(tenant).join("faulty.json"), config.as_bytes());
}

/// A running host: the watched plugin directory, the store, one worker per tenant, and every
/// story published with the moment it was.
struct Host {
    scratch: Scratch,
    rt: tokio::runtime::Runtime,
    store: EmbeddedStore,
    catalog: Arc<Catalog>,
    _watcher: notify::RecommendedWatcher,
    published: Arc<Mutex<Vec<(Instant, Story)>>>,
    progress: Arc<Progress>,
    shutdown: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Result<(), WorkerError>>>,
    next_id: AtomicU64,
}

impl Host {
    /// `tenants`: name and faulty configuration of each.
    fn start(name: &str, tenants: &[(&str, &str)], on_failure: OnFailure) -> Host {
        let scratch = Scratch::new(name);
        let dir = scratch.path("plugins");
        for (tenant, config) in tenants {
            std::fs::create_dir_all(dir.join(tenant)).unwrap();
            put(&dir.join(tenant).join("faulty.wasm"), &std::fs::read(plugin("faulty")).unwrap());
            faulty_config(&dir, tenant, config);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = EmbeddedStore::new(scratch.path("data"));
        let catalog = Catalog::new(runtime().clone(), &dir, test_limits());
        let watcher = catalog.watch(|_| {}).unwrap();
        let published: Arc<Mutex<Vec<(Instant, Story)>>> = Arc::default();
        let progress = Arc::new(Progress::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut host = Host {
            scratch,
            rt,
            store,
            catalog,
            _watcher: watcher,
            published,
            progress,
            shutdown,
            workers: Vec::new(),
            next_id: AtomicU64::new(0),
        };
        for (tenant, _) in tenants {
            let t = TenantId::new(tenant).unwrap();
            // (The watcher may have loaded it first.)
            let loaded = host.catalog.reload(&t);
            assert!(matches!(loaded, Reload::Loaded | Reload::Unchanged), "{loaded:?}");
            // The tenant exists once it has events.
            host.ingest(tenant, 1);
            let config = WorkerConfig {
                delay_ms: 100,
                poll_ms: 20,
                tick_ms: 100,
                checkpoint_ms: 200,
                backoff_ms: 50,
                on_failure,
                limits: test_limits(),
                ..WorkerConfig::default()
            };
            let published = host.published.clone();
            let shared = Shared {
                sink: Some(Arc::new(move |stories: &[Story]| {
                    let now = Instant::now();
                    let mut p = published.lock().unwrap();
                    p.extend(stories.iter().map(|s| (now, s.clone())));
                })),
                progress: host.progress.clone(),
                shutdown: host.shutdown.clone(),
            };
            let (handle, store, slot) =
                (host.rt.handle().clone(), host.store.clone(), host.catalog.slot(&t));
            host.workers.push(std::thread::spawn(move || {
                run_tenant(&handle, &store, &t, &slot, &config, &shared)
            }));
        }
        host
    }

    fn plugin_dir(&self) -> PathBuf {
        self.scratch.path("plugins")
    }

    /// Writes `n` events for `tenant`; their ids.
    fn ingest(&self, tenant: &str, n: usize) -> Vec<String> {
        let t = TenantId::new(tenant).unwrap();
        let mut producer = Producer::new(&self.store, t, LAYOUT, None);
        let mut report = IngestReport::default();
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = format!("{tenant}-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
            let line = format!(r#"{{"id":"{id}","source":"s","kind":"k","time":1000}}"#);
            self.rt.block_on(producer.push_line(&line, 1, &mut report)).unwrap();
            ids.push(id);
        }
        self.rt.block_on(producer.flush(&mut report)).unwrap();
        assert_eq!(report.accepted, n as u64);
        ids
    }

    /// Stories published for these events so far: event id → tags of the stories naming it.
    fn tags_of(&self, ids: &[String]) -> BTreeMap<String, Vec<String>> {
        let wanted: BTreeSet<&String> = ids.iter().collect();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, s) in self.published.lock().unwrap().iter() {
            for e in s.event_ids.iter().filter(|e| wanted.contains(e)) {
                out.entry(e.clone()).or_default().push(tag(s));
            }
        }
        out
    }

    /// Waits until every one of `ids` is in a published story.
    fn wait_for_stories(&self, ids: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.tags_of(ids).len();
            if seen == ids.len() {
                return;
            }
            assert!(Instant::now() < deadline, "only {seen} of {} events published", ids.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            w.join().unwrap().unwrap();
        }
    }
}

fn tag(s: &Story) -> String {
    let fields: serde_json::Value = serde_json::from_str(s.fields.get()).unwrap();
    fields["tag"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_plugin_replaced_50_times_while_events_flow_loses_and_doubles_nothing() {
    let host = Host::start("reload-50", &[("acme", r#"{"tag": "v0"}"#)], OnFailure::Skip);
    let dir = host.plugin_dir();
    let wasm = std::fs::read(plugin("faulty")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let all_ids: Arc<Mutex<Vec<String>>> = Arc::default();
    std::thread::scope(|scope| {
        // Events flow the whole time: 20 every 20 ms.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let ids = host.ingest("acme", 20);
                all_ids.lock().unwrap().extend(ids);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut lat = Vec::new();
        for v in 1..=50 {
            // A new version: the component copied anew and its configuration, renamed in.
            put(&dir.join("acme/faulty.wasm"), &wasm);
            faulty_config(&dir, "acme", &format!(r#"{{"tag": "v{v}"}}"#));
            let renamed = Instant::now();
            // Each version takes over (the next one comes once it served a bucket).
            let tag_now = format!("v{v}");
            let served = loop {
                let first = host
                    .published
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, s)| tag(s) == tag_now)
                    .map(|(at, _)| *at);
                if let Some(at) = first {
                    break at;
                }
                assert!(renamed.elapsed() < Duration::from_secs(10), "version {v} never served");
                std::thread::sleep(Duration::from_millis(10));
            };
            // Measured, not asserted: rename → first story of a bucket the new version processed.
            lat.push(served.duration_since(renamed).as_millis());
        }
        stop.store(true, Ordering::Relaxed);
        lat.sort_unstable();
        if !lat.is_empty() {
            eprintln!(
                "reload: rename -> first story of the new version: median {} ms, max {} ms over {} versions",
                lat[lat.len() / 2],
                lat[lat.len() - 1],
                lat.len()
            );
        }
    });
    let ids = all_ids.lock().unwrap().clone();
    host.wait_for_stories(&ids, Duration::from_secs(30));
    // Every event in exactly one publication: nothing lost, nothing processed twice.
    let tags = host.tags_of(&ids);
    for (id, t) in &tags {
        assert_eq!(t.len(), 1, "event {id} published {} times: {t:?}", t.len());
    }
    let versions: BTreeSet<&String> = tags.values().flatten().collect();
    assert!(versions.len() >= 50, "only {} versions served: {versions:?}", versions.len());
    let status = host.catalog.slot(&TenantId::new("acme").unwrap()).status();
    assert_eq!(status.loads, 51, "{status:?}");
    assert!(status.last_error.is_none(), "{status:?}");
    host.stop();
}

/// Reading a plugin file (as a reload does, or a backup) is no change: the watcher leaves it.
/// inotify reports opens, and a reload that took its own read for a change read every tenant's
/// plugin again every fraction of a second, forever.
#[test]
fn a_loaded_plugin_is_not_read_again_until_its_file_changes() {
    let scratch = Scratch::new("reload-quiet");
    let dir = scratch.path("plugins");
    let file = dir.join("acme/faulty.wasm");
    std::fs::create_dir_all(dir.join("acme")).unwrap();
    let catalog = Catalog::new(runtime().clone(), &dir, test_limits());
    let _watcher = catalog.watch(|_| {}).unwrap();
    put(&file, &std::fs::read(plugin("faulty")).unwrap());
    let slot = catalog.slot(&TenantId::new("acme").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot.active().is_none() {
        assert!(Instant::now() < deadline, "the plugin never loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(storyline::catalog::SETTLE * 3);
    let settled = catalog.reloads();
    for _ in 0..3 {
        std::fs::read(&file).unwrap();
        std::thread::sleep(storyline::catalog::SETTLE * 2);
    }
    assert_eq!(catalog.reloads(), settled, "reads of an unchanged file caused reloads");
    // A change is still seen.
    put(&file, &std::fs::read(plugin("faulty")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while catalog.reloads() == settled {
        assert!(Instant::now() < deadline, "a rewritten file was not looked at");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_plugin_files_are_rejected_with_their_own_error_and_the_old_version_keeps_serving() {
    let host = Host::start("reload-bad", &[("acme", r#"{"tag": "good"}"#)], OnFailure::Skip);
    let dir = host.plugin_dir();
    let wasm = std::fs::read(plugin("faulty")).unwrap();
    let slot = host.catalog.slot(&TenantId::new("acme").unwrap());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the file is empty"),
        ("truncated", wasm[..wasm.len() / 2].to_vec(), "truncated or corrupt component"),
        ("core module", wat::parse_str("(module)").unwrap(), "core WebAssembly module"),
        ("other world", component_exporting("acme:other/api@1.0.0"), "does not export storyline"),
        (
            "wrong version",
            component_exporting("storyline:correlator/correlator@0.9.0"),
            "built for storyline:correlator@0.9.0",
        ),
    ];
    for (what, bytes, expected) in cases {
        put(&dir.join("acme/faulty.wasm"), &bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        let error = loop {
            if let Some((_, e)) = slot.status().last_error.filter(|(_, e)| e.contains(expected)) {
                break e;
            }
            assert!(Instant::now() < deadline, "{what}: no error containing {expected:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(error.contains("the previous version keeps serving"), "{what}: {error}");
        // The last good version still serves.
        let ids = host.ingest("acme", 5);
        host.wait_for_stories(&ids, Duration::from_secs(10));
        assert!(host.tags_of(&ids).values().flatten().all(|t| t == "good"), "{what}");
    }
    // A configuration its init refuses is rejected the same way.
    put(&dir.join("acme/faulty.wasm"), &wasm);
    faulty_config(&dir, "acme", r#"{"mode": "no-such-mode"}"#);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !slot.status().last_error.is_some_and(|(_, e)| e.contains("unknown mode")) {
        assert!(Instant::now() < deadline, "init failure not reported: {:?}", slot.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids = host.ingest("acme", 5);
    host.wait_for_stories(&ids, Duration::from_secs(10));
    assert!(host.tags_of(&ids).values().flatten().all(|t| t == "good"));
    assert_eq!(slot.status().loads, 1);

    // Deleting the plugin stops the tenant; its events wait, and are processed (once) when a
    // plugin is back.
    std::fs::remove_file(dir.join("acme/faulty.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slot.active().is_some() {
        assert!(Instant::now() < deadline, "removal not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let waiting = host.ingest("acme", 5);
    std::thread::sleep(Duration::from_millis(700));
    assert!(host.tags_of(&waiting).is_empty(), "processed without a plugin");
    faulty_config(&dir, "acme", r#"{"tag": "back"}"#);
    put(&dir.join("acme/faulty.wasm"), &wasm);
    host.wait_for_stories(&waiting, Duration::from_secs(10));
    assert!(host.tags_of(&waiting).values().all(|t| t == &["back".to_string()]));
    host.stop();
}

#[test]
fn a_faulty_tenant_does_not_hold_up_another_and_its_dead_letters_replay_after_a_fix() {
    // Tenant "bad" loops forever on buckets holding a "poison" event; "good" behaves.
    let host = Host::start(
        "isolation",
        &[
            ("good", r#"{"tag": "g"}"#),
            ("bad", r#"{"mode": "loop", "only_kind": "poison", "tag": "b1"}"#),
        ],
        OnFailure::Skip,
    );
    let bad = TenantId::new("bad").unwrap();
    let t = bad.clone();
    let mut producer = Producer::new(&host.store, t, LAYOUT, None);
    let mut report = IngestReport::default();
    let poison = r#"{"id":"poison-1","source":"s","kind":"poison","time":1000}"#;
    host.rt.block_on(producer.push_line(poison, 1, &mut report)).unwrap();
    host.rt.block_on(producer.flush(&mut report)).unwrap();
    let started = Instant::now();
    // While "bad" burns its attempts (each stopped at the 500 ms deadline), "good" is served.
    let good = host.ingest("good", 200);
    host.wait_for_stories(&good, Duration::from_secs(10));
    let good_done = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = host.rt.block_on(host.store.dead_letters(&bad)).unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(Instant::now() < deadline, "no dead letter for the looping bucket");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bad_done = started.elapsed();
    eprintln!(
        "good tenant served in {good_done:?}; the looping bucket was dead-lettered after {bad_done:?}"
    );
    assert!(good_done < bad_done, "the good tenant waited for the bad one");
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.contains("deadline"), "{}", letters[0].reason);
    assert_eq!(letters[0].attempts, 3);
    assert!(host.tags_of(&["poison-1".to_string()]).is_empty());

    // Fix the plugin (hot reload), then replay: the bucket's story appears, the letter goes.
    faulty_config(&host.plugin_dir(), "bad", r#"{"tag": "b2"}"#);
    let slot = host.catalog.slot(&bad);
    let deadline = Instant::now() + Duration::from_secs(5);
    while slot.status().loads < 2 {
        assert!(Instant::now() < deadline, "fixed version not loaded: {:?}", slot.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = Vec::new();
    storyline::cli::mark_replay(host.rt.handle(), &host.store, &bad, &mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().starts_with("1 dead letters"));
    host.wait_for_stories(&["poison-1".to_string()], Duration::from_secs(10));
    assert_eq!(host.tags_of(&["poison-1".to_string()])["poison-1"], ["b2"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host.rt.block_on(host.store.dead_letters(&bad)).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the replayed letter was not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    host.stop();
}

#[test]
fn a_paused_shard_waits_on_its_bucket_until_a_fixed_version_takes_it() {
    // Run on a loaded machine: every core is kept busy while the test runs. Only order and
    // outcome are asserted, with deadlines far beyond what the steps take.
    let _hog = crate::support::CpuHog::start();
    let host = Host::start(
        "pause",
        &[("acme", r#"{"mode": "fail", "only_kind": "poison", "tag": "broken"}"#)],
        OnFailure::Pause,
    );
    let acme = TenantId::new("acme").unwrap();
    let mut producer = Producer::new(&host.store, acme.clone(), LAYOUT, None);
    let mut report = IngestReport::default();
    let poison = r#"{"id":"poison-1","source":"s","kind":"poison","time":1000,"route":"r"}"#;
    host.rt.block_on(producer.push_line(poison, 1, &mut report)).unwrap();
    host.rt.block_on(producer.flush(&mut report)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.rt.block_on(host.store.dead_letters(&acme)).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no dead letter");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Later events of the same shard wait behind the paused bucket.
    let behind = r#"{"id":"behind-1","source":"s","kind":"k","time":1000,"route":"r"}"#;
    host.rt.block_on(producer.push_line(behind, 1, &mut report)).unwrap();
    host.rt.block_on(producer.flush(&mut report)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(host.tags_of(&["behind-1".to_string()]).is_empty(), "the shard did not pause");
    // The fix arrives by hot reload; the shard takes the bucket, then the rest, in order.
    faulty_config(&host.plugin_dir(), "acme", r#"{"tag": "fixed"}"#);
    let ids = ["poison-1".to_string(), "behind-1".to_string()];
    host.wait_for_stories(&ids, Duration::from_secs(60));
    assert!(host.tags_of(&ids).values().all(|t| t == &["fixed".to_string()]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host.rt.block_on(host.store.dead_letters(&acme)).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the paused bucket's letter was not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    host.stop();
}

/// The real binary: status reports the plugin and its reload errors, `storyline replay` goes
/// through the running host, and a tenant whose plugin appears later is started.
#[test]
fn the_running_binary_reloads_reports_replays_and_starts_new_tenants() {
    let scratch = Scratch::new("binary-reload");
    let dir = scratch.path("plugins");
    let wasm = std::fs::read(plugin("faulty")).unwrap();
    std::fs::create_dir_all(dir.join("acme")).unwrap();
    put(&dir.join("acme/faulty.wasm"), &wasm);
    faulty_config(&dir, "acme", r#"{"mode": "fail", "only_kind": "poison", "tag": "v1"}"#);
    let (data, plugins) = (scratch.str("data"), scratch.str("plugins"));
    let sl = |args: &[&str]| {
        let mut all = vec!["--data-dir", &data, "--plugin-dir", &plugins];
        all.extend_from_slice(args);
        let out = crate::support::storyline(&all);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let wait_until = |what: &str, args: &[&str], ok: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = sl(args);
            if ok(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(["--data-dir", &data, "--plugin-dir", &plugins, "run", "--delay-ms", "100"])
        .args(["--attempts", "2", "--backoff-ms", "50"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = scratch.path("data/ingest.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the host did not open its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = |tenant: &str, kinds: &[(&str, &str)]| {
        let path = scratch.path(&format!("{tenant}.jsonl"));
        let lines: Vec<String> = kinds
            .iter()
            .map(|(id, kind)| {
                format!(r#"{{"id":"{id}","source":"s","kind":"{kind}","time":1000}}"#)
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        path.display().to_string()
    };
    let file = events("acme", &[("poison-1", "poison"), ("ok-1", "k")]);
    sl(&["ingest", "--tenant", "acme", "--bucket-ms", "100", &file]);

    // The failing bucket is dead-lettered; status names the plugin version.
    let status = wait_until("a dead letter", &["status", "--tenant", "acme"], &|s| {
        s.contains("dead letters: 1 ")
    });
    assert!(status.contains("plugin: faulty@"), "{status}");
    assert!(status.contains("storyline:correlator@0.2.0"), "{status}");
    assert!(status.contains("last reload error: none"), "{status}");
    assert!(status.contains("plugin memory: ") && status.contains(" MiB of 2048 MiB"), "{status}");

    // A bad file is rejected and shows in status; the fix is taken.
    put(&dir.join("acme/faulty.wasm"), b"not a plugin");
    wait_until("the reload error", &["status", "--tenant", "acme"], &|s| {
        s.contains("last reload error: ") && s.contains("not a WebAssembly file")
    });
    put(&dir.join("acme/faulty.wasm"), &wasm);
    faulty_config(&dir, "acme", r#"{"tag": "v2"}"#);
    wait_until("the fixed version", &["status", "--tenant", "acme"], &|s| {
        s.contains("last reload error: none") && s.contains("; 2 loads")
    });

    // Replay through the running host: the dead-lettered event gets its story.
    let replay = sl(&["replay", "--tenant", "acme"]);
    assert!(replay.starts_with("1 dead letters of tenant acme marked for replay"), "{replay}");
    let stories = wait_until("the replayed story", &["stories", "--tenant", "acme"], &|s| {
        s.contains("\"poison-1\"")
    });
    let poison = stories.lines().find(|l| l.contains("\"poison-1\"")).unwrap();
    assert!(poison.contains(r#""tag":"v2""#), "{poison}");
    wait_until("no dead letters", &["status", "--tenant", "acme"], &|s| {
        s.contains("dead letters: 0 ")
    });

    // A tenant whose plugin appears while the host runs is served.
    std::fs::create_dir_all(dir.join("globex")).unwrap();
    put(&dir.join("globex/faulty.wasm"), &wasm);
    faulty_config(&dir, "globex", r#"{"tag": "g"}"#);
    std::thread::sleep(Duration::from_millis(600));
    let file = events("globex", &[("g-1", "k")]);
    sl(&["ingest", "--tenant", "globex", &file]);
    wait_until("the new tenant's story", &["stories", "--tenant", "globex"], &|s| {
        s.contains("\"g-1\"") && s.contains(r#""tag":"g""#)
    });

    crate::support::sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}
