//! The embedded store: an append-only event log and a fjall database, one directory per
//! tenant.
//!
//! What it is: the default store, needing nothing installed; for a laptop, a small tenant, the
//! demo and the tests. A write acknowledged to a producer has been fdatasync'ed and survives
//! kill -9 of the process. What it is not: shared between processes. One process owns a
//! tenant's directory (fjall locks it), so leases here only order the workers of one process;
//! several hosts share shards through the ScyllaDB store.
//!
//! Events live in an append-only log, `<data-dir>/tenants/<tenant>/events/` (see
//! [`super::event_log`]): written once, read once, never updated, they need no LSM tree. The
//! index of non-empty partitions is rebuilt from it when the tenant is opened. Everything else
//! is in the tenant's fjall database, one keyspace each:
//!
//! | keyspace      | key                                  | value                                  |
//! |---------------|--------------------------------------|----------------------------------------|
//! | `offsets`     | shard                                | committed bucket, epoch                |
//! | `state_files` | shard                                | the file of the committed plugin state |
//! | `state`       | shard                                | plugin state, as earlier versions kept it (read only) |
//! | `leases`      | shard                                | owner, epoch, expiry                   |
//! | `workers`     | owner                                | heartbeat expiry                       |
//! | `stories`     | story id, revision                   | published time, story JSON             |
//! | `latest`      | story id                             | latest revision                        |
//! | `published`   | published time, story id, revision   | empty: what `stories --follow` reads   |
//! | `dead`        | shard, bucket                        | dead letter                            |
//! | `closed`      | shard                                | last bucket closed for writing         |
//! | `late`        | shard                                | late events redirected, total lateness |
//! | `meta`        | `layout`                             | shards, bucket length                  |
//!
//! Plugin states are files, `<tenant>/states/<shard>-<seq>` (see [`super::state_files`]).
//!
//! Integers in keys are big-endian (bucket starts with the sign bit flipped) so that byte order
//! is numeric order and a range scan walks buckets in time order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::bucket_events::{EventParts, Flat};
use super::event_log::{EventLog, Record};
use super::state_files::{StateFile, StateFiles};
use super::{
    BucketEvents, Change, ChangeHook, Checkpoint, DeadLetter, LateStats, Layout, Lease, NewEvent,
    Store, StoreError, StoredStory,
};
use crate::model::{BucketStart, Event, ShardId, Story, TenantId, TimestampMs};

const BACKEND: &str = "embedded";

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { backend: BACKEND, message: e.to_string() }
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { backend: BACKEND, what, message: e.to_string() }
}

/// How long events are kept by default: 7 days, as on ScyllaDB.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The embedded store rooted at a data directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    root: PathBuf,
    /// Events are dropped this long after they were written (whole log segments at a time).
    /// `None`: as the tenant's directory remembers it (else [`DEFAULT_RETENTION_MS`]).
    retention_ms: Option<i64>,
    /// How long after a close its buckets may be read (see [`EmbeddedStore::with_close_grace`]).
    close_grace_ms: i64,
    /// Open tenants. A std mutex: held only to look up or insert, never across an await.
    tenants: Arc<Mutex<HashMap<TenantId, Arc<TenantDb>>>>,
    /// Told of every append and dead letter (see [`Store::watch`]).
    hooks: Arc<Mutex<Vec<ChangeHook>>>,
    /// Tenants' own retentions, ms (over `retention_ms`).
    tenant_retention_ms: Arc<HashMap<TenantId, i64>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("root", &self.root).finish_non_exhaustive()
    }
}

/// One tenant's database and keyspaces.
struct TenantDb {
    db: Database,
    events: EventLog,
    offsets: Keyspace,
    /// Which file holds each shard's committed state.
    state_files: Keyspace,
    /// States committed by earlier versions, inline; removed at a shard's next commit.
    state: Keyspace,
    /// The state files.
    states: StateFiles,
    leases: Keyspace,
    workers: Keyspace,
    stories: Keyspace,
    latest: Keyspace,
    published: Keyspace,
    dead: Keyspace,
    meta: Keyspace,
    closed: Keyspace,
    late: Keyspace,
    /// Serialises read-modify-write sequences (bucket counts, leases, fenced commits) of this
    /// tenant. A std mutex: the sections are short and never await.
    write: Mutex<()>,
    /// How long events are kept after they were written; also how long the publication
    /// index (`published`) remembers a revision. Stories themselves are kept.
    retention_ms: i64,
    /// Publication time up to which the publication index was last pruned.
    published_pruned_at: std::sync::atomic::AtomicI64,
}

