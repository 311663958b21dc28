//! The ScyllaDB store, through the `scylla` driver: one keyspace per tenant. Also runs on other
//! CQL clusters (Apache Cassandra 4+): options only ScyllaDB understands are applied only when
//! the node says it is ScyllaDB.
//!
//! Tables (see [`schema_cql`] for the exact CQL, printed by `storyline schema`):
//!
//! - `events`, `PRIMARY KEY ((shard, bucket), event_id)`: the queue. Time-window compaction
//!   and a TTL: a day's SSTables are dropped whole when they expire. Only ever inserted, never
//!   deleted or updated, which is what makes ScyllaDB's `tombstone_gc = {'mode': 'immediate'}`
//!   safe for it: the only tombstones are expired cells that no replica can resurrect.
//! - `buckets`, `PRIMARY KEY ((shard, day), bucket)`: the index of non-empty buckets, so that a
//!   worker finds the next bucket with one query per day instead of one per empty second.
//!   Written before the events it announces; same TTL and options as `events`.
//! - `shards`, `PRIMARY KEY (shard)`: the lease (owner, epoch, expiry) and the committed offset
//!   with a reference to the plugin state, in one row so that one lightweight transaction fences
//!   a commit by the lease epoch. Every write to it is an LWT; LWT and plain writes are never
//!   mixed there (their timestamps do not order against each other).
//! - `shard_state`, `PRIMARY KEY ((shard, epoch, slot), chunk)`: plugin states in chunks of
//!   1 MiB. A live tenant's state is tens of megabytes, and a mutation over half a commit-log
//!   segment (16 MiB by default, on ScyllaDB and Cassandra alike) is refused; an LWT would also
//!   copy it through the Paxos table. A commit writes the chunks first, with plain writes, into
//!   the slot its shard row does not point at, then points the row at them with the LWT that
//!   fences the commit. Each lease epoch has two slots of its own, so a fenced worker never
//!   writes where the current owner's state is; the new owner's first commit of a state deletes
//!   the previous epoch's slots.
//! - `stories`, `PRIMARY KEY (story_id, revision)` newest revision first; `dead_letters`,
//!   `PRIMARY KEY (shard, bucket)`; `meta` (the layout).
//! - `story_feed`, `PRIMARY KEY ((minute), published_ms, story_id, revision)`: which revisions
//!   were published when, a partition per minute (with the events' TTL), so that `stories
//!   --follow` reads only what is new.

use std::sync::Arc;

use futures_util::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use scylla::value::Counter;

use super::{
    BucketEvents, Checkpoint, DeadLetter, LateStats, Layout, Lease, NewEvent, Store, StoreError,
    StoredStory,
};
use crate::model::{BucketStart, Event, ShardId, Story, TenantId, TimestampMs};

const BACKEND: &str = "scylla";
const DAY_MS: i64 = 86_400_000;
/// Tables whose rows expire with the retention (their TTL).
const RETAINED_TABLES: &[&str] = &["events", "buckets", "story_feed"];

/// Partition width of `story_feed`.
const MINUTE_MS: i64 = 60_000;

/// Bytes of plugin state per `shard_state` row: far below the mutation limit, and large enough
/// that a 50 MB state is 50 rows.
const STATE_CHUNK: usize = 1 << 20;

/// State chunks written at a time by one commit.
const STATE_WRITES_IN_FLIGHT: usize = 4;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend { backend: BACKEND, message: e.to_string() }
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { backend: BACKEND, what, message: e.to_string() }
}

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Replication of new keyspaces, as CQL. Default
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
    pub replication: String,
    /// Consistency of reads and writes. Default `LOCAL_QUORUM`.
    pub consistency: Consistency,
    /// Retention of events: the TTL of `events`, `buckets` and `story_feed`. `None`: as the
    /// tables have it, 7 days for new ones. Given, it is applied to existing tables too.
    pub retention_secs: Option<i64>,
    /// Rows per page when reading a partition. Default 5 000.
    pub page_size: i32,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            consistency: Consistency::LocalQuorum,
            retention_secs: None,
            page_size: 5000,
        }
    }
}

/// The retention of new tables when none is given: 7 days.
pub const DEFAULT_RETENTION_SECS: i64 = 7 * 24 * 3600;

impl ScyllaConfig {
    /// The retention in seconds: the one given, else [`DEFAULT_RETENTION_SECS`].
    pub fn retention_secs(&self) -> i64 {
        self.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS)
    }
}

/// The keyspace of a tenant: `storyline_` and the tenant with `-` as `_`.
pub fn keyspace(tenant: &TenantId) -> String {
    format!("storyline_{}", tenant.as_str().replace('-', "_"))
}

/// The CQL that creates a tenant's keyspace and tables. `scylla` adds the options only
/// ScyllaDB understands.
pub fn schema_cql(tenant: &TenantId, config: &ScyllaConfig, scylla: bool) -> Vec<String> {
    let ks = keyspace(tenant);
    let ttl = config.retention_secs();
    // Insert-only tables with a TTL: expired cells are the only tombstones (see module docs).
    let queue_options = format!(
        "compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}} \
         AND default_time_to_live = {ttl} AND gc_grace_seconds = 10800{}",
        if scylla { " AND tombstone_gc = {'mode': 'immediate'}" } else { "" }
    );
    vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", config.replication),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.events (shard int, bucket bigint, event_id text, source text, kind text, \
             event_time bigint, insert_time bigint, attributes frozen<list<tuple<text, text>>>, payload blob, \
             PRIMARY KEY ((shard, bucket), event_id)) WITH {queue_options}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.buckets (shard int, day bigint, bucket bigint, \
             PRIMARY KEY ((shard, day), bucket)) WITH {queue_options}"
        ),
        // `state` holds the state inline as written before `shard_state` existed; read only.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.shards (shard int PRIMARY KEY, owner text, epoch bigint, expires_ms bigint, \
             bucket bigint, state blob, closed bigint, {SHARD_STATE_COLUMNS})"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.shard_state (shard int, epoch bigint, slot int, chunk int, data blob, \
             PRIMARY KEY ((shard, epoch, slot), chunk))"
        ),
        // Late writes redirected past closed buckets, per shard.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.late (shard int PRIMARY KEY, events counter, lateness_ms counter)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.stories (story_id text, revision int, kind text, event_ids list<text>, \
             first_seen bigint, last_seen bigint, fields text, published_ms bigint, \
             PRIMARY KEY (story_id, revision)) WITH CLUSTERING ORDER BY (revision DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.story_feed (minute bigint, published_ms bigint, story_id text, revision int, \
             PRIMARY KEY ((minute), published_ms, story_id, revision)) WITH default_time_to_live = {ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dead_letters (shard int, bucket bigint, plugin text, reason text, \
             attempts int, at_ms bigint, replay boolean, PRIMARY KEY (shard, bucket))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.meta (name text PRIMARY KEY, shards int, bucket_ms bigint)"
        ),
        // Worker heartbeats: plain writes (not a fencing token); rows of dead workers age out.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.workers (owner text PRIMARY KEY, expires_ms bigint) \
             WITH default_time_to_live = 3600"
        ),
    ]
}

