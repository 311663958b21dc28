//! Several workers on one store split a tenant's shards through leases, and take over the
//! shards of a worker that stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use storyline::catalog::Slot;
use storyline::model::{ShardId, TenantId};
use storyline::producer::{IngestReport, Producer, Router};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};
use storyline::worker::{Shared, WorkerConfig, run_tenant};

use crate::support::{Scratch, loaded};

/// Owners of the four shards.
fn owners(rt: &tokio::runtime::Runtime, store: &EmbeddedStore, t: &TenantId) -> Vec<String> {
    (0..4)
        .map(|s| {
            let now = storyline::producer::now_ms();
            match rt.block_on(store.lease(t, ShardId(s))).unwrap() {
                Some(l) if l.expires_ms > now => l.owner,
                _ => "-".into(),
            }
        })
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_workers_split_the_shards_and_one_takes_over_when_the_other_stops() {
    let scratch = Scratch::new("split");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = EmbeddedStore::new(scratch.path("data"));
    let t = TenantId::new("acme").unwrap();
    let line = r#"{"source":"s","kind":"k","time":1}"#;
    let mut producer = Producer::new(&store, t.clone(), Layout::default(), None);
    let mut report = IngestReport::default();
    for i in 0..100 {
        rt.block_on(producer.push_line(line, i + 1, &mut report)).unwrap();
    }
    rt.block_on(producer.flush(&mut report)).unwrap();

    let plugin = loaded("template");
    let start = |owner: &str, stop: Arc<AtomicBool>| {
        let config = WorkerConfig {
            owner: owner.into(),
            delay_ms: 100,
            poll_ms: 50,
            lease_ttl_ms: 3000,
            ..WorkerConfig::default()
        };
        let shared = Shared { shutdown: stop, ..Shared::default() };
        let (handle, store, t, plugin) =
            (rt.handle().clone(), store.clone(), t.clone(), plugin.clone());
        let slot = Slot::fixed(t.clone(), plugin, "{}");
        std::thread::spawn(move || run_tenant(&handle, &store, &t, &slot, &config, &shared))
    };

    let stop_a = Arc::new(AtomicBool::new(false));
    let a = start("a", stop_a.clone());
    wait_for("worker a to hold every shard", || owners(&rt, &store, &t) == ["a", "a", "a", "a"]);

    let stop_b = Arc::new(AtomicBool::new(false));
    let b = start("b", stop_b.clone());
    wait_for("the shards to be split two and two", || {
        let o = owners(&rt, &store, &t);
        o.iter().filter(|x| *x == "a").count() == 2 && o.iter().filter(|x| *x == "b").count() == 2
    });

    stop_a.store(true, Ordering::Relaxed);
    a.join().unwrap().unwrap();
    wait_for("worker b to take every shard", || owners(&rt, &store, &t) == ["b", "b", "b", "b"]);
    stop_b.store(true, Ordering::Relaxed);
    b.join().unwrap().unwrap();
}

/// Two worker processes on a real ScyllaDB/Cassandra node (when `STORYLINE_SCYLLA_NODES` is
/// set; otherwise the test returns at once): they split the shards; after `kill -9` of one,
/// the other holds every shard once the dead worker's leases expire.
#[test]
fn worker_processes_on_a_cql_cluster_split_shards_and_survive_kill_9() {
    let Ok(nodes) = std::env::var("STORYLINE_SCYLLA_NODES") else { return };
    let scratch = Scratch::new("cql-workers");
    let tenant = crate::store_contract::unique_tenant("cql-workers");
    std::fs::create_dir_all(scratch.path(&format!("plugins/{tenant}"))).unwrap();
    std::fs::copy(
        crate::support::plugin("template"),
        scratch.path(&format!("plugins/{tenant}/template.wasm")),
    )
    .unwrap();
    let base = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"));
        c.args(["--store", "scylla", "--scylla-nodes", &nodes])
            .args(["--scylla-replication", "{'class': 'SimpleStrategy', 'replication_factor': 1}"])
            .args(["--data-dir", &scratch.str("data"), "--plugin-dir", &scratch.str("plugins")])
            .args(args);
        c
    };
    let events = scratch.path("events.jsonl");
    std::fs::write(&events, "{\"source\":\"s\",\"kind\":\"k\",\"time\":1}\n".repeat(50)).unwrap();
    let out = base(&["ingest", "--tenant", tenant.as_str(), &events.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let owners = || -> Vec<String> {
        let out = base(&["status", "--tenant", tenant.as_str()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(char::is_numeric))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    let quiet = || std::process::Stdio::null();
    let mut first = base(&["run", "--tenant", tenant.as_str()]).stderr(quiet()).spawn().unwrap();
    wait_for("the first worker to hold every shard", || {
        let o = owners();
        o.len() == 4 && o.iter().all(|x| x != "free" && x == &o[0])
    });
    let mut second = base(&["run", "--tenant", tenant.as_str()]).stderr(quiet()).spawn().unwrap();
    wait_for("two owners of two shards each", || {
        let o = owners();
        let mut distinct = o.clone();
        distinct.sort();
        distinct.dedup();
        distinct.len() == 2
            && !distinct.contains(&"free".to_string())
            && o.iter().filter(|x| **x == distinct[0]).count() == 2
    });
    first.kill().unwrap(); // SIGKILL: no lease is released
    first.wait().unwrap();
    wait_for("the survivor to hold every shard", || {
        let o = owners();
        o.len() == 4 && o.iter().all(|x| x != "free" && x == &o[0])
    });
    let pid = second.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(second.wait().unwrap().code(), Some(0));
}

/// The shard of every event written, read back from the store.
fn shards_of_events(
    rt: &tokio::runtime::Runtime,
    store: &EmbeddedStore,
    t: &TenantId,
    layout: Layout,
) -> std::collections::HashMap<String, u32> {
    let mut out = std::collections::HashMap::new();
    for shard in 0..layout.shards {
        let mut at = None;
        while let Some(b) = rt.block_on(store.next_bucket(t, ShardId(shard), at)).unwrap() {
            for e in rt.block_on(store.read_bucket(t, ShardId(shard), b)).unwrap().into_events() {
                out.insert(e.id, shard);
            }
            at = Some(b);
        }
    }
    out
}

#[test]
fn a_batch_is_routed_by_explicit_keys_then_by_the_plugin_then_by_id() {
    use storyline::plugin::Limits;
    use storyline::producer::shard_of;
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let layout = Layout { shards: 64, bucket_ms: 1000 };
    let lines = |n: usize| {
        (0..n)
            .map(|i| match i % 3 {
                0 => format!(r#"{{"id":"x{i}","source":"s","kind":"k","time":1,"route":"key{i}"}}"#),
                1 => format!(
                    r#"{{"id":"x{i}","source":"s","kind":"k","time":1,"attributes":{{"session":"s{i}"}}}}"#
                ),
                _ => format!(r#"{{"id":"x{i}","source":"s","kind":"k","time":1}}"#),
            })
            .collect::<Vec<_>>()
    };
    // `template` keys an event by its `session` attribute, else by its id ("event:<id>");
    // `faulty` keys none, so the host routes by id. 2,500 events: three batches, one partial.
    for (plugin, expected) in [
        (
            "template",
            (|i: usize| match i % 3 {
                0 => format!("key{i}"),
                1 => format!("attr:s{i}"),
                _ => format!("event:x{i}"),
            }) as fn(usize) -> String,
        ),
        (
            "faulty",
            |i: usize| if i.is_multiple_of(3) { format!("key{i}") } else { format!("x{i}") },
        ),
    ] {
        let scratch = Scratch::new(&format!("route-{plugin}"));
        let store = EmbeddedStore::new(scratch.path("data"));
        let t = TenantId::new("acme").unwrap();
        let router = Router::new(loaded(plugin), "{}".into(), t.clone(), Limits::default(), "test");
        let mut producer = Producer::new(&store, t.clone(), layout, Some(router));
        let mut report = IngestReport::default();
        for (i, line) in lines(2500).iter().enumerate() {
            rt.block_on(producer.push_line(line, i + 1, &mut report)).unwrap();
        }
        rt.block_on(producer.flush(&mut report)).unwrap();
        assert_eq!(report.accepted, 2500);
        let got = shards_of_events(&rt, &store, &t, layout);
        assert_eq!(got.len(), 2500, "{plugin}");
        for i in 0..2500 {
            let want = shard_of(&expected(i), layout.shards).0;
            assert_eq!(got[&format!("x{i}")], want, "{plugin}: event x{i}");
        }
    }
}

/// A live worker (not `--exit-when-idle`) on a store whose closes take 2 s to reach producers
/// (ScyllaDB's grace), with 1 s buckets: once the input stops, the plugin's open sessions still
/// close on idle ticks, every story is published and the offset committed while idle.
#[test]
fn a_live_worker_publishes_every_story_with_a_close_grace_longer_than_a_bucket() {
    let scratch = Scratch::new("grace");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = EmbeddedStore::new(scratch.path("data")).with_close_grace(2000);
    let t = TenantId::new("acme").unwrap();
    let layout = Layout { shards: 2, bucket_ms: 1000 };
    // 30 connections happening now (so that processing time closes them), three records each
    // from three sensors, without durations.
    let now = storyline::producer::now_ms();
    let lines: Vec<String> = (0..30)
        .flat_map(|i| {
            ["fw", "tls", "proxy"].into_iter().enumerate().map(move |(k, sensor)| {
                format!(
                    r#"{{"id":"{sensor}-{i}","source":"{sensor}","kind":"{sensor}","time":{},"payload":{{"source":{{"ip":"10.0.0.{i}","port":{}}},"destination":{{"ip":"192.0.2.1","port":443}}}}}}"#,
                    now + i * 10 + k as i64 * 5,
                    40_000 + i
                )
            })
        })
        .collect();
    let plugin = loaded("network-session");
    let rules = r#"{"gap_ms": 500, "skew_ms": 300, "dns_window_ms": 1000, "reopen_ms": 60000}"#;
    let router = Router::new(plugin.clone(), rules.into(), t.clone(), Default::default(), "test");
    let mut producer = Producer::new(&store, t.clone(), layout, Some(router));
    let mut report = IngestReport::default();
    for (i, line) in lines.iter().enumerate() {
        rt.block_on(producer.push_line(line, i + 1, &mut report)).unwrap();
    }
    rt.block_on(producer.flush(&mut report)).unwrap();
    assert_eq!(report.accepted as usize, lines.len());

    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let config = WorkerConfig {
            delay_ms: 2000,
            poll_ms: 50,
            tick_ms: 500,
            checkpoint_ms: 500,
            ..WorkerConfig::default()
        };
        let shared = Shared { shutdown: stop.clone(), ..Shared::default() };
        let (handle, store, t) = (rt.handle().clone(), store.clone(), t.clone());
        let slot = Slot::fixed(t.clone(), plugin, rules);
        std::thread::spawn(move || run_tenant(&handle, &store, &t, &slot, &config, &shared))
    };
    // Every session's story is published, by idle ticks alone (nothing more arrives).
    wait_for("every session to be published", || {
        let stories = rt.block_on(store.stories(&t, false)).unwrap();
        stories.len() == 30
    });
    // ... and every shard's offset is committed past its last events while idle.
    wait_for("the offsets to be committed while idle", || {
        (0..2).all(|s| {
            let committed = rt.block_on(store.committed_offset(&t, ShardId(s))).unwrap();
            rt.block_on(store.next_bucket(&t, ShardId(s), committed)).unwrap().is_none()
                && committed.is_some()
        })
    });
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap().unwrap();
    let stories = rt.block_on(store.stories(&t, false)).unwrap();
    let events: usize = stories.iter().map(|s| s.story.event_ids.len()).sum();
    assert_eq!(events, lines.len(), "every event in exactly one story");
    assert!(stories.iter().all(|s| s.story.event_ids.len() == 3));
}

/// On a real CQL node (when `STORYLINE_SCYLLA_NODES` is set; otherwise it returns at once):
/// two live `run` processes (no `--exit-when-idle`) with `network-session`, 1 s buckets and the
/// store's 2 s close grace; one is killed with SIGKILL while sessions are open; once the input
/// stops, every story is published with each event in exactly one story, and every shard's
/// offset is committed while idle.
#[test]
fn live_workers_on_a_cql_cluster_publish_every_story_once_after_a_kill_9() {
    live_workers_on_a_cql_cluster(&["--scylla-tables", "keyspace-per-tenant"]);
}

/// The same on the tables every tenant shares.
#[test]
fn live_workers_on_shared_cql_tables_publish_every_story_once_after_a_kill_9() {
    live_workers_on_a_cql_cluster(&["--scylla-tables", "shared"]);
}

fn live_workers_on_a_cql_cluster(tables: &[&str]) {
    let Ok(nodes) = std::env::var("STORYLINE_SCYLLA_NODES") else { return };
    let scratch = Scratch::new("cql-live");
    let tenant = crate::store_contract::unique_tenant("cql-live");
    let folder = scratch.path(&format!("plugins/{tenant}"));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(crate::support::plugin("network-session"), folder.join("ns.wasm")).unwrap();
    std::fs::write(
        folder.join("ns.json"),
        r#"{"gap_ms": 2000, "skew_ms": 500, "dns_window_ms": 1000, "reopen_ms": 60000}"#,
    )
    .unwrap();
    let base = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"));
        c.args(["--store", "scylla", "--scylla-nodes", &nodes])
            .args(["--scylla-replication", "{'class': 'SimpleStrategy', 'replication_factor': 1}"])
            .args(tables)
            .args(["--data-dir", &scratch.str("data"), "--plugin-dir", &scratch.str("plugins")])
            .args(args);
        c
    };
    let quiet = || std::process::Stdio::null();
    let spawn = || {
        KillOnDrop(
            base(&["run", "--tenant", tenant.as_str(), "--delay-ms", "1000"])
                .stdout(quiet())
                .stderr(quiet())
                .spawn()
                .unwrap(),
        )
    };
    let mut first = spawn();
    let mut second = spawn();
    // 40 connections happening now, three records each from three sensors.
    let now = storyline::producer::now_ms();
    let lines: Vec<String> = (0..40)
        .flat_map(|i| {
            ["fw", "tls", "proxy"].into_iter().enumerate().map(move |(k, sensor)| {
                format!(
                    r#"{{"id":"{sensor}-{i}","source":"{sensor}","kind":"{sensor}","time":{},"payload":{{"source":{{"ip":"10.0.1.{i}","port":{}}},"destination":{{"ip":"192.0.2.1","port":443}}}}}}"#,
                    now + i * 10 + k as i64 * 5,
                    40_000 + i
                )
            })
        })
        .collect();
    let events = scratch.path("events.jsonl");
    std::fs::write(&events, lines.join("\n")).unwrap();
    let out = base(&["ingest", "--tenant", tenant.as_str(), &events.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Kill one while its sessions are open (they close 2.5 s after their last record).
    std::thread::sleep(Duration::from_millis(1500));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let latest = || -> Vec<serde_json::Value> {
        let out = base(&["stories", "--tenant", tenant.as_str()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_for("every connection's story", || latest().len() == 40);
    let stories = latest();
    let mut seen = std::collections::BTreeSet::new();
    for s in &stories {
        let ids = s["event_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 3, "{s}");
        for id in ids {
            assert!(seen.insert(id.as_str().unwrap().to_string()), "{id} in two stories");
        }
    }
    assert_eq!(seen.len(), lines.len());
    // Every shard committed while idle: `status` shows a committed bucket for each.
    wait_for("every shard's offset committed", || {
        let out = base(&["status", "--tenant", tenant.as_str()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(char::is_numeric)).collect();
        rows.len() == 4 && rows.iter().all(|r| r.split_whitespace().nth(2) != Some("-"))
    });
    let pid = second.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(second.0.wait().unwrap().code(), Some(0));
}

/// A child process killed if the test fails before it is stopped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