impl EmbeddedStore {
    /// A store under `root` (created when the first tenant is opened).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        EmbeddedStore {
            root: root.into(),
            retention_ms: None,
            close_grace_ms: 0,
            tenants: Arc::new(Mutex::new(HashMap::new())),
            hooks: Arc::new(Mutex::new(Vec::new())),
            tenant_retention_ms: Arc::default(),
        }
    }

    /// Makes workers wait `ms` after closing buckets before reading them, as they must on a
    /// store whose producers learn of a close late (ScyllaDB: 2 s). Default 0: the embedded
    /// store closes and writes under one lock, so a close is exact at once. A grace here
    /// exercises the workers' handling of such stores on one machine (tests).
    pub fn with_close_grace(mut self, ms: i64) -> Self {
        self.close_grace_ms = ms.max(0);
        self
    }

    /// Keeps events `ms` after they were written. A tenant's directory remembers the retention
    /// it was last opened with: a store made without one (a `storyline stories` run without
    /// `--retention-secs`) keeps it, and [`DEFAULT_RETENTION_MS`] applies only to a directory
    /// that never had one.
    pub fn with_retention(mut self, ms: i64) -> Self {
        self.retention_ms = Some(ms.max(1));
        self
    }

    /// Tenants' own retentions, ms, over [`Self::with_retention`] (the configuration file's
    /// `[tenants.<name>] retention_secs`).
    pub fn with_tenant_retention(mut self, ms: HashMap<TenantId, i64>) -> Self {
        self.tenant_retention_ms = Arc::new(ms.into_iter().map(|(t, v)| (t, v.max(1))).collect());
        self
    }

    /// The directory of a tenant.
    pub fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.root.join("tenants").join(tenant.as_str())
    }

    fn tenant(&self, tenant: &TenantId) -> Result<Arc<TenantDb>, StoreError> {
        let mut open = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = open.get(tenant) {
            return Ok(db.clone());
        }
        let retention = self.tenant_retention_ms.get(tenant).copied().or(self.retention_ms);
        let db = Arc::new(TenantDb::open(&self.tenant_dir(tenant), retention)?);
        open.insert(tenant.clone(), db.clone());
        Ok(db)
    }

    fn is_open(&self, tenant: &TenantId) -> bool {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).contains_key(tenant)
    }

    /// Tells the watchers (see [`Store::watch`]).
    fn changed(&self, tenant: &TenantId, change: Change) {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for hook in hooks {
            hook(tenant, change);
        }
    }

    /// Runs blocking storage work off the async threads.
    async fn blocking<R: Send + 'static>(
        &self,
        tenant: &TenantId,
        f: impl FnOnce(&TenantDb) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let db = self.tenant(tenant)?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| backend(format!("storage task failed: {e}")))?
    }
}

impl TenantDb {
    fn open(dir: &Path, configured: Option<i64>) -> Result<Self, StoreError> {
        // One background thread per tenant: a host serves thousands of tenants, each with a
        // small database (offsets, leases, stories); fjall's default is one per core each.
        let db = Database::builder(dir).worker_threads(1).open().map_err(|e| {
            backend(format!("cannot open {}: {e} (is another storyline using it?)", dir.display()))
        })?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(backend);
        let meta = ks("meta")?;
        let retention_ms = retention(&db, &meta, configured, dir)?;
        let events = EventLog::open(&dir.join("events")).map_err(backend)?;
        migrate_events(&db, &events)?;
        events.expire(crate::producer::now_ms() - retention_ms);
        let state_files = ks("state_files")?;
        let mut named = HashMap::new();
        for kv in state_files.iter() {
            let (k, v) = kv.into_inner().map_err(backend)?;
            let shard = <[u8; 4]>::try_from(&k[..])
                .map_err(|_| corrupt("state_files", format!("key of {} bytes", k.len())))?;
            let file: StateFile =
                postcard::from_bytes(&v).map_err(|e| corrupt("state_files", e))?;
            named.insert(ShardId(u32::from_be_bytes(shard)), file);
        }
        let states = StateFiles::open(&dir.join("states"), |shard| named.get(&shard).copied())
            .map_err(|e| backend(format!("cannot open {}: {e}", dir.join("states").display())))?;
        let tenant = TenantDb {
            events,
            offsets: ks("offsets")?,
            state_files,
            state: ks("state")?,
            states,
            leases: ks("leases")?,
            workers: ks("workers")?,
            stories: ks("stories")?,
            latest: ks("latest")?,
            published: ks("published")?,
            dead: ks("dead")?,
            meta,
            closed: ks("closed")?,
            late: ks("late")?,
            db,
            write: Mutex::new(()),
            retention_ms,
            published_pruned_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        };
        tenant.expire_leases()?;
        Ok(tenant)
    }