/// The columns of `shards` that point at the committed state in `shard_state`: the epoch and
/// slot of its partition, its number of chunks and of bytes.
const SHARD_STATE_COLUMNS: &str =
    "state_epoch bigint, state_slot int, state_chunks int, state_bytes bigint";

/// A tenant's statements, prepared once (after its schema is created) by the first caller.
type PreparedOnce = Arc<OnceCell<Arc<Tenant>>>;

/// Prepared statements of one tenant.
struct Tenant {
    insert_event: PreparedStatement,
    insert_bucket: PreparedStatement,
    next_bucket: PreparedStatement,
    read_bucket: PreparedStatement,
    count_bucket: PreparedStatement,
    read_shard: PreparedStatement,
    create_shard: PreparedStatement,
    take_shard: PreparedStatement,
    renew_shard: PreparedStatement,
    commit: PreparedStatement,
    commit_with_state: PreparedStatement,
    write_state_chunk: PreparedStatement,
    read_state: PreparedStatement,
    delete_state: PreparedStatement,
    insert_story: PreparedStatement,
    latest_stories: PreparedStatement,
    all_stories: PreparedStatement,
    insert_feed: PreparedStatement,
    feed_since: PreparedStatement,
    story_at: PreparedStatement,
    insert_dead: PreparedStatement,
    all_dead: PreparedStatement,
    delete_dead: PreparedStatement,
    read_layout: PreparedStatement,
    heartbeat: PreparedStatement,
    workers: PreparedStatement,
    write_layout: PreparedStatement,
    close: PreparedStatement,
    closed_all: PreparedStatement,
    add_late: PreparedStatement,
    read_late: PreparedStatement,
}

/// The ScyllaDB (or Cassandra) store.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    config: ScyllaConfig,
    /// Whether the cluster is ScyllaDB (enables ScyllaDB-only table options).
    is_scylla: bool,
    /// Prepared statements by tenant. A std mutex: held only to look up or insert.
    tenants: Arc<std::sync::Mutex<std::collections::HashMap<TenantId, PreparedOnce>>>,
    /// Closed buckets of each tenant's shards as last read by this producer, and when.
    closed: Arc<std::sync::Mutex<std::collections::HashMap<TenantId, ClosedCache>>>,
}

/// A producer's copy of the shards' closed marks.
#[derive(Clone)]
struct ClosedCache {
    read_at: std::time::Instant,
    by_shard: std::collections::HashMap<i32, i64>,
}

