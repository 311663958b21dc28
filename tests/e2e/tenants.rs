//! Many tenants on one host: shards are tasks on a small fixed pool; idle tenants hold nothing;
//! a busy or looping tenant does not hold up the others.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storyline::catalog::Slot;
use storyline::model::{ShardId, Story, TenantId};
use storyline::producer::{IngestReport, Producer};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};
use storyline::worker::{Pool, Shared, WorkerConfig, Workers};

use crate::support::{Scratch, loaded, test_limits};

/// A host of `Workers` on a pool of two threads, every published story kept.
struct Host {
    _scratch: Scratch,
    rt: tokio::runtime::Runtime,
    store: EmbeddedStore,
    workers: Arc<Workers<EmbeddedStore>>,
    shared: Shared,
    pool: Pool,
    published: Arc<Mutex<Vec<Story>>>,
}

impl Host {
    fn new(name: &str, config: WorkerConfig) -> Host {
        let scratch = Scratch::new(name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = EmbeddedStore::new(scratch.path("data"));
        let published: Arc<Mutex<Vec<Story>>> = Arc::default();
        let sink = published.clone();
        let shared = Shared {
            sink: Some(Arc::new(move |s: &[Story]| sink.lock().unwrap().extend_from_slice(s))),
            ..Shared::default()
        };
        let pool = Pool::new(2).unwrap();
        let workers =
            Workers::new(pool.clone(), rt.handle().clone(), store.clone(), config, shared.clone());
        Host { _scratch: scratch, rt, store, workers, shared, pool, published }
    }

    fn serve(&self, tenant: &TenantId, plugin: &str, config: &str) {
        self.workers.serve(tenant, Slot::fixed(tenant.clone(), loaded(plugin), config));
    }

    /// Writes `n` events for `tenant` (routed by id, so they spread over its shards); their ids.
    fn ingest(&self, tenant: &TenantId, n: usize) -> Vec<String> {
        let mut producer = Producer::new(&self.store, tenant.clone(), Layout::default(), None);
        let mut report = IngestReport::default();
        let ids: Vec<String> = (0..n).map(|i| format!("{tenant}-{i}")).collect();
        for id in &ids {
            let line = format!(r#"{{"id":"{id}","source":"s","kind":"k","time":1000}}"#);
            self.rt.block_on(producer.push_line(&line, 1, &mut report)).unwrap();
        }
        self.rt.block_on(producer.flush(&mut report)).unwrap();
        assert_eq!(report.accepted, n as u64);
        ids
    }

    /// How many published story revisions name each event.
    fn times_published(&self) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for s in self.published.lock().unwrap().iter() {
            for e in &s.event_ids {
                *seen.entry(e.clone()).or_default() += 1;
            }
        }
        seen
    }

    /// Waits (generously) until every one of `ids` was published.
    fn wait_published(&self, ids: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = self.times_published();
            let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
            if missing == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{missing} of {} events never published", ids.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        let failed = self.workers.wait();
        assert!(failed.is_empty(), "{failed:?}");
        self.pool.close();
    }
}

fn tenant(i: usize) -> TenantId {
    TenantId::new(&format!("t{i:03}")).unwrap()
}

#[test]
fn two_hundred_tenants_share_two_threads_and_the_active_ones_publish_every_event_once() {
    let config = WorkerConfig {
        delay_ms: 100,
        tick_ms: 100,
        linger_ms: 300,
        limits: test_limits(),
        ..WorkerConfig::default()
    };
    let host = Host::new("tenants-many", config);
    for i in 0..200 {
        host.serve(&tenant(i), "faulty", r#"{"tag": "ok"}"#);
    }
    let mut ids = Vec::new();
    for i in [0, 1, 2] {
        ids.extend(host.ingest(&tenant(i), 50));
    }
    host.wait_published(&ids);
    // 200 tenants, three with events: one task each, and one per shard of the active ones,
    // all on two threads. The others never opened a database.
    assert_eq!(host.workers.tasks(), 200 + 3 * 4);
    let dirs = std::fs::read_dir(host.store.tenant_dir(&tenant(0)).parent().unwrap()).unwrap();
    assert_eq!(dirs.count(), 3, "only tenants with events have a directory");

    // An idle tenant that receives events later is served.
    let later = host.ingest(&tenant(150), 20);
    host.wait_published(&later);
    ids.extend(later);
    let seen = host.times_published();
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "{id} published once");
    }
    assert_eq!(seen.len(), ids.len(), "only these events were published");

    // Shards with nothing open and nothing to read give their leases up after the linger.
    let deadline = Instant::now() + Duration::from_secs(60);
    let t = tenant(0);
    loop {
        let now = storyline::producer::now_ms();
        let held = (0..4)
            .filter(|&s| {
                let lease = host.rt.block_on(host.store.lease(&t, ShardId(s))).unwrap();
                lease.is_some_and(|l| l.expires_ms > now)
            })
            .count();
        if held == 0 {
            // Cold shards hold no plugin instance either: the tenant's memory is given back.
            assert_eq!(crate::support::runtime().memory_in_use(&t), 0);
            break;
        }
        assert!(Instant::now() < deadline, "{held} idle shards still hold their lease");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A cold shard takes its lease again for new events.
    let again = host.ingest(&t, 10);
    host.wait_published(&again);
    host.stop();
}

#[test]
fn a_looping_tenant_holds_one_thread_at_most_while_the_others_are_served() {
    let config = WorkerConfig {
        delay_ms: 100,
        tick_ms: 100,
        attempts: 2,
        backoff_ms: 50,
        limits: storyline::plugin::Limits { call_timeout: Duration::from_secs(2), ..test_limits() },
        ..WorkerConfig::default()
    };
    let host = Host::new("tenants-looping", config);
    let looper = TenantId::new("looper").unwrap();
    host.serve(&looper, "faulty", r#"{"mode": "loop"}"#);
    host.ingest(&looper, 20);
    let mut ids = Vec::new();
    for i in 0..5 {
        // Names of their own: tests share one plugin runtime, which counts memory by tenant.
        let calm = TenantId::new(&format!("calm{i}")).unwrap();
        host.serve(&calm, "faulty", r#"{"tag": "ok"}"#);
        ids.extend(host.ingest(&calm, 20));
    }
    // Each of the looper's four buckets holds a thread for two attempts of two seconds; the
    // other tenants' buckets take milliseconds on the other thread: they are all published
    // before the looper's last bucket is dead-lettered.
    host.wait_published(&ids);
    let letters = host.rt.block_on(host.store.dead_letters(&looper)).unwrap();
    assert!(letters.len() < 4, "the looper finished first: {letters:?}");
    let deadline = Instant::now() + Duration::from_secs(180);
    while host.rt.block_on(host.store.dead_letters(&looper)).unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "the looper's buckets were not all dead-lettered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let letters = host.rt.block_on(host.store.dead_letters(&looper)).unwrap();
    assert!(letters.iter().all(|l| l.reason.contains("deadline")), "{letters:?}");
    host.stop();
}