    /// Forgets publications older than the retention, as `story_feed`'s TTL does on
    /// ScyllaDB: `stories --follow` reads only recent ones, and the index would otherwise grow
    /// by a key per revision forever. At most once a minute; a prune lost in a crash is redone
    /// by the next.
    fn prune_published(&self, now: TimestampMs) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let last = self.published_pruned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 60_000 {
            return Ok(());
        }
        self.published_pruned_at.store(now, Ordering::Relaxed);
        let cutoff = bucket_bytes(BucketStart(now.saturating_sub(self.retention_ms)));
        // In batches of bounded size: the first prune after an upgrade may find many keys.
        loop {
            let old: Vec<_> = self
                .published
                .range(..cutoff.to_vec())
                .take(10_000)
                .map(|guard| guard.key())
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            if old.is_empty() {
                return Ok(());
            }
            let mut batch = self.db.batch();
            for key in old {
                batch.remove(&self.published, key);
            }
            batch.commit().map_err(backend)?;
        }
    }

    /// This process owns the directory (fjall locks it), so any lease found on opening was
    /// held by a process that is gone: it lapses now (keeping its epoch, so the next owner's is
    /// higher) instead of blocking a restart until its expiry.
    fn expire_leases(&self) -> Result<(), StoreError> {
        let mut stale = Vec::new();
        for guard in self.leases.iter() {
            let key = guard.key().map_err(backend)?;
            let shard = u32::from_be_bytes(
                key.as_ref().try_into().map_err(|_| corrupt("leases", "bad key"))?,
            );
            if let Some(l) = self.lease(ShardId(shard))?.filter(|l| l.expires_ms != i64::MIN) {
                stale.push(l);
            }
        }
        for l in stale {
            self.put_lease(&Lease { expires_ms: i64::MIN, ..l })?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn layout(&self) -> Result<Option<Layout>, StoreError> {
        match self.meta.get("layout").map_err(backend)? {
            None => Ok(None),
            Some(v) => {
                let (shards, bucket_ms): (u32, i64) =
                    postcard::from_bytes(&v).map_err(|e| corrupt("meta", e))?;
                Ok(Some(Layout { shards, bucket_ms }))
            }
        }
    }

    fn lease(&self, shard: ShardId) -> Result<Option<Lease>, StoreError> {
        match self.leases.get(shard.0.to_be_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(v) => {
                let (owner, epoch, expires_ms): (String, u64, i64) =
                    postcard::from_bytes(&v).map_err(|e| corrupt("leases", e))?;
                Ok(Some(Lease { shard, owner, epoch, expires_ms }))
            }
        }
    }

    fn closed_until(&self, shard: ShardId) -> Result<Option<BucketStart>, StoreError> {
        Ok(self.closed.get(shard.0.to_be_bytes()).map_err(backend)?.and_then(|v| bucket_from(&v)))
    }

    fn late_stats(&self, shard: ShardId) -> Result<LateStats, StoreError> {
        match self.late.get(shard.0.to_be_bytes()).map_err(backend)? {
            None => Ok(LateStats::default()),
            Some(v) => {
                let (events, lateness_ms): (u64, u64) =
                    postcard::from_bytes(&v).map_err(|e| corrupt("late", e))?;
                Ok(LateStats { events, lateness_ms })
            }
        }
    }

    /// The file of a shard's committed state, if it has one.
    fn state_file(&self, shard: ShardId) -> Result<Option<StateFile>, StoreError> {
        let Some(v) = self.state_files.get(shard.0.to_be_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        postcard::from_bytes(&v).map(Some).map_err(|e| corrupt("state_files", e))
    }

    fn fence(&self, tenant: &TenantId, lease: &Lease) -> Result<(), StoreError> {
        let current = self.lease(lease.shard)?.map_or(0, |l| l.epoch);
        if current != lease.epoch {
            return Err(StoreError::Fenced {
                tenant: tenant.clone(),
                shard: lease.shard,
                held: lease.epoch,
                current,
            });
        }
        Ok(())
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let value = encode(&(&lease.owner, lease.epoch, lease.expires_ms));
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.leases, lease.shard.0.to_be_bytes(), value);
        batch.commit().map_err(backend)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data into a Vec: postcard cannot fail here.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Bucket start as 8 bytes whose byte order is numeric order.
fn bucket_bytes(b: BucketStart) -> [u8; 8] {
    ((b.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn bucket_from(bytes: &[u8]) -> Option<BucketStart> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(BucketStart((u64::from_be_bytes(arr) ^ (1 << 63)) as i64))
}

fn partition_key(shard: ShardId, bucket: BucketStart) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.0.to_be_bytes());
    k[4..].copy_from_slice(&bucket_bytes(bucket));
    k
}

/// The stored form of an event, as the event log holds it (read back as [`StoredEventRef`]).
#[derive(Serialize)]
struct StoredEvent<'a> {
    id: Cow<'a, str>,
    source: Cow<'a, str>,
    kind: Cow<'a, str>,
    event_time: i64,
    insert_time: i64,
    attributes: Cow<'a, [(String, String)]>,
    payload: Bytes<'a>,
}

impl<'a> StoredEvent<'a> {
    fn of(e: &'a Event) -> Self {
        StoredEvent {
            id: Cow::Borrowed(&e.id),
            source: Cow::Borrowed(&e.source),
            kind: Cow::Borrowed(&e.kind),
            event_time: e.event_time,
            insert_time: e.insert_time,
            attributes: Cow::Borrowed(&e.attributes),
            payload: Bytes(Cow::Borrowed(&e.payload)),
        }
    }
}

/// [`StoredEvent`] decoded without a copy: its strings and payload borrow from the record.
#[derive(Deserialize)]
struct StoredEventRef<'a> {
    id: &'a str,
    source: &'a str,
    kind: &'a str,
    event_time: i64,
    insert_time: i64,
    #[serde(borrow)]
    attributes: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
}

/// Bytes encoded as one byte string (serde would write a `[u8]` byte by byte). Postcard
/// writes both forms alike: a length, then the bytes.
struct Bytes<'a>(Cow<'a, [u8]>);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bytes<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Bytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Bytes(Cow::Owned(v.to_vec())))
            }
        }
        d.deserialize_bytes(Visit)
    }
}

/// The retention a tenant's events are kept for: `configured` when given, remembered in `meta`
/// for the processes that open the directory without one; else the remembered one; else the
/// default.
fn retention(
    db: &Database,
    meta: &Keyspace,
    configured: Option<i64>,
    dir: &Path,
) -> Result<i64, StoreError> {
    let stored = match meta.get("retention_ms").map_err(backend)? {
        Some(v) => Some(i64::from_be_bytes(
            v.as_ref().try_into().map_err(|_| corrupt("meta", "retention is not 8 bytes"))?,
        )),
        None => None,
    };
    match configured {
        Some(ms) if stored != Some(ms) => {
            let mut batch = db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(meta, "retention_ms", ms.to_be_bytes());
            batch.commit().map_err(backend)?;
            if let Some(old) = stored {
                tracing::info!(dir = %dir.display(), from_secs = old / 1000, to_secs = ms / 1000, "retention changed");
            }
            Ok(ms)
        }
        Some(ms) => Ok(ms),
        None => Ok(stored.unwrap_or(DEFAULT_RETENTION_MS)),
    }
}

