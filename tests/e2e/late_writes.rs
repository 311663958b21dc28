//! Producers whose clocks are off the worker's: events written into buckets a worker already
//! closed are moved to the first open bucket, counted as late, and still reach the plugin.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use storyline::catalog::{Catalog, Slot};
use storyline::generate::{GenConfig, generate};
use storyline::model::{ShardId, TenantId};
use storyline::producer::{IngestReport, Producer, Router, fnv1a, now_ms};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};
use storyline::worker::{Progress, Shared, WorkerConfig, run_tenant};

use crate::support::{Scratch, loaded, runtime, test_limits};

fn behind_30s() -> i64 {
    now_ms() - 30_000
}
fn behind_10s() -> i64 {
    now_ms() - 10_000
}
fn on_time() -> i64 {
    now_ms()
}
fn ahead_10s() -> i64 {
    now_ms() + 10_000
}
fn ahead_30s() -> i64 {
    now_ms() + 30_000
}

#[test]
fn producers_with_clocks_30_s_off_either_way_lose_nothing() {
    let scratch = Scratch::new("skew");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = EmbeddedStore::new(scratch.path("data"));
    let t = TenantId::new("acme").unwrap();
    let late = skewed_producers_lose_nothing(&rt, &store, &t);

    // The same counts are served as metrics.
    let catalog = Catalog::new(runtime().clone(), scratch.path("plugins"), test_limits());
    catalog.slot(&t);
    let progress = Arc::new(Progress::default());
    let (handle, s) = (rt.handle().clone(), store.clone());
    let router = storyline::metrics::router(move || {
        storyline::metrics::render(&handle, &s, &catalog, &progress)
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr =
        storyline::http::serve(rt.handle(), "127.0.0.1:0".parse().unwrap(), router, stop.clone())
            .unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let served: f64 = response
        .lines()
        .filter(|l| l.starts_with("storyline_late_events_total{tenant=\"acme\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(served as u64, late, "{response}");
    assert!(response.contains("storyline_lag_seconds{tenant=\"acme\",shard=\"0\"}"), "{response}");
    let limit = format!(
        "storyline_plugin_memory_limit_bytes{{tenant=\"acme\"}} {}",
        test_limits().memory_bytes
    );
    assert!(response.contains(&limit), "{response}");
    assert!(response.contains("storyline_plugin_memory_bytes{tenant=\"acme\"} "), "{response}");
}

/// The same on a ScyllaDB (or Cassandra) node when `STORYLINE_SCYLLA_NODES` is set: producers
/// learn of closed buckets from the shard rows, and workers wait out the grace.
#[test]
fn producers_with_clocks_30_s_off_lose_nothing_on_a_cql_cluster() {
    let Ok(nodes) = std::env::var("STORYLINE_SCYLLA_NODES") else { return };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = storyline::store::scylla::ScyllaConfig {
        nodes: nodes.split(',').map(str::to_string).collect(),
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        consistency: scylla::statement::Consistency::One,
        ..Default::default()
    };
    let store = rt.block_on(storyline::store::scylla::ScyllaStore::connect(config)).unwrap();
    let t = crate::store_contract::unique_tenant("skew");
    skewed_producers_lose_nothing(&rt, &store, &t);
    let _ = rt.block_on(store.drop_tenant(&t));
}

/// Runs five skewed producers and a worker (delay 2 s) over 200 generated sessions; checks
/// every event reached exactly one story and the stories are the sessions. The late count.
fn skewed_producers_lose_nothing<S: Store>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    t: &TenantId,
) -> u64 {
    let plugin = loaded("network-session");
    let events = generate(&GenConfig {
        sessions: 200,
        start_ms: now_ms() - 60_000,
        seed: 11,
        ..GenConfig::default()
    });
    let truth: BTreeMap<String, usize> = events.iter().map(|e| (e.id.clone(), e.session)).collect();

    // The worker reads a bucket 2 s after it ended by its own clock.
    let worker = {
        let config = WorkerConfig {
            delay_ms: 2000,
            poll_ms: 50,
            exit_when_idle: true,
            limits: test_limits(),
            ..WorkerConfig::default()
        };
        let (handle, store, t, plugin) =
            (rt.handle().clone(), store.clone(), t.clone(), plugin.clone());
        std::thread::spawn(move || {
            let slot = Slot::fixed(t.clone(), plugin, "{}");
            run_tenant(&handle, &store, &t, &slot, &config, &Shared::default())
        })
    };

    // Five producers, −30 s … +30 s off; each event goes through one of them (by id), so the
    // sensors of one session write through differently skewed clocks, over ~3 s of wall time.
    let clocks: [fn() -> i64; 5] = [behind_30s, behind_10s, on_time, ahead_10s, ahead_30s];
    let mut producers: Vec<_> = clocks
        .iter()
        .map(|clock| {
            let router = Router::new(plugin.clone(), "{}".into(), t.clone(), test_limits(), "test");
            Producer::new(store, t.clone(), Layout::default(), Some(router)).clock(*clock)
        })
        .collect();
    let mut report = IngestReport::default();
    for (round, chunk) in events.chunks(events.len().div_ceil(10)).enumerate() {
        for (i, e) in chunk.iter().enumerate() {
            let p = (fnv1a(e.id.as_bytes()) % 5) as usize;
            rt.block_on(producers[p].push_line(&e.line, round * 1000 + i + 1, &mut report))
                .unwrap();
        }
        for p in &mut producers {
            rt.block_on(p.flush(&mut report)).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(report.accepted, events.len() as u64, "{:?}", report.rejected);
    worker.join().unwrap().unwrap();

    // Late writes happened and were counted: the producers behind the worker's clock wrote
    // into buckets it had closed.
    let late: u64 =
        (0..4).map(|s| rt.block_on(store.late_stats(t, ShardId(s))).unwrap().events).sum();
    assert!(late > events.len() as u64 / 10, "only {late} late events");

    // Every event reached the plugin and the stories are the generated sessions.
    let stories = rt.block_on(store.stories(t, false)).unwrap();
    let mut seen = BTreeSet::new();
    let mut sessions = BTreeSet::new();
    for s in &stories {
        let of: BTreeSet<usize> = s.story.event_ids.iter().map(|id| truth[id]).collect();
        assert_eq!(of.len(), 1, "story {} mixes sessions {of:?}", s.story.id);
        assert!(sessions.insert(*of.iter().next().unwrap()), "session split: {}", s.story.id);
        for id in &s.story.event_ids {
            assert!(seen.insert(id.clone()), "event {id} in two stories");
        }
    }
    assert_eq!(seen.len(), events.len(), "events missing from stories");
    assert_eq!(sessions.len(), 200);
    late
}
