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
struct Host<S: Store + Clone = EmbeddedStore> {
    _scratch: Scratch,
    rt: tokio::runtime::Runtime,
    store: S,
    workers: Arc<Workers<S>>,
    shared: Shared,
    pool: Pool,
    published: Arc<Mutex<Vec<Story>>>,
}

impl Host {
    fn new(name: &str, config: WorkerConfig) -> Host {
        let scratch = Scratch::new(name);
        let store = EmbeddedStore::new(scratch.path("data"));
        Host::with_store(scratch, runtime(), store, config)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

impl<S: Store + Clone> Host<S> {
    fn with_store(
        scratch: Scratch,
        rt: tokio::runtime::Runtime,
        store: S,
        config: WorkerConfig,
    ) -> Host<S> {
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

/// On a real CQL node (when `STORYLINE_SCYLLA_NODES` is set; otherwise it returns at once):
/// 200 tenants on the shared tables of one keyspace, each with events on every shard, served by
/// one host; every event is published once, each tenant sees only its own stories, and the
/// keyspace still has its ten tables (a keyspace per tenant would have made 2,000).
#[test]
fn two_hundred_tenants_on_the_shared_tables_of_a_cql_node_publish_every_event_once() {
    use storyline::store::scylla::{ScyllaConfig, ScyllaStore, Tables};
    let Ok(nodes) = std::env::var("STORYLINE_SCYLLA_NODES") else { return };
    let rt = runtime();
    let keyspace = "storyline_many";
    let config = ScyllaConfig {
        nodes: nodes.split(',').map(str::to_string).collect(),
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        tables: Tables::Shared { keyspace: keyspace.into() },
        ..ScyllaConfig::default()
    };
    let store = rt.block_on(ScyllaStore::connect(config)).unwrap();
    let config = WorkerConfig {
        delay_ms: 500,
        poll_ms: 500,
        tick_ms: 500,
        linger_ms: 2_000,
        limits: test_limits(),
        ..WorkerConfig::default()
    };
    let host = Host::with_store(Scratch::new("tenants-cql"), rt, store, config);
    let tenants: Vec<TenantId> =
        (0..200).map(|i| crate::store_contract::unique_tenant(&format!("many-{i}"))).collect();
    for t in &tenants {
        host.serve(t, "faulty", r#"{"tag": "ok"}"#);
    }
    let mut ids = Vec::new();
    for t in &tenants {
        ids.extend(host.ingest(t, 8));
    }
    host.wait_published(&ids);
    let seen = host.times_published();
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "{id} published once");
    }
    // Each tenant reads its own stories back, and only those.
    for t in tenants.iter().step_by(20) {
        let stories = host.rt.block_on(host.store.stories(t, false)).unwrap();
        let mut events: Vec<&str> =
            stories.iter().flat_map(|s| s.story.event_ids.iter().map(String::as_str)).collect();
        events.sort();
        let mut own: Vec<String> = (0..8).map(|i| format!("{t}-{i}")).collect();
        own.sort();
        assert_eq!(events, own, "{t}'s stories");
    }
    let tables = host.rt.block_on(async {
        let mut builder = scylla::client::session_builder::SessionBuilder::new();
        for node in nodes.split(',') {
            builder = builder.known_node(node);
        }
        let db = builder.build().await.unwrap();
        let count = |cql: &'static str| {
            let db = &db;
            async move {
                let rows = db.query_unpaged(cql, (keyspace,)).await.unwrap();
                rows.into_rows_result().unwrap().first_row::<(i64,)>().unwrap().0
            }
        };
        count("SELECT COUNT(*) FROM system_schema.tables WHERE keyspace_name = ?").await
    });
    assert_eq!(tables, 10, "the shared keyspace's tables");
    for t in &tenants {
        host.rt.block_on(host.store.drop_tenant(t)).unwrap();
    }
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

/// The embedded store with a switch that makes every publish fail, as a cluster does when it is
/// overloaded past the driver's retries.
#[derive(Clone)]
struct Overloaded {
    inner: EmbeddedStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

mod overloaded {
    use storyline::model::{BucketStart, ShardId, Story, TenantId, TimestampMs};
    use storyline::store::{
        BucketEvents, ChangeHook, Checkpoint, DeadLetter, LateStats, Layout, Lease, NewEvent,
        Store, StoreError, StoredStory,
    };

    use super::Overloaded;

    impl Store for Overloaded {
        async fn layout(&self, t: &TenantId) -> Result<Option<Layout>, StoreError> {
            self.inner.layout(t).await
        }
        async fn append(&self, t: &TenantId, l: Layout, e: &[NewEvent]) -> Result<(), StoreError> {
            self.inner.append(t, l, e).await
        }
        async fn next_bucket(
            &self,
            t: &TenantId,
            s: ShardId,
            a: Option<BucketStart>,
        ) -> Result<Option<BucketStart>, StoreError> {
            self.inner.next_bucket(t, s, a).await
        }
        async fn close_buckets(
            &self,
            t: &TenantId,
            l: &Lease,
            to: BucketStart,
        ) -> Result<(), StoreError> {
            self.inner.close_buckets(t, l, to).await
        }
        async fn closed_until(
            &self,
            t: &TenantId,
            s: ShardId,
        ) -> Result<Option<BucketStart>, StoreError> {
            self.inner.closed_until(t, s).await
        }
        fn close_grace_ms(&self) -> i64 {
            self.inner.close_grace_ms()
        }
        fn retention_ms(&self, t: &TenantId) -> Option<i64> {
            self.inner.retention_ms(t)
        }
        async fn late_stats(&self, t: &TenantId, s: ShardId) -> Result<LateStats, StoreError> {
            self.inner.late_stats(t, s).await
        }
        async fn read_bucket(
            &self,
            t: &TenantId,
            s: ShardId,
            b: BucketStart,
        ) -> Result<BucketEvents, StoreError> {
            self.inner.read_bucket(t, s, b).await
        }
        async fn pending_events(
            &self,
            t: &TenantId,
            s: ShardId,
            a: Option<BucketStart>,
        ) -> Result<u64, StoreError> {
            self.inner.pending_events(t, s, a).await
        }
        async fn committed_offset(
            &self,
            t: &TenantId,
            s: ShardId,
        ) -> Result<Option<BucketStart>, StoreError> {
            self.inner.committed_offset(t, s).await
        }
        async fn load_checkpoint(
            &self,
            t: &TenantId,
            s: ShardId,
        ) -> Result<Option<Checkpoint>, StoreError> {
            self.inner.load_checkpoint(t, s).await
        }
        async fn commit(
            &self,
            t: &TenantId,
            l: &Lease,
            b: BucketStart,
            state: Option<&[u8]>,
        ) -> Result<(), StoreError> {
            self.inner.commit(t, l, b, state).await
        }
        async fn acquire_lease(
            &self,
            t: &TenantId,
            s: ShardId,
            owner: &str,
            ttl: i64,
            now: TimestampMs,
        ) -> Result<Option<Lease>, StoreError> {
            self.inner.acquire_lease(t, s, owner, ttl, now).await
        }
        async fn renew_lease(
            &self,
            t: &TenantId,
            l: &Lease,
            ttl: i64,
            now: TimestampMs,
        ) -> Result<Option<Lease>, StoreError> {
            self.inner.renew_lease(t, l, ttl, now).await
        }
        async fn release_lease(&self, t: &TenantId, l: &Lease) -> Result<(), StoreError> {
            self.inner.release_lease(t, l).await
        }
        async fn heartbeat(
            &self,
            t: &TenantId,
            owner: &str,
            ttl: i64,
            now: TimestampMs,
        ) -> Result<(), StoreError> {
            self.inner.heartbeat(t, owner, ttl, now).await
        }
        async fn live_workers(
            &self,
            t: &TenantId,
            now: TimestampMs,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.live_workers(t, now).await
        }
        async fn lease(&self, t: &TenantId, s: ShardId) -> Result<Option<Lease>, StoreError> {
            self.inner.lease(t, s).await
        }
        async fn publish(
            &self,
            t: &TenantId,
            stories: &[Story],
            now: TimestampMs,
        ) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Backend {
                    backend: "test",
                    message: "overloaded: retries spent".into(),
                });
            }
            self.inner.publish(t, stories, now).await
        }
        async fn stories(&self, t: &TenantId, all: bool) -> Result<Vec<StoredStory>, StoreError> {
            self.inner.stories(t, all).await
        }
        fn shared(&self) -> bool {
            self.inner.shared()
        }
        fn watch(&self, hook: ChangeHook) -> bool {
            self.inner.watch(hook)
        }
        async fn put_dead_letter(&self, t: &TenantId, l: &DeadLetter) -> Result<(), StoreError> {
            self.inner.put_dead_letter(t, l).await
        }
        async fn delete_dead_letter(
            &self,
            t: &TenantId,
            s: ShardId,
            b: BucketStart,
        ) -> Result<(), StoreError> {
            self.inner.delete_dead_letter(t, s, b).await
        }
        async fn dead_letters(&self, t: &TenantId) -> Result<Vec<DeadLetter>, StoreError> {
            self.inner.dead_letters(t).await
        }
    }
}

#[test]
fn a_live_worker_outlasts_a_store_that_fails_and_publishes_everything_once_it_recovers() {
    let scratch = Scratch::new("tenants-overloaded");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store =
        Overloaded { inner: EmbeddedStore::new(scratch.path("data")), failing: failing.clone() };
    let config = WorkerConfig {
        delay_ms: 100,
        tick_ms: 100,
        backoff_ms: 50,
        limits: test_limits(),
        ..WorkerConfig::default()
    };
    let shared = Shared::default();
    let pool = Pool::new(2).unwrap();
    let workers =
        Workers::new(pool.clone(), rt.handle().clone(), store.clone(), config, shared.clone());
    let t = TenantId::new("acme").unwrap();
    workers.serve(&t, Slot::fixed(t.clone(), loaded("faulty"), r#"{"tag": "ok"}"#));
    let mut producer = Producer::new(&store, t.clone(), Layout::default(), None);
    let mut report = IngestReport::default();
    for i in 0..20 {
        let line = format!(r#"{{"id":"e{i}","source":"s","kind":"k","time":1000}}"#);
        rt.block_on(producer.push_line(&line, 1, &mut report)).unwrap();
    }
    rt.block_on(producer.flush(&mut report)).unwrap();
    // Every publish fails for a while: the shards back off and try again; none stops.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rt.block_on(store.inner.stories(&t, false)).unwrap().is_empty());
    assert!(!workers.finished(), "a shard stopped on a store failure");
    assert!(workers.tasks() >= 5, "tenant and shard tasks are all still there");
    failing.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stories = rt.block_on(store.inner.stories(&t, false)).unwrap();
        let named: std::collections::BTreeSet<String> =
            stories.iter().flat_map(|s| s.story.event_ids.clone()).collect();
        if named.len() == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 20 events published", named.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    shared.shutdown.store(true, Ordering::Relaxed);
    let failed = workers.wait();
    assert!(failed.is_empty(), "{failed:?}");
    pool.close();
}