/// Events stored by earlier versions in the LSM tree (`events` keyspace, with the `buckets`
/// index) move to the event log once, when the tenant is opened; then both keyspaces go.
fn migrate_events(db: &Database, log: &EventLog) -> Result<(), StoreError> {
    let names = db.list_keyspace_names();
    if !names.iter().any(|n| n.as_ref() == "events") {
        return Ok(());
    }
    let events = db.keyspace("events", KeyspaceCreateOptions::default).map_err(backend)?;
    let mut records: Vec<Record> = Vec::new();
    let mut moved = 0u64;
    for guard in events.iter() {
        let (key, value) = guard.into_inner().map_err(backend)?;
        let shard = key.get(..4).and_then(|k| k.try_into().ok()).map(u32::from_be_bytes);
        let bucket = bucket_from(key.get(4..12).unwrap_or_default());
        let id = key.get(12..).map(std::str::from_utf8);
        let (Some(shard), Some(bucket), Some(Ok(id))) = (shard, bucket, id) else {
            return Err(corrupt("events", "bad key"));
        };
        let v: LegacyEventValue<'_> =
            postcard::from_bytes(&value).map_err(|e| corrupt("events", e))?;
        if !records.last().is_some_and(|r| r.is(shard, bucket.0)) {
            // Written a partition at a time, in key order; the log keeps them apart.
            if records.len() >= 64 {
                log.append(&records, crate::producer::now_ms()).map_err(backend)?;
                records.clear();
            }
            records.push(Record::new(shard, bucket.0));
        }
        let stored = StoredEvent {
            id: Cow::Borrowed(id),
            source: v.source,
            kind: v.kind,
            event_time: v.event_time,
            insert_time: v.insert_time,
            attributes: Cow::Owned(v.attributes),
            payload: Bytes(v.payload),
        };
        if let Some(r) = records.last_mut() {
            r.push(&stored);
        }
        moved += 1;
    }
    log.append(&records, crate::producer::now_ms()).map_err(backend)?;
    drop(events);
    for name in ["events", "buckets"] {
        if names.iter().any(|n| n.as_ref() == name) {
            let ks = db.keyspace(name, KeyspaceCreateOptions::default).map_err(backend)?;
            db.delete_keyspace(ks).map_err(backend)?;
        }
    }
    tracing::info!(events = moved, "moved stored events to the event log");
    Ok(())
}

/// How earlier versions stored an event in the LSM tree (its id was in the key).
#[derive(Deserialize)]
struct LegacyEventValue<'a> {
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    event_time: i64,
    insert_time: i64,
    attributes: Vec<(String, String)>,
    #[serde(borrow)]
    payload: Cow<'a, [u8]>,
}

/// The stored form of a commit.
#[derive(Serialize, Deserialize)]
struct OffsetValue {
    bucket: i64,
    epoch: u64,
}

/// A published revision from its `stories` key (id, 0, revision) and value.
fn stored_story(key: &[u8], value: &[u8]) -> Result<StoredStory, StoreError> {
    let split = key.len().checked_sub(5).ok_or_else(|| corrupt("stories", "short key"))?;
    let id = std::str::from_utf8(&key[..split]).map_err(|e| corrupt("stories", e))?;
    let revision = u32::from_be_bytes(
        key[split + 1..].try_into().map_err(|_| corrupt("stories", "bad revision"))?,
    );
    let v: StoryValue = postcard::from_bytes(value).map_err(|e| corrupt("stories", e))?;
    let fields = RawValue::from_string(v.fields).map_err(|e| corrupt("stories", e))?;
    Ok(StoredStory {
        story: Story {
            id: id.to_string(),
            revision,
            kind: v.kind,
            event_ids: v.event_ids,
            first_seen: v.first_seen,
            last_seen: v.last_seen,
            fields,
        },
        published_ms: v.published_ms,
    })
}

/// The stored form of a published story revision.
#[derive(Serialize, Deserialize)]
struct StoryValue {
    published_ms: i64,
    kind: String,
    event_ids: Vec<String>,
    first_seen: i64,
    last_seen: i64,
    fields: String,
}

#[derive(Serialize, Deserialize)]
struct DeadValue {
    plugin: String,
    reason: String,
    attempts: u32,
    at_ms: i64,
    replay: bool,
}

impl Store for EmbeddedStore {
    async fn layout(&self, tenant: &TenantId) -> Result<Option<Layout>, StoreError> {
        // A tenant that never had an event has no directory: asking about it (a worker waiting
        // for its first events) must not create one, nor open a database for it.
        if !self.is_open(tenant) && !self.tenant_dir(tenant).exists() {
            return Ok(None);
        }
        self.blocking(tenant, |db| db.layout()).await
    }