/// Producers re-read the closed marks at least this often.
const CLOSED_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);
/// Workers read a bucket this long after closing it: a producer's copy of the marks is at most
/// [`CLOSED_REFRESH`] old, and a write that takes longer than the rest is re-sent (below).
const CLOSE_GRACE_MS: i64 = 2000;

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.config.nodes)
            .field("is_scylla", &self.is_scylla)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects to the cluster.
    pub async fn connect(config: ScyllaConfig) -> Result<Self, StoreError> {
        let session =
            SessionBuilder::new().known_nodes(&config.nodes).build().await.map_err(|e| {
                backend(format!(
                    "cannot connect to {}: {e} (is the node up? check the address and port)",
                    config.nodes.join(", ")
                ))
            })?;
        // system.versions exists only on ScyllaDB.
        let is_scylla =
            session.query_unpaged("SELECT version FROM system.versions", &[]).await.is_ok();
        Ok(ScyllaStore {
            session: Arc::new(session),
            config,
            is_scylla,
            tenants: Default::default(),
            closed: Default::default(),
        })
    }

    /// The configuration it connected with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// Whether the cluster is ScyllaDB rather than another CQL database.
    pub fn is_scylla(&self) -> bool {
        self.is_scylla
    }

    /// Drops a tenant's keyspace (tests).
    pub async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let ks = keyspace(tenant);
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn tenant(&self, tenant: &TenantId) -> Result<Arc<Tenant>, StoreError> {
        let cell = {
            let mut map = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(tenant.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| self.prepare_tenant(tenant)).await.cloned()
    }

    /// The TTL of each table that expires with the retention, as the cluster has it.
    pub async fn table_ttls(&self, tenant: &TenantId) -> Result<Vec<(String, i64)>, StoreError> {
        let ks = keyspace(tenant);
        let mut out = Vec::new();
        for table in RETAINED_TABLES {
            let rows = self
                .session
                .query_unpaged(
                    "SELECT default_time_to_live FROM system_schema.tables \
                     WHERE keyspace_name = ? AND table_name = ?",
                    (&ks, *table),
                )
                .await
                .map_err(backend)?
                .into_rows_result()
                .map_err(|e| corrupt("system_schema.tables", e))?;
            let (ttl,) = rows
                .maybe_first_row::<(i32,)>()
                .map_err(|e| corrupt("system_schema.tables", e))?
                .ok_or_else(|| backend(format!("table {ks}.{table} is missing")))?;
            out.push((table.to_string(), i64::from(ttl)));
        }
        Ok(out)
    }

    /// Tables are created with the retention as their TTL; a retention changed since is
    /// applied here with `ALTER TABLE`. It holds for rows written from now on: rows already
    /// written keep the TTL they were written with.
    async fn apply_retention(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let ks = keyspace(tenant);
        // Only a process given a retention changes the tables: others (a `storyline stories`
        // run without `--retention-secs`) keep what the tables have.
        let Some(want) = self.config.retention_secs else { return Ok(()) };
        for (table, ttl) in self.table_ttls(tenant).await? {
            if ttl == want {
                continue;
            }
            self.session
                .query_unpaged(
                    format!("ALTER TABLE {ks}.{table} WITH default_time_to_live = {want}"),
                    &[],
                )
                .await
                .map_err(|e| {
                    backend(format!(
                        "cannot change the TTL of {ks}.{table} from {ttl} s to the retention of \
                         {want} s: {e} (the role needs ALTER permission on the keyspace)"
                    ))
                })?;
            tracing::info!(
                %tenant,
                table = %format!("{ks}.{table}"),
                from_secs = ttl,
                to_secs = want,
                "retention changed: rows written from now on expire after the new TTL; rows already written keep theirs"
            );
        }
        self.session.await_schema_agreement().await.map_err(backend)?;
        Ok(())
    }

    /// Adds the state reference columns to a `shards` table created before they existed.
    async fn upgrade_shards_table(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let ks = keyspace(tenant);
        let rows = self
            .session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = 'shards'",
                (&ks,),
            )
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(|e| corrupt("system_schema.columns", e))?;
        let mut columns =
            rows.rows::<(String,)>().map_err(|e| corrupt("system_schema.columns", e))?;
        if columns.any(|c| c.is_ok_and(|(name,)| name == "state_chunks")) {
            return Ok(());
        }
        self.session
            .query_unpaged(format!("ALTER TABLE {ks}.shards ADD ({SHARD_STATE_COLUMNS})"), &[])
            .await
            .map_err(|e| {
                backend(format!(
                    "cannot add the state columns to {ks}.shards: {e} (the role needs ALTER \
                     permission on the keyspace)"
                ))
            })?;
        self.session.await_schema_agreement().await.map_err(backend)?;
        Ok(())
    }

    async fn prepare_tenant(&self, tenant: &TenantId) -> Result<Arc<Tenant>, StoreError> {
        for cql in schema_cql(tenant, &self.config, self.is_scylla) {
            self.session.query_unpaged(cql, &[]).await.map_err(backend)?;
        }
        self.session.await_schema_agreement().await.map_err(backend)?;
        self.upgrade_shards_table(tenant).await?;
        self.apply_retention(tenant).await?;
        let ks = keyspace(tenant);
        let c = self.config.consistency;
        let prepare = |cql: String| async move {
            let mut p = self.session.prepare(cql).await.map_err(backend)?;
            p.set_consistency(c);
            p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            p.set_page_size(self.config.page_size);
            Ok::<_, StoreError>(p)
        };
        // Reads of the LWT-written `shards` table go through Paxos too (SERIAL).
        let serial = |cql: String| async move {
            let mut p = self.session.prepare(cql).await.map_err(backend)?;
            p.set_consistency(Consistency::LocalSerial);
            Ok::<_, StoreError>(p)
        };
        Ok(Arc::new(Tenant {
            insert_event: prepare(format!(
                "INSERT INTO {ks}.events (shard, bucket, event_id, source, kind, event_time, insert_time, attributes, payload) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_bucket: prepare(format!("INSERT INTO {ks}.buckets (shard, day, bucket) VALUES (?, ?, ?)")).await?,
            next_bucket: prepare(format!(
                "SELECT bucket FROM {ks}.buckets WHERE shard = ? AND day = ? AND bucket > ? LIMIT 1"
            ))
            .await?,
            read_bucket: prepare(format!(
                "SELECT event_id, source, kind, event_time, insert_time, attributes, payload FROM {ks}.events \
                 WHERE shard = ? AND bucket = ?"
            ))
            .await?,
            count_bucket: prepare(format!("SELECT COUNT(*) FROM {ks}.events WHERE shard = ? AND bucket = ?")).await?,
            read_shard: serial(format!(
                "SELECT owner, epoch, expires_ms, bucket, state, closed, state_epoch, state_slot, state_chunks, state_bytes \
                 FROM {ks}.shards WHERE shard = ?"
            ))
            .await?,
            create_shard: prepare(format!(
                "INSERT INTO {ks}.shards (shard, owner, epoch, expires_ms) VALUES (?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            take_shard: prepare(format!(
                "UPDATE {ks}.shards SET owner = ?, epoch = ?, expires_ms = ? WHERE shard = ? IF epoch = ?"
            ))
            .await?,
            renew_shard: prepare(format!(
                "UPDATE {ks}.shards SET expires_ms = ? WHERE shard = ? IF epoch = ? AND owner = ?"
            ))
            .await?,
            commit: prepare(format!("UPDATE {ks}.shards SET bucket = ? WHERE shard = ? IF epoch = ?")).await?,
            commit_with_state: prepare(format!(
                "UPDATE {ks}.shards SET bucket = ?, state = null, state_epoch = ?, state_slot = ?, state_chunks = ?, \
                 state_bytes = ? WHERE shard = ? IF epoch = ?"
            ))
            .await?,
            write_state_chunk: prepare(format!(
                "INSERT INTO {ks}.shard_state (shard, epoch, slot, chunk, data) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            read_state: {
                let mut p = prepare(format!(
                    "SELECT chunk, data FROM {ks}.shard_state WHERE shard = ? AND epoch = ? AND slot = ? AND chunk < ?"
                ))
                .await?;
                // A few chunks per page, not `page_size` rows of a megabyte each.
                p.set_page_size(4);
                p
            },
            delete_state: prepare(format!(
                "DELETE FROM {ks}.shard_state WHERE shard = ? AND epoch = ? AND slot = ?"
            ))
            .await?,
            insert_story: prepare(format!(
                "INSERT INTO {ks}.stories (story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            latest_stories: prepare(format!(
                "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms FROM {ks}.stories \
                 PER PARTITION LIMIT 1"
            ))
            .await?,
            all_stories: prepare(format!(
                "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms FROM {ks}.stories"
            ))
            .await?,
            insert_feed: prepare(format!(
                "INSERT INTO {ks}.story_feed (minute, published_ms, story_id, revision) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            feed_since: prepare(format!(
                "SELECT story_id, revision FROM {ks}.story_feed WHERE minute = ? AND published_ms >= ?"
            ))
            .await?,
            story_at: prepare(format!(
                "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms FROM {ks}.stories \
                 WHERE story_id = ? AND revision = ?"
            ))
            .await?,
            insert_dead: prepare(format!(
                "INSERT INTO {ks}.dead_letters (shard, bucket, plugin, reason, attempts, at_ms, replay) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            all_dead: prepare(format!("SELECT shard, bucket, plugin, reason, attempts, at_ms, replay FROM {ks}.dead_letters")).await?,
            delete_dead: prepare(format!("DELETE FROM {ks}.dead_letters WHERE shard = ? AND bucket = ?")).await?,
            heartbeat: prepare(format!("INSERT INTO {ks}.workers (owner, expires_ms) VALUES (?, ?)")).await?,
            workers: prepare(format!("SELECT owner, expires_ms FROM {ks}.workers")).await?,
            read_layout: prepare(format!("SELECT shards, bucket_ms FROM {ks}.meta WHERE name = 'layout'")).await?,
            write_layout: prepare(format!(
                "INSERT INTO {ks}.meta (name, shards, bucket_ms) VALUES ('layout', ?, ?) IF NOT EXISTS"
            ))
            .await?,
            // The closed mark lives in the LWT-only shard row, fenced by the epoch like commits.
            close: prepare(format!("UPDATE {ks}.shards SET closed = ? WHERE shard = ? IF epoch = ?")).await?,
            closed_all: prepare(format!("SELECT shard, closed FROM {ks}.shards")).await?,
            add_late: prepare(format!(
                "UPDATE {ks}.late SET events = events + ?, lateness_ms = lateness_ms + ? WHERE shard = ?"
            ))
            .await?,
            read_late: prepare(format!("SELECT events, lateness_ms FROM {ks}.late WHERE shard = ?")).await?,
        }))
    }

    /// Runs an LWT and tells whether it was applied. Rejected LWTs return the current values
    /// too, whose columns differ between ScyllaDB and Cassandra: only column 0 is read.
    async fn lwt(
        &self,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<bool, StoreError> {
        let result = self.session.execute_unpaged(stmt, values).await.map_err(backend)?;
        let rows = result.into_rows_result().map_err(backend)?;
        let row = rows.first_row::<scylla::value::Row>().map_err(backend)?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(corrupt("shards", format!("unexpected LWT result {other:?}"))),
        }
    }

    async fn shard_row(&self, t: &Tenant, shard: ShardId) -> Result<Option<ShardRow>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&t.read_shard, (shard.0 as i32,))
            .await
            .map_err(backend)?;
        let rows = result.into_rows_result().map_err(backend)?;
        let row = rows.maybe_first_row::<ShardColumns>().map_err(|e| corrupt("shards", e))?;
        Ok(row.map(
            |(owner, epoch, expires_ms, bucket, inline, closed, se, slot, chunks, bytes)| {
                let state = match (se, slot, chunks, bytes) {
                    (Some(epoch), Some(slot), Some(chunks), Some(bytes)) => {
                        StateRef::Chunks { epoch, slot, chunks, bytes }
                    }
                    _ => StateRef::Inline(inline.unwrap_or_default()),
                };
                ShardRow {
                    owner: owner.unwrap_or_default(),
                    epoch: epoch.unwrap_or(0),
                    expires_ms: expires_ms.unwrap_or(i64::MIN),
                    bucket,
                    state,
                    closed,
                }
            },
        ))
    }

    /// The committed state a shard row points at.
    async fn read_state(
        &self,
        t: &Tenant,
        shard: ShardId,
        state: StateRef,
    ) -> Result<Vec<u8>, StoreError> {
        let (epoch, slot, chunks, bytes) = match state {
            StateRef::Inline(bytes) => return Ok(bytes),
            StateRef::Chunks { epoch, slot, chunks, bytes } => (epoch, slot, chunks, bytes),
        };
        let incomplete = |got: String| {
            corrupt(
                "shard_state",
                format!(
                    "the state of shard {shard} (epoch {epoch}, slot {slot}) should be {chunks} \
                     chunks and {bytes} bytes; {got}. Were its chunks deleted, or written at a \
                     weaker consistency than they are read?"
                ),
            )
        };
        let mut out = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
        let pager = self
            .session
            .execute_iter(t.read_state.clone(), (shard.0 as i32, epoch, slot, chunks))
            .await
            .map_err(backend)?;
        let mut rows =
            pager.rows_stream::<(i32, Vec<u8>)>().map_err(|e| corrupt("shard_state", e))?;
        let mut next = 0;
        while let Some(row) = rows.next().await {
            let (chunk, data) = row.map_err(backend)?;
            if chunk != next {
                return Err(incomplete(format!("chunk {next} is missing")));
            }
            out.extend_from_slice(&data);
            next += 1;
        }
        if next != chunks || out.len() as i64 != bytes {
            return Err(incomplete(format!("found {next} chunks and {} bytes", out.len())));
        }
        Ok(out)
    }

    /// Writes `state` into slot `slot` of `epoch`, chunk by chunk, a few at a time.
    async fn write_state(
        &self,
        t: &Tenant,
        shard: ShardId,
        epoch: i64,
        slot: i32,
        state: &[u8],
    ) -> Result<i32, StoreError> {
        let failed = |e: scylla::errors::ExecutionError| {
            backend(format!("writing the plugin state of shard {shard} failed: {e}"))
        };
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        // Typed here: the first use of the results comes before the first push.
        let settle = |result: Result<scylla::response::query_result::QueryResult, _>| {
            result.map(drop).map_err(failed)
        };
        for (i, data) in state.chunks(STATE_CHUNK).enumerate() {
            if in_flight.len() >= STATE_WRITES_IN_FLIGHT
                && let Some(result) = in_flight.next().await
            {
                settle(result)?;
            }
            let values = (shard.0 as i32, epoch, slot, i as i32, data);
            in_flight.push(self.session.execute_unpaged(&t.write_state_chunk, values));
        }
        while let Some(result) = in_flight.next().await {
            settle(result)?;
        }
        Ok(state.len().div_ceil(STATE_CHUNK) as i32)
    }

    /// Deletes a slot's chunks. Garbage collection: a failure is logged, and the slot stays.
    async fn delete_state(
        &self,
        t: &Tenant,
        tenant: &TenantId,
        shard: ShardId,
        epoch: i64,
        slot: i32,
    ) {
        let result =
            self.session.execute_unpaged(&t.delete_state, (shard.0 as i32, epoch, slot)).await;
        if let Err(e) = result {
            tracing::warn!(
                %tenant,
                shard = shard.0,
                epoch,
                slot,
                error = %e,
                "an unused plugin state was not deleted from shard_state; it only takes space"
            );
        }
    }

    /// The error of a transaction refused because the lease moved on.
    async fn fenced(&self, t: &Tenant, tenant: &TenantId, lease: &Lease) -> StoreError {
        match self.shard_row(t, lease.shard).await {
            Ok(row) => StoreError::Fenced {
                tenant: tenant.clone(),
                shard: lease.shard,
                held: lease.epoch,
                current: row.map_or(0, |r| r.epoch as u64),
            },
            Err(e) => e,
        }
    }

    /// The closed marks of a tenant's shards, re-read when the copy is older than
    /// [`CLOSED_REFRESH`] (or when `fresh`).
    async fn closed_marks(
        &self,
        tenant: &TenantId,
        t: &Tenant,
        fresh: bool,
    ) -> Result<ClosedCache, StoreError> {
        if !fresh {
            let cache = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(tenant).filter(|c| c.read_at.elapsed() < CLOSED_REFRESH) {
                return Ok(c.clone());
            }
        }
        let read_at = std::time::Instant::now();
        let result = self.session.execute_unpaged(&t.closed_all, &[]).await.map_err(backend)?;
        let rows = result.into_rows_result().map_err(backend)?;
        let mut by_shard = std::collections::HashMap::new();
        for row in rows.rows::<(i32, Option<i64>)>().map_err(|e| corrupt("shards", e))? {
            let (shard, closed) = row.map_err(|e| corrupt("shards", e))?;
            if let Some(c) = closed {
                by_shard.insert(shard, c);
            }
        }
        let cache = ClosedCache { read_at, by_shard };
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.clone(), cache.clone());
        Ok(cache)
    }

    /// Writes events into their partitions (index first), each to `bucket_of(event)`.
    async fn write_events(
        &self,
        t: &Tenant,
        events: &[NewEvent],
        bucket_of: impl Fn(usize) -> BucketStart,
    ) -> Result<(), StoreError> {
        // 1. The index first: an indexed bucket without events is read as empty; events
        //    without an index entry would never be read.
        let mut partitions: Vec<(ShardId, BucketStart)> =
            events.iter().enumerate().map(|(i, e)| (e.shard, bucket_of(i))).collect();
        partitions.sort();
        partitions.dedup();
        let index = partitions.iter().map(|(shard, bucket)| {
            self.session.execute_unpaged(
                &t.insert_bucket,
                (shard.0 as i32, bucket.0.div_euclid(DAY_MS), bucket.0),
            )
        });
        for r in futures_util::future::join_all(index).await {
            r.map_err(backend)?;
        }
        // 2. One unlogged batch per partition (a single-partition batch is applied atomically
        //    by the replica that owns it), all partitions concurrently. A retry of the same
        //    events rewrites the same rows: appends are idempotent.
        let mut writes = Vec::new();
        for (shard, bucket) in &partitions {
            let rows: Vec<_> = events
                .iter()
                .enumerate()
                .filter(|(i, e)| e.shard == *shard && bucket_of(*i) == *bucket)
                .map(|(_, e)| {
                    (
                        shard.0 as i32,
                        bucket.0,
                        e.event.id.as_str(),
                        e.event.source.as_str(),
                        e.event.kind.as_str(),
                        e.event.event_time,
                        e.event.insert_time,
                        &e.event.attributes,
                        e.event.payload.as_slice(),
                    )
                })
                .collect();
            for chunk in rows.chunks(500) {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in chunk {
                    batch.append_statement(t.insert_event.clone());
                }
                batch.set_consistency(self.config.consistency);
                let values = chunk.to_vec();
                let session = self.session.clone();
                writes.push(async move { session.batch(&batch, values).await });
            }
        }
        for r in futures_util::future::join_all(writes).await {
            r.map_err(backend)?;
        }
        Ok(())
    }

    /// Where each event goes given the closed marks: its bucket, or the first open one.
    fn targets(events: &[NewEvent], marks: &ClosedCache, bucket_ms: i64) -> Vec<BucketStart> {
        events
            .iter()
            .map(|e| match marks.by_shard.get(&(e.shard.0 as i32)) {
                Some(&c) if e.bucket.0 <= c => BucketStart(c + bucket_ms),
                _ => e.bucket,
            })
            .collect()
    }

    /// Counts late events per shard.
    async fn count_late(
        &self,
        t: &Tenant,
        events: &[NewEvent],
        targets: &[BucketStart],
    ) -> Result<(), StoreError> {
        let mut per_shard: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
        for (e, to) in events.iter().zip(targets).filter(|(e, to)| e.bucket != **to) {
            let entry = per_shard.entry(e.shard.0 as i32).or_default();
            entry.0 += 1;
            entry.1 += to.0 - e.bucket.0;
        }
        for (shard, (n, lateness)) in per_shard {
            tracing::warn!(
                shard,
                events = n,
                "late write: events for buckets this shard already closed were moved to its first open bucket"
            );
            self.session
                .execute_unpaged(&t.add_late, (Counter(n), Counter(lateness), shard))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn first_bucket_of_day(
        &self,
        t: &Tenant,
        shard: ShardId,
        day: i64,
        after: i64,
    ) -> Result<Option<i64>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&t.next_bucket, (shard.0 as i32, day, after))
            .await
            .map_err(backend)?;
        let rows = result.into_rows_result().map_err(backend)?;
        Ok(rows.maybe_first_row::<(i64,)>().map_err(|e| corrupt("buckets", e))?.map(|(b,)| b))
    }
}

/// owner, epoch, expires_ms, bucket, state, closed, state_epoch, state_slot, state_chunks,
/// state_bytes.
type ShardColumns = (
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<i32>,
    Option<i64>,
);

/// A shard's row in `shards`.
struct ShardRow {
    /// Who holds the lease.
    owner: String,
    /// The lease epoch: the fencing token.
    epoch: i64,
    /// When the lease lapses, epoch ms.
    expires_ms: i64,
    /// The committed offset.
    bucket: Option<i64>,
    /// Where the committed state is.
    state: StateRef,
    /// The shard's buckets up to this one are closed for writing.
    closed: Option<i64>,
}

/// Where a shard's committed plugin state is.
enum StateRef {
    /// In the row itself (as written before `shard_state` existed; empty when none).
    Inline(Vec<u8>),
    /// In `shard_state`, partition `(shard, epoch, slot)`, chunks `0..chunks`.
    Chunks { epoch: i64, slot: i32, chunks: i32, bytes: i64 },
}

type StoryRow = (String, i32, String, Vec<String>, i64, i64, String, i64);

fn story_from_row(row: StoryRow) -> Result<StoredStory, StoreError> {
    let (id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms) = row;
    Ok(StoredStory {
        story: Story {
            id,
            revision: revision as u32,
            kind,
            event_ids,
            first_seen,
            last_seen,
            fields: RawValue::from_string(fields).map_err(|e| corrupt("stories", e))?,
        },
        published_ms,
    })
}

impl Store for ScyllaStore {
    async fn layout(&self, tenant: &TenantId) -> Result<Option<Layout>, StoreError> {
        let t = self.tenant(tenant).await?;
        let rows = self.session.execute_unpaged(&t.read_layout, ()).await.map_err(backend)?;
        let rows = rows.into_rows_result().map_err(backend)?;
        Ok(rows
            .maybe_first_row::<(i32, i64)>()
            .map_err(|e| corrupt("meta", e))?
            .map(|(shards, bucket_ms)| Layout { shards: shards as u32, bucket_ms }))
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
        if let Some(e) = events.iter().find(|e| e.shard.0 >= layout.shards) {
            return Err(StoreError::shard_out_of_range(tenant, e.shard, layout));
        }
        let t = self.tenant(tenant).await?;
        // The layout is written once (LWT IF NOT EXISTS; a racing producer's may win) and
        // compared on every append.
        let existing = match self.layout(tenant).await? {
            Some(l) => l,
            None => {
                self.lwt(&t.write_layout, (layout.shards as i32, layout.bucket_ms)).await?;
                self.layout(tenant)
                    .await?
                    .ok_or_else(|| corrupt("meta", "layout missing after write"))?
            }
        };
        if existing != layout {
            return Err(StoreError::layout_mismatch(tenant, existing, layout));
        }
        // Events for buckets a worker closed go to the first open bucket of their shard.
        let marks = self.closed_marks(tenant, &t, false).await?;
        let targets = Self::targets(events, &marks, layout.bucket_ms);
        self.count_late(&t, events, &targets).await?;
        self.write_events(&t, events, |i| targets[i]).await?;
        // A write slower than the grace may have landed after a worker read its bucket: send
        // again whatever is behind the marks now (a worker may then see an event twice; it
        // never misses one).
        if marks.read_at.elapsed().as_millis() as i64
            >= CLOSE_GRACE_MS - CLOSED_REFRESH.as_millis() as i64
        {
            let fresh = self.closed_marks(tenant, &t, true).await?;
            let again: Vec<usize> = (0..events.len())
                .filter(|&i| {
                    fresh
                        .by_shard
                        .get(&(events[i].shard.0 as i32))
                        .is_some_and(|&c| targets[i].0 <= c)
                })
                .collect();
            if !again.is_empty() {
                tracing::warn!(
                    events = again.len(),
                    "a slow write may have missed its bucket; writing it again to the first open bucket"
                );
                let late: Vec<NewEvent> = again.iter().map(|&i| events[i].clone()).collect();
                let retargets = Self::targets(&late, &fresh, layout.bucket_ms);
                self.count_late(&t, &late, &retargets).await?;
                self.write_events(&t, &late, |i| retargets[i]).await?;
            }
        }
        Ok(())
    }

    async fn next_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> Result<Option<BucketStart>, StoreError> {
        let t = self.tenant(tenant).await?;
        let now_day = crate::producer::now_ms().div_euclid(DAY_MS) + 1;
        let (mut day, after) = match after {
            Some(b) => (b.0.div_euclid(DAY_MS), b.0),
            // From the start: the oldest data is at most the retention old.
            None => (
                (crate::producer::now_ms() - self.config.retention_secs() * 1000)
                    .div_euclid(DAY_MS),
                i64::MIN,
            ),
        };
        // One query per day partition: empty seconds cost nothing, empty days one query.
        while day <= now_day {
            if let Some(b) = self.first_bucket_of_day(&t, shard, day, after).await? {
                return Ok(Some(BucketStart(b)));
            }
            day += 1;
        }
        Ok(None)
    }

    async fn close_buckets(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        to: BucketStart,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        if self.closed_until(tenant, lease.shard).await?.is_some_and(|c| c >= to) {
            return Ok(());
        }
        if self.lwt(&t.close, (to.0, lease.shard.0 as i32, lease.epoch as i64)).await? {
            return Ok(());
        }
        Err(self.fenced(&t, tenant, lease).await)
    }

    async fn closed_until(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<BucketStart>, StoreError> {
        let t = self.tenant(tenant).await?;
        Ok(self.shard_row(&t, shard).await?.and_then(|r| r.closed).map(BucketStart))
    }

    fn close_grace_ms(&self) -> i64 {
        CLOSE_GRACE_MS
    }

    fn retention_ms(&self) -> Option<i64> {
        Some(self.config.retention_secs() * 1000)
    }

    async fn late_stats(&self, tenant: &TenantId, shard: ShardId) -> Result<LateStats, StoreError> {
        let t = self.tenant(tenant).await?;
        let result =
            self.session.execute_unpaged(&t.read_late, (shard.0 as i32,)).await.map_err(backend)?;
        let row = result
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<Counter>, Option<Counter>)>()
            .map_err(|e| corrupt("late", e))?;
        Ok(row.map_or(LateStats::default(), |(events, lateness)| LateStats {
            events: events.map_or(0, |c| c.0.max(0) as u64),
            lateness_ms: lateness.map_or(0, |c| c.0.max(0) as u64),
        }))
    }

    async fn read_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> Result<BucketEvents, StoreError> {
        let t = self.tenant(tenant).await?;
        let pager = self
            .session
            .execute_iter(t.read_bucket.clone(), (shard.0 as i32, bucket.0))
            .await
            .map_err(backend)?;
        let mut rows = pager
            .rows_stream::<(String, String, String, i64, i64, Option<Vec<(String, String)>>, Option<Vec<u8>>)>()
            .map_err(|e| corrupt("events", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (id, source, kind, event_time, insert_time, attributes, payload) =
                row.map_err(backend)?;
            out.push(Event {
                id,
                source,
                kind,
                event_time,
                insert_time,
                attributes: attributes.unwrap_or_default(),
                payload: payload.unwrap_or_default(),
            });
        }
        Ok(out.into())
    }

    async fn pending_events(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> Result<u64, StoreError> {
        // Status only: walks the index and counts each pending partition.
        let t = self.tenant(tenant).await?;
        let mut total = 0u64;
        let mut cursor = after;
        while let Some(b) = self.next_bucket(tenant, shard, cursor).await? {
            let r = self
                .session
                .execute_unpaged(&t.count_bucket, (shard.0 as i32, b.0))
                .await
                .map_err(backend)?;
            let (n,): (i64,) = r
                .into_rows_result()
                .map_err(backend)?
                .first_row()
                .map_err(|e| corrupt("events", e))?;
            total += n as u64;
            cursor = Some(b);
        }
        Ok(total)
    }

    async fn committed_offset(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<BucketStart>, StoreError> {
        let t = self.tenant(tenant).await?;
        Ok(self.shard_row(&t, shard).await?.and_then(|row| row.bucket).map(BucketStart))
    }

    async fn load_checkpoint(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let t = self.tenant(tenant).await?;
        let Some(row) = self.shard_row(&t, shard).await? else { return Ok(None) };
        let Some(bucket) = row.bucket else { return Ok(None) };
        let state = self.read_state(&t, shard, row.state).await?;
        Ok(Some(Checkpoint { bucket: BucketStart(bucket), state, epoch: row.epoch as u64 }))
    }

    async fn commit(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        bucket: BucketStart,
        state: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        let shard = lease.shard.0 as i32;
        let epoch = lease.epoch as i64;
        let Some(state) = state else {
            if self.lwt(&t.commit, (bucket.0, shard, epoch)).await? {
                return Ok(());
            }
            return Err(self.fenced(&t, tenant, lease).await);
        };
        // The state goes where the row does not point: this epoch's other slot, or slot 0 of a
        // new epoch. A lease lost already is not worth the writes.
        let current = self.shard_row(&t, lease.shard).await?;
        let previous = match current {
            Some(row) if row.epoch == epoch => row.state,
            _ => return Err(self.fenced(&t, tenant, lease).await),
        };
        let slot = match previous {
            StateRef::Chunks { epoch: e, slot, .. } if e == epoch => 1 - slot,
            _ => 0,
        };
        let chunks = self.write_state(&t, lease.shard, epoch, slot, state).await?;
        let bytes = state.len() as i64;
        let values = (bucket.0, epoch, slot, chunks, bytes, shard, epoch);
        if !self.lwt(&t.commit_with_state, values).await? {
            self.delete_state(&t, tenant, lease.shard, epoch, slot).await;
            return Err(self.fenced(&t, tenant, lease).await);
        }
        // The previous owner's slots are unused from now on.
        if let StateRef::Chunks { epoch: e, .. } = previous
            && e != epoch
        {
            for slot in [0, 1] {
                self.delete_state(&t, tenant, lease.shard, e, slot).await;
            }
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<Option<Lease>, StoreError> {
        let t = self.tenant(tenant).await?;
        let expires_ms = now + ttl_ms;
        match self.shard_row(&t, shard).await? {
            None => {
                let applied =
                    self.lwt(&t.create_shard, (shard.0 as i32, owner, 1i64, expires_ms)).await?;
                Ok(applied.then(|| Lease { shard, owner: owner.to_string(), epoch: 1, expires_ms }))
            }
            Some(row) => {
                let epoch = if row.owner == owner {
                    row.epoch
                } else if row.expires_ms > now {
                    return Ok(None);
                } else {
                    row.epoch + 1
                };
                // Compare-and-set on the epoch read: two workers racing for an expired lease
                // cannot both win.
                let applied = self
                    .lwt(&t.take_shard, (owner, epoch, expires_ms, shard.0 as i32, row.epoch))
                    .await?;
                Ok(applied.then(|| Lease {
                    shard,
                    owner: owner.to_string(),
                    epoch: epoch as u64,
                    expires_ms,
                }))
            }
        }
    }

    async fn renew_lease(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<Option<Lease>, StoreError> {
        let t = self.tenant(tenant).await?;
        let expires_ms = now + ttl_ms;
        let applied = self
            .lwt(
                &t.renew_shard,
                (expires_ms, lease.shard.0 as i32, lease.epoch as i64, lease.owner.as_str()),
            )
            .await?;
        Ok(applied.then(|| Lease { expires_ms, ..lease.clone() }))
    }

    async fn release_lease(&self, tenant: &TenantId, lease: &Lease) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.lwt(
            &t.renew_shard,
            (i64::MIN, lease.shard.0 as i32, lease.epoch as i64, lease.owner.as_str()),
        )
        .await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        tenant: &TenantId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.session.execute_unpaged(&t.heartbeat, (owner, now + ttl_ms)).await.map_err(backend)?;
        Ok(())
    }

    async fn live_workers(
        &self,
        tenant: &TenantId,
        now: TimestampMs,
    ) -> Result<Vec<String>, StoreError> {
        let t = self.tenant(tenant).await?;
        let pager = self.session.execute_iter(t.workers.clone(), ()).await.map_err(backend)?;
        let mut rows = pager.rows_stream::<(String, i64)>().map_err(|e| corrupt("workers", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (owner, expires_ms) = row.map_err(backend)?;
            if expires_ms > now {
                out.push(owner);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn lease(&self, tenant: &TenantId, shard: ShardId) -> Result<Option<Lease>, StoreError> {
        let t = self.tenant(tenant).await?;
        Ok(self.shard_row(&t, shard).await?.map(|r| Lease {
            shard,
            owner: r.owner,
            epoch: r.epoch as u64,
            expires_ms: r.expires_ms,
        }))
    }

    async fn publish(
        &self,
        tenant: &TenantId,
        stories: &[Story],
        now: TimestampMs,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        let writes = stories.iter().map(|s| {
            self.session.execute_unpaged(
                &t.insert_story,
                (
                    s.id.as_str(),
                    s.revision as i32,
                    s.kind.as_str(),
                    &s.event_ids,
                    s.first_seen,
                    s.last_seen,
                    s.fields.get(),
                    now,
                ),
            )
        });
        for r in futures_util::future::join_all(writes).await {
            r.map_err(backend)?;
        }
        // The feed entry after the story: a follower that sees it can read the story.
        let minute = now.div_euclid(MINUTE_MS);
        let feed = stories.iter().map(|s| {
            self.session
                .execute_unpaged(&t.insert_feed, (minute, now, s.id.as_str(), s.revision as i32))
        });
        for r in futures_util::future::join_all(feed).await {
            r.map_err(backend)?;
        }
        Ok(())
    }

    async fn stories_since(
        &self,
        tenant: &TenantId,
        since_ms: TimestampMs,
    ) -> Result<Vec<StoredStory>, StoreError> {
        let t = self.tenant(tenant).await?;
        // Nothing older than the retention is left; a worker's clock may run a little ahead.
        let now = crate::producer::now_ms();
        let from = since_ms.max(now - self.config.retention_secs() * 1000).div_euclid(MINUTE_MS);
        let mut keys: Vec<(String, i32)> = Vec::new();
        for minute in from..=(now + MINUTE_MS).div_euclid(MINUTE_MS) {
            let pager = self
                .session
                .execute_iter(t.feed_since.clone(), (minute, since_ms))
                .await
                .map_err(backend)?;
            let mut rows =
                pager.rows_stream::<(String, i32)>().map_err(|e| corrupt("story_feed", e))?;
            while let Some(row) = rows.next().await {
                keys.push(row.map_err(backend)?);
            }
        }
        let reads = keys.iter().map(|(id, revision)| {
            self.session.execute_unpaged(&t.story_at, (id.as_str(), *revision))
        });
        let mut out = Vec::with_capacity(keys.len());
        for r in futures_util::future::join_all(reads).await {
            let rows = r.map_err(backend)?.into_rows_result().map_err(|e| corrupt("stories", e))?;
            for row in rows.rows::<StoryRow>().map_err(|e| corrupt("stories", e))? {
                out.push(story_from_row(row.map_err(|e| corrupt("stories", e))?)?);
            }
        }
        // A revision published again has its latest time in `stories`.
        out.sort_by_key(|s| s.published_ms);
        Ok(out)
    }

    async fn stories(
        &self,
        tenant: &TenantId,
        all_revisions: bool,
    ) -> Result<Vec<StoredStory>, StoreError> {
        let t = self.tenant(tenant).await?;
        let stmt = if all_revisions { &t.all_stories } else { &t.latest_stories };
        let pager = self.session.execute_iter(stmt.clone(), ()).await.map_err(backend)?;
        let mut rows = pager.rows_stream::<StoryRow>().map_err(|e| corrupt("stories", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            out.push(story_from_row(row.map_err(backend)?)?);
        }
        out.sort_by(|a, b| {
            a.story.id.cmp(&b.story.id).then(a.story.revision.cmp(&b.story.revision))
        });
        Ok(out)
    }

    async fn put_dead_letter(&self, tenant: &TenantId, l: &DeadLetter) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.session
            .execute_unpaged(
                &t.insert_dead,
                (
                    l.shard.0 as i32,
                    l.bucket.0,
                    l.plugin.as_str(),
                    l.reason.as_str(),
                    l.attempts as i32,
                    l.at_ms,
                    l.replay,
                ),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_dead_letter(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.session
            .execute_unpaged(&t.delete_dead, (shard.0 as i32, bucket.0))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn dead_letters(&self, tenant: &TenantId) -> Result<Vec<DeadLetter>, StoreError> {
        let t = self.tenant(tenant).await?;
        let pager = self.session.execute_iter(t.all_dead.clone(), ()).await.map_err(backend)?;
        let mut rows = pager
            .rows_stream::<(i32, i64, String, String, i32, i64, Option<bool>)>()
            .map_err(|e| corrupt("dead_letters", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (shard, bucket, plugin, reason, attempts, at_ms, replay) = row.map_err(backend)?;
            out.push(DeadLetter {
                shard: ShardId(shard as u32),
                bucket: BucketStart(bucket),
                plugin,
                reason,
                attempts: attempts as u32,
                at_ms,
                replay: replay.unwrap_or(false),
            });
        }
        out.sort_by_key(|d| (d.shard, d.bucket));
        Ok(out)
    }
}