    async fn append(
        &self,
        tenant: &TenantId,
        layout: Layout,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        for e in events {
            if e.shard.0 >= layout.shards {
                return Err(StoreError::shard_out_of_range(tenant, e.shard, layout));
            }
        }
        // Encoded on the caller's thread, a record per (shard, bucket); the blocking section
        // only moves records of closed buckets and writes.
        let mut records: Vec<Record> = Vec::new();
        for e in events {
            let i = match records.iter().rposition(|r| r.is(e.shard.0, e.bucket.0)) {
                Some(i) => i,
                None => {
                    records.push(Record::new(e.shard.0, e.bucket.0));
                    records.len() - 1
                }
            };
            records[i].push(&StoredEvent::of(&e.event));
        }
        let tenant_id = tenant.clone();
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            match db.layout()? {
                Some(existing) if existing != layout => {
                    return Err(StoreError::layout_mismatch(&tenant_id, existing, layout));
                }
                Some(_) => {}
                // The layout is fixed by the first write, before any event is.
                None => {
                    let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
                    batch.insert(&db.meta, "layout", encode(&(layout.shards, layout.bucket_ms)));
                    batch.commit().map_err(backend)?;
                }
            }
            // Under the lock that closing takes too: events for a closed bucket go to the
            // first open one, so a worker that read the closed bucket still gets them.
            let mut closed: Vec<(ShardId, Option<BucketStart>, LateStats)> = Vec::new();
            for r in &mut records {
                let shard = ShardId(r.shard());
                let at = match closed.iter().position(|(s, _, _)| *s == shard) {
                    Some(i) => i,
                    None => {
                        closed.push((shard, db.closed_until(shard)?, LateStats::default()));
                        closed.len() - 1
                    }
                };
                let (_, closed_until, late) = &mut closed[at];
                if let Some(c) = *closed_until
                    && r.bucket() <= c.0
                {
                    let open = c.0 + layout.bucket_ms;
                    late.events += u64::from(r.len());
                    late.lateness_ms += (open - r.bucket()) as u64 * u64::from(r.len());
                    r.move_to(open);
                }
            }
            let now = crate::producer::now_ms();
            db.events.append(&records, now).map_err(backend)?;
            db.events.expire(now - db.retention_ms);
            let late: Vec<_> = closed.into_iter().filter(|(_, _, l)| l.events > 0).collect();
            if !late.is_empty() {
                let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
                for (shard, _, late) in late {
                    let old = db.late_stats(shard)?;
                    let total = (old.events + late.events, old.lateness_ms + late.lateness_ms);
                    batch.insert(&db.late, shard.0.to_be_bytes(), encode(&total));
                    tracing::warn!(
                        tenant = %tenant_id,
                        shard = %shard,
                        events = late.events,
                        "late write: events for buckets this shard already closed were moved to its first open bucket"
                    );
                }
                batch.commit().map_err(backend)?;
            }
            Ok(())
        })
        .await?;
        self.changed(tenant, Change::Events);
        Ok(())
    }

    async fn close_buckets(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        to: BucketStart,
    ) -> Result<(), StoreError> {
        let (lease, tenant_id) = (lease.clone(), tenant.clone());
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            db.fence(&tenant_id, &lease)?;
            if db.closed_until(lease.shard)?.is_some_and(|c| c >= to) {
                return Ok(());
            }
            let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(&db.closed, lease.shard.0.to_be_bytes(), bucket_bytes(to));
            batch.commit().map_err(backend)
        })
        .await
    }

    async fn closed_until(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<BucketStart>, StoreError> {
        self.blocking(tenant, move |db| db.closed_until(shard)).await
    }

    fn close_grace_ms(&self) -> i64 {
        self.close_grace_ms
    }

    fn retention_ms(&self, tenant: &TenantId) -> Option<i64> {
        // An open tenant's is exact (its directory remembers the last one given); else the one
        // it would be opened with.
        let open = self.tenants.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned();
        if let Some(db) = open {
            return Some(db.retention_ms);
        }
        let given = self.tenant_retention_ms.get(tenant).copied().or(self.retention_ms);
        Some(given.unwrap_or(DEFAULT_RETENTION_MS))
    }

    async fn late_stats(&self, tenant: &TenantId, shard: ShardId) -> Result<LateStats, StoreError> {
        self.blocking(tenant, move |db| db.late_stats(shard)).await
    }

    async fn next_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> Result<Option<BucketStart>, StoreError> {
        self.blocking(tenant, move |db| {
            Ok(match after {
                Some(b) if b.0 == i64::MAX => None,
                Some(b) => db.events.next_bucket(shard.0, b.0 + 1),
                None => db.events.next_bucket(shard.0, i64::MIN),
            }
            .map(BucketStart))
        })
        .await
    }

    async fn read_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> Result<BucketEvents, StoreError> {
        // On the caller's thread, which hands the events to the plugin and frees them: the
        // partition comes from the page cache (or one sequential read), and what it is decoded
        // into is allocated and freed by one thread.
        let db = self.tenant(tenant)?;
        let (events, bytes) = db.events.partition_size(shard.0, bucket.0);
        let mut flat = Flat::with_capacity(events as usize, bytes as usize);
        db.events
            .read(shard.0, bucket.0, |bytes| match postcard::from_bytes::<StoredEventRef>(bytes) {
                Ok(e) => {
                    let parts = EventParts {
                        id: e.id,
                        source: e.source,
                        kind: e.kind,
                        event_time: e.event_time,
                        insert_time: e.insert_time,
                        payload: e.payload,
                    };
                    flat.push(parts, e.attributes.iter().copied());
                    true
                }
                Err(_) => false,
            })
            .map_err(backend)?;
        Ok(flat.finish())
    }

    async fn pending_events(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> Result<u64, StoreError> {
        self.blocking(tenant, move |db| {
            Ok(match after {
                Some(b) if b.0 == i64::MAX => 0,
                Some(b) => db.events.events_from(shard.0, b.0 + 1),
                None => db.events.events_from(shard.0, i64::MIN),
            })
        })
        .await
    }

    async fn committed_offset(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<BucketStart>, StoreError> {
        self.blocking(tenant, move |db| {
            let Some(v) = db.offsets.get(shard.0.to_be_bytes()).map_err(backend)? else {
                return Ok(None);
            };
            let o: OffsetValue = postcard::from_bytes(&v).map_err(|e| corrupt("offsets", e))?;
            Ok(Some(BucketStart(o.bucket)))
        })
        .await
    }

    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<Checkpoint>, StoreError> {
        self.blocking(tenant, move |db| {
            let key = shard.0.to_be_bytes();
            let Some(v) = db.offsets.get(key).map_err(backend)? else { return Ok(None) };
            let o: OffsetValue = postcard::from_bytes(&v).map_err(|e| corrupt("offsets", e))?;
            let state = match db.state_files.get(key).map_err(backend)? {
                Some(f) => {
                    let file: StateFile =
                        postcard::from_bytes(&f).map_err(|e| corrupt("state_files", e))?;
                    db.states.read(shard, file).map_err(|e| {
                        corrupt(
                            "states",
                            format!(
                                "the committed state of shard {shard} cannot be read: {e} \
                                 (was the tenant's states directory changed by hand?)"
                            ),
                        )
                    })?
                }
                None => db.state.get(key).map_err(backend)?.map(|s| s.to_vec()).unwrap_or_default(),
            };
            Ok(Some(Checkpoint { bucket: BucketStart(o.bucket), state, epoch: o.epoch }))
        })
        .await
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        bucket: BucketStart,
        state: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let state = state.map(<[u8]>::to_vec);
        let tenant_id = tenant.clone();
        self.blocking(tenant, move |db| {
            let key = lease.shard.0.to_be_bytes();
            // The state's file first, durable, outside the lock: producers' appends go on
            // while tens of megabytes are written.
            let file = match &state {
                Some(state) => Some(db.states.write(lease.shard, state).map_err(|e| {
                    backend(format!("cannot write the plugin state of shard {}: {e}", lease.shard))
                })?),
                None => None,
            };
            let guard = db.lock();
            let previous = db.state_file(lease.shard)?;
            if let Err(e) = db.fence(&tenant_id, &lease) {
                drop(guard);
                if let Some(file) = file {
                    db.states.remove(lease.shard, file);
                }
                return Err(e);
            }
            // Offset and the state's file in one atomic batch: recovery sees both or neither.
            let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(
                &db.offsets,
                key,
                encode(&OffsetValue { bucket: bucket.0, epoch: lease.epoch }),
            );
            if let Some(file) = file {
                batch.insert(&db.state_files, key, encode(&file));
                batch.remove(&db.state, key);
            }
            let committed = batch.commit().map_err(backend);
            drop(guard);
            match (committed, file) {
                (Ok(()), Some(_)) => {
                    if let Some(previous) = previous {
                        db.states.remove(lease.shard, previous);
                    }
                    Ok(())
                }
                (Ok(()), None) => Ok(()),
                (Err(e), file) => {
                    // Not named by any commit (a batch is all or nothing).
                    if let Some(file) = file {
                        db.states.remove(lease.shard, file);
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    async fn acquire_lease(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<Option<Lease>, StoreError> {
        let owner = owner.to_string();
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            let current = db.lease(shard)?;
            let epoch = match &current {
                Some(l) if l.owner == owner => l.epoch,
                Some(l) if l.expires_ms > now => return Ok(None),
                Some(l) => l.epoch + 1,
                None => 1,
            };
            let lease = Lease { shard, owner, epoch, expires_ms: now + ttl_ms };
            db.put_lease(&lease)?;
            Ok(Some(lease))
        })
        .await
    }

    async fn renew_lease(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<Option<Lease>, StoreError> {
        let held = lease.clone();
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            match db.lease(held.shard)? {
                Some(l) if l.owner == held.owner && l.epoch == held.epoch => {
                    let renewed = Lease { expires_ms: now + ttl_ms, ..l };
                    db.put_lease(&renewed)?;
                    Ok(Some(renewed))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn release_lease(&self, tenant: &TenantId, lease: &Lease) -> Result<(), StoreError> {
        let held = lease.clone();
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            match db.lease(held.shard)? {
                // Keep the epoch so the next owner's is higher; only the expiry goes.
                Some(l) if l.owner == held.owner && l.epoch == held.epoch => {
                    db.put_lease(&Lease { expires_ms: i64::MIN, ..l })
                }
                _ => Ok(()),
            }
        })
        .await
    }

    async fn heartbeat(
        &self,
        tenant: &TenantId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<(), StoreError> {
        let owner = owner.to_string();
        self.blocking(tenant, move |db| {
            // Not durable on purpose: a heartbeat lost in a crash is what a crash should mean.
            db.workers.insert(owner.as_bytes(), (now + ttl_ms).to_be_bytes()).map_err(backend)
        })
        .await
    }

    async fn live_workers(
        &self,
        tenant: &TenantId,
        now: TimestampMs,
    ) -> Result<Vec<String>, StoreError> {
        self.blocking(tenant, move |db| {
            let mut out = Vec::new();
            for guard in db.workers.iter() {
                let (key, value) = guard.into_inner().map_err(backend)?;
                let expires = i64::from_be_bytes(
                    value.as_ref().try_into().map_err(|_| corrupt("workers", "bad expiry"))?,
                );
                if expires > now {
                    out.push(String::from_utf8_lossy(&key).into_owned());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn lease(&self, tenant: &TenantId, shard: ShardId) -> Result<Option<Lease>, StoreError> {
        self.blocking(tenant, move |db| db.lease(shard)).await
    }

    async fn publish(
        &self,
        tenant: &TenantId,
        stories: &[Story],
        now: TimestampMs,
    ) -> Result<(), StoreError> {
        if stories.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, u32, Vec<u8>)> = stories
            .iter()
            .map(|s| {
                let v = StoryValue {
                    published_ms: now,
                    kind: s.kind.clone(),
                    event_ids: s.event_ids.clone(),
                    first_seen: s.first_seen,
                    last_seen: s.last_seen,
                    fields: s.fields.get().to_string(),
                };
                (s.id.clone(), s.revision, encode(&v))
            })
            .collect();
        self.blocking(tenant, move |db| {
            let _guard = db.lock();
            let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
            for (id, revision, value) in rows {
                let mut key = Vec::with_capacity(id.len() + 5);
                key.extend_from_slice(id.as_bytes());
                key.push(0);
                key.extend_from_slice(&revision.to_be_bytes());
                let mut at = Vec::with_capacity(8 + key.len());
                at.extend_from_slice(&bucket_bytes(BucketStart(now)));
                at.extend_from_slice(&key);
                batch.insert(&db.published, at, []);
                batch.insert(&db.stories, key, value);
                let newer = match db.latest.get(id.as_bytes()).map_err(backend)? {
                    Some(v) => {
                        u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4])) < revision
                    }
                    None => true,
                };
                if newer {
                    batch.insert(&db.latest, id.as_bytes(), revision.to_be_bytes());
                }
            }
            batch.commit().map_err(backend)?;
            // The stories are published; a prune that fails is only retried later.
            if let Err(e) = db.prune_published(now) {
                tracing::warn!("cannot prune the publication index: {e}");
            }
            Ok(())
        })
        .await
    }

    async fn stories(
        &self,
        tenant: &TenantId,
        all_revisions: bool,
    ) -> Result<Vec<StoredStory>, StoreError> {
        self.blocking(tenant, move |db| {
            let mut out: Vec<StoredStory> = Vec::new();
            for guard in db.stories.iter() {
                let (key, value) = guard.into_inner().map_err(backend)?;
                let stored = stored_story(&key, &value)?;
                // Keys are ordered by id then revision: the last of an id is its latest.
                match out.last_mut() {
                    Some(prev) if !all_revisions && prev.story.id == stored.story.id => {
                        *prev = stored
                    }
                    _ => out.push(stored),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stories_since(
        &self,
        tenant: &TenantId,
        since_ms: TimestampMs,
    ) -> Result<Vec<StoredStory>, StoreError> {
        self.blocking(tenant, move |db| {
            let mut out = Vec::new();
            for guard in db.published.range(bucket_bytes(BucketStart(since_ms)).to_vec()..) {
                let at = guard.key().map_err(backend)?;
                let key = at.get(8..).ok_or_else(|| corrupt("published", "short key"))?;
                let Some(value) = db.stories.get(key).map_err(backend)? else { continue };
                out.push(stored_story(key, &value)?);
            }
            Ok(out)
        })
        .await
    }

    fn shared(&self) -> bool {
        false
    }

    fn release(&self, tenant: &TenantId) {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    fn watch(&self, hook: ChangeHook) -> bool {
        self.hooks.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
        true
    }

    async fn put_dead_letter(
        &self,
        tenant: &TenantId,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        let key = partition_key(letter.shard, letter.bucket);
        let value = encode(&DeadValue {
            plugin: letter.plugin.clone(),
            reason: letter.reason.clone(),
            attempts: letter.attempts,
            at_ms: letter.at_ms,
            replay: letter.replay,
        });
        self.blocking(tenant, move |db| {
            let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(&db.dead, key, value);
            batch.commit().map_err(backend)
        })
        .await?;
        self.changed(tenant, Change::DeadLetters);
        Ok(())
    }

    async fn delete_dead_letter(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> Result<(), StoreError> {
        let key = partition_key(shard, bucket);
        self.blocking(tenant, move |db| {
            let mut batch = db.db.batch().durability(Some(PersistMode::SyncData));
            batch.remove(&db.dead, key);
            batch.commit().map_err(backend)
        })
        .await
    }

    async fn dead_letters(&self, tenant: &TenantId) -> Result<Vec<DeadLetter>, StoreError> {
        self.blocking(tenant, |db| {
            let mut out = Vec::new();
            for guard in db.dead.iter() {
                let (key, value) = guard.into_inner().map_err(backend)?;
                let shard = ShardId(u32::from_be_bytes(
                    key.get(..4)
                        .and_then(|k| k.try_into().ok())
                        .ok_or_else(|| corrupt("dead", "short key"))?,
                ));
                let bucket = bucket_from(key.get(4..).unwrap_or_default())
                    .ok_or_else(|| corrupt("dead", "short key"))?;
                let v: DeadValue = postcard::from_bytes(&value).map_err(|e| corrupt("dead", e))?;
                out.push(DeadLetter {
                    shard,
                    bucket,
                    plugin: v.plugin,
                    reason: v.reason,
                    attempts: v.attempts,
                    at_ms: v.at_ms,
                    replay: v.replay,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_shard_keeps_one_state_file_and_files_no_commit_names_are_deleted_on_open() {
        let root = std::env::temp_dir().join(format!("storyline-states-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = EmbeddedStore::new(&root);
        let t = TenantId::new("acme").unwrap();
        let states = store.tenant_dir(&t).join("states");
        let lease = store.acquire_lease(&t, ShardId(2), "w1", 60_000, 0).await.unwrap().unwrap();
        for i in 0..3u8 {
            let state = vec![i; 100_000 + usize::from(i)];
            store.commit(&t, &lease, BucketStart(i64::from(i)), Some(&state)).await.unwrap();
        }
        assert_eq!(files(&states).len(), 1, "{:?}", files(&states));
        // A commit without a state keeps the file; a fenced one leaves none behind.
        store.commit(&t, &lease, BucketStart(5), None).await.unwrap();
        let next =
            store.acquire_lease(&t, ShardId(2), "w2", 60_000, 70_000).await.unwrap().unwrap();
        let err = store.commit(&t, &lease, BucketStart(6), Some(b"stale")).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "got {err:?}");
        assert_eq!(files(&states).len(), 1, "{:?}", files(&states));
        // What a crash between writing a file and committing it leaves.
        std::fs::write(states.join("2-999"), b"never committed").unwrap();
        std::fs::write(states.join("stray"), b"?").unwrap();
        drop(store);
        let store = EmbeddedStore::new(&root);
        let cp = store.load_checkpoint(&t, ShardId(2)).await.unwrap().unwrap();
        assert_eq!((cp.bucket, cp.state), (BucketStart(5), vec![2u8; 100_002]));
        assert_eq!(files(&states).len(), 1, "{:?}", files(&states));
        // New files are numbered past every file found.
        store.commit(&t, &next, BucketStart(7), Some(b"new")).await.unwrap();
        let seq: u64 = files(&states)[0].split_once('-').unwrap().1.parse().unwrap();
        assert!(seq > 999, "file {seq}");
        let cp = store.load_checkpoint(&t, ShardId(2)).await.unwrap().unwrap();
        assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(7), &b"new"[..]));
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_state_kept_inline_by_an_earlier_version_loads_and_leaves_at_the_next_commit() {
        let root = std::env::temp_dir().join(format!("storyline-inline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = EmbeddedStore::new(&root);
        let t = TenantId::new("acme").unwrap();
        {
            let db = Database::builder(store.tenant_dir(&t)).open().unwrap();
            let offsets = db.keyspace("offsets", KeyspaceCreateOptions::default).unwrap();
            let state = db.keyspace("state", KeyspaceCreateOptions::default).unwrap();
            offsets
                .insert(1u32.to_be_bytes(), encode(&OffsetValue { bucket: 4000, epoch: 0 }))
                .unwrap();
            state.insert(1u32.to_be_bytes(), b"inline").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let cp = store.load_checkpoint(&t, ShardId(1)).await.unwrap().unwrap();
        assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(4000), &b"inline"[..]));
        let lease = store.acquire_lease(&t, ShardId(1), "w", 60_000, 0).await.unwrap().unwrap();
        store.commit(&t, &lease, BucketStart(5000), Some(b"in a file")).await.unwrap();
        let db = store.tenant(&t).unwrap();
        assert!(db.state.get(1u32.to_be_bytes()).unwrap().is_none());
        let cp = store.load_checkpoint(&t, ShardId(1)).await.unwrap().unwrap();
        assert_eq!(cp.state, b"in a file");
        drop((db, store));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn events_stored_by_earlier_versions_move_to_the_event_log() {
        let root = std::env::temp_dir().join(format!("storyline-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = EmbeddedStore::new(&root);
        let tenant = TenantId::new("acme").unwrap();
        {
            // The layout of earlier versions: events and their bucket counts in the LSM tree.
            let db = Database::builder(store.tenant_dir(&tenant)).open().unwrap();
            let events = db.keyspace("events", KeyspaceCreateOptions::default).unwrap();
            let buckets = db.keyspace("buckets", KeyspaceCreateOptions::default).unwrap();
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
            meta.insert("layout", encode(&(4u32, 1000i64))).unwrap();
            for (shard, bucket, id) in [(1, 2000, "b"), (1, 2000, "a"), (2, 5000, "c")] {
                let mut key = partition_key(ShardId(shard), BucketStart(bucket)).to_vec();
                key.extend_from_slice(id.as_bytes());
                let value = (
                    "fw",
                    "flow",
                    7i64,
                    bucket,
                    vec![("k".to_string(), "v".to_string())],
                    id.as_bytes().to_vec(),
                );
                events.insert(key, encode(&value)).unwrap();
                buckets
                    .insert(partition_key(ShardId(shard), BucketStart(bucket)), 1u64.to_le_bytes())
                    .unwrap();
            }
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let read =
            store.read_bucket(&tenant, ShardId(1), BucketStart(2000)).await.unwrap().into_events();
        assert_eq!(read.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(read[0].attributes, [("k".to_string(), "v".to_string())]);
        assert_eq!(read[0].payload, b"a");
        assert_eq!(
            (read[0].source.as_str(), read[0].event_time, read[0].insert_time),
            ("fw", 7, 2000)
        );
        assert_eq!(
            store.next_bucket(&tenant, ShardId(2), None).await.unwrap(),
            Some(BucketStart(5000))
        );
        assert_eq!(store.pending_events(&tenant, ShardId(1), None).await.unwrap(), 2);
        drop(store);
        // Once moved, the old keyspaces are gone and a reopening does not move anything twice.
        let store = EmbeddedStore::new(&root);
        assert_eq!(store.pending_events(&tenant, ShardId(1), None).await.unwrap(), 2);
        let db = store.tenant(&tenant).unwrap();
        assert!(!db.db.list_keyspace_names().iter().any(|n| n.as_ref() == "events"));
        drop((db, store));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_tenant_keeps_the_retention_it_was_last_given() {
        let root = std::env::temp_dir().join(format!("storyline-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let tenant = TenantId::new("acme").unwrap();
        let opened = |store: EmbeddedStore| store.tenant(&tenant).unwrap().retention_ms;
        assert_eq!(opened(EmbeddedStore::new(&root)), DEFAULT_RETENTION_MS);
        assert_eq!(opened(EmbeddedStore::new(&root).with_retention(30_000)), 30_000);
        // Opened without one (a `storyline stories` run): the tenant's own, not the default.
        assert_eq!(opened(EmbeddedStore::new(&root)), 30_000);
        assert_eq!(opened(EmbeddedStore::new(&root).with_retention(60_000)), 60_000);
        assert_eq!(opened(EmbeddedStore::new(&root)), 60_000);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn publications_older_than_the_retention_leave_the_index_and_stories_stay() {
        let root = std::env::temp_dir().join(format!("storyline-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = EmbeddedStore::new(&root).with_retention(10_000);
        let tenant = TenantId::new("acme").unwrap();
        let story = |id: &str| {
            Story::from(storyline_sdk::Story {
                id: id.into(),
                revision: 0,
                kind: "k".into(),
                event_ids: vec![format!("{id}-e")],
                first_seen: 1,
                last_seen: 2,
                fields: storyline_sdk::Fields::builder().finish(),
            })
        };
        let t0 = 1_000_000;
        store.publish(&tenant, &[story("old")], t0).await.unwrap();
        store.publish(&tenant, &[story("recent")], t0 + 55_000).await.unwrap();
        let feed = |v: Vec<StoredStory>| v.into_iter().map(|s| s.story.id).collect::<Vec<_>>();
        // Within a minute of the last prune nothing is pruned, even past the retention.
        assert_eq!(feed(store.stories_since(&tenant, 0).await.unwrap()), ["old", "recent"]);
        store.publish(&tenant, &[story("new")], t0 + 65_000).await.unwrap();
        // `old` was published 65 s ago, more than the 10 s retention; `recent` 10 s ago.
        assert_eq!(feed(store.stories_since(&tenant, 0).await.unwrap()), ["recent", "new"]);
        assert_eq!(feed(store.stories(&tenant, false).await.unwrap()), ["new", "old", "recent"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&root);
    }
}
