//! The ScyllaDB store, through the `scylla` driver: a keyspace per tenant, or tables shared by
//! every tenant with the tenant in each partition key ([`Tables`]; see `tables.rs`). Also runs
//! on other CQL clusters (Apache Cassandra 4+): options only ScyllaDB understands are applied
//! only when the node says it is ScyllaDB.
//!
//! Tables of a tenant's keyspace (see [`schema_cql`] for the exact CQL, printed by `storyline
//! schema`; the shared tables are the same with `tenant` first in each partition key):
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
//!
//! # Requests
//!
//! Every request goes through one gate per store ([`ScyllaConfig::max_in_flight`] permits,
//! shared by every caller and clone): a connection has 32,768 stream ids, and the driver opens
//! one connection per node (per shard on ScyllaDB), so a publish of 50,000 stories sent at once
//! ran out of them and lost writes. A request that fails transiently (a timeout, an overloaded
//! or unavailable node, a broken connection, no free stream id) is sent again after a growing
//! wait, up to [`ScyllaConfig::retries`] times; one that may have been applied is sent again
//! only if applying it twice changes nothing, which holds for every statement here but the
//! `late` counters.
//!
//! # Tablets
//!
//! ScyllaDB 6.0 replaced vnodes with tablets for new keyspaces, but refuses counters (`late`)
//! on tablets before 2026.1 and lightweight transactions (`shards`, `meta`) before 2025.4. The
//! keyspace is created with `tablets = {'enabled': false}` where that is needed, decided from
//! the server's version ([`Tablets::for_scylla_version`]); Cassandra never gets the option.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    ConnectionPoolError, DbError, ExecutionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError, RequestError,
};
use scylla::response::query_result::QueryResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::{Consistency, SerialConsistency};
use serde_json::value::RawValue;
use tokio::sync::{OnceCell, Semaphore};

use scylla::value::Counter;

use super::{
    BucketEvents, Checkpoint, DeadLetter, LateStats, Layout, Lease, NewEvent, Store, StoreError,
    StoredStory,
};
use crate::model::{BucketStart, Event, ShardId, Story, TenantId, TimestampMs};

mod tables;

use tables::{Key, Names, Statement, Stmt, shared_schema_cql, template};
pub use tables::{SHARED_KEYSPACE, STORY_SLOTS, Tables, story_slot};

const BACKEND: &str = "scylla";
const DAY_MS: i64 = 86_400_000;
/// Tables whose rows expire with the retention (their TTL).
const RETAINED_TABLES: &[&str] = &["events", "buckets", "story_feed"];

/// Every table of the store, in both layouts.
const TABLES: &[&str] = &[
    "events",
    "buckets",
    "shards",
    "shard_state",
    "late",
    "stories",
    "story_feed",
    "dead_letters",
    "meta",
    "workers",
];

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

/// `e` with the message of a backend error rewritten by `context`; other errors as they are.
fn in_context(e: StoreError, context: impl FnOnce(&str) -> String) -> StoreError {
    match e {
        StoreError::Backend { backend, message } => {
            StoreError::Backend { backend, message: context(&message) }
        }
        other => other,
    }
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
    /// Where tenants' rows live: a keyspace each (default), or shared tables.
    pub tables: Tables,
    /// Retention of events: the TTL of `events`, `buckets` and `story_feed`. `None`: as the
    /// tables have it, 7 days for new ones. Given, it is applied to existing tables too.
    pub retention_secs: Option<i64>,
    /// Tenants' own retentions, seconds, by tenant name (over `retention_secs`).
    pub tenant_retention_secs: std::collections::HashMap<String, i64>,
    /// Rows per page when reading a partition. Default 5 000.
    pub page_size: i32,
    /// Requests this store has in flight at most, all its callers and clones together (a
    /// publish, a follow, every shard's reads and commits). Far below the 32,768 stream ids of
    /// a connection, and enough to keep a node busy. Default 256.
    pub max_in_flight: usize,
    /// Times a request that failed transiently (a timeout, an overloaded or unavailable node, a
    /// broken connection, no free stream id) is sent again before its error is returned.
    /// Default 6: with the default backoff, about 6 s of waiting in all.
    pub retries: u32,
    /// Wait before the first retry; it doubles at each retry up to 5 s, shortened by up to half
    /// at random so that requests that failed together are not sent again together. Default
    /// 100 ms.
    pub retry_backoff: Duration,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            consistency: Consistency::LocalQuorum,
            tables: Tables::KeyspacePerTenant,
            retention_secs: None,
            tenant_retention_secs: Default::default(),
            page_size: 5000,
            max_in_flight: 256,
            retries: 6,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// The retention of new tables when none is given: 7 days.
pub const DEFAULT_RETENTION_SECS: i64 = 7 * 24 * 3600;

impl ScyllaConfig {
    /// The retention of `tenant` as given: its own, else the one for every tenant.
    pub fn given_retention_of(&self, tenant: &TenantId) -> Option<i64> {
        self.tenant_retention_secs.get(tenant.as_str()).copied().or(self.retention_secs)
    }

    /// The retention of `tenant` in seconds: as given, else [`DEFAULT_RETENTION_SECS`].
    pub fn retention_secs_of(&self, tenant: &TenantId) -> i64 {
        self.given_retention_of(tenant).unwrap_or(DEFAULT_RETENTION_SECS)
    }

    /// The retention in seconds: the one given, else [`DEFAULT_RETENTION_SECS`].
    pub fn retention_secs(&self) -> i64 {
        self.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS)
    }
}

/// The keyspace of a tenant: `storyline_` and the tenant with `-` as `_`.
pub fn keyspace(tenant: &TenantId) -> String {
    format!("storyline_{}", tenant.as_str().replace('-', "_"))
}

/// The CQL database the store is connected to, as far as the schema depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// ScyllaDB, with its version as `system.versions` gives it (`6.0.1-0.20240612.bf0f4a6`).
    Scylla {
        /// The version; empty when the node did not say.
        version: String,
    },
    /// Apache Cassandra, or another CQL database that is not ScyllaDB: standard CQL only.
    Cassandra {
        /// `release_version` of `system.local`; empty when the node did not say.
        release_version: String,
    },
}

impl Server {
    /// The CQL the schema is written in for this server.
    pub fn dialect(&self) -> Dialect {
        match self {
            Server::Scylla { version } => Dialect::Scylla(Tablets::for_scylla_version(version)),
            Server::Cassandra { .. } => Dialect::Cassandra,
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Scylla { version } => write!(f, "ScyllaDB {version}"),
            Server::Cassandra { release_version } => write!(f, "Cassandra {release_version}"),
        }
    }
}

/// Which options the schema's CQL uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Standard CQL (Apache Cassandra 4+): none of ScyllaDB's options, which it rejects.
    Cassandra,
    /// ScyllaDB's table options, and the keyspace's choice of tablets.
    Scylla(Tablets),
}

impl Dialect {
    /// The keyspace's choice of tablets.
    pub fn tablets(self) -> Tablets {
        match self {
            Dialect::Scylla(tablets) => tablets,
            Dialect::Cassandra => Tablets::NotOffered,
        }
    }
}

/// How a tenant's keyspace is created with respect to tablets, ScyllaDB's replacement for
/// vnodes (6.0 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tablets {
    /// No `tablets` option: the server has no tablets, and its CQL does not know the option
    /// (Apache Cassandra; ScyllaDB before 6.0, Enterprise before 2024.2).
    NotOffered,
    /// `AND tablets = {'enabled': false}`: ScyllaDB 6.0 – 2025.4 (Enterprise 2024.2 on), which
    /// refuses counters on tablets before 2026.1 and lightweight transactions before 2025.4.
    Disabled,
    /// No option, so the cluster's default (`tablets_mode_for_new_keyspaces`; tablets on new
    /// clusters): ScyllaDB 2026.1 on runs counters and lightweight transactions on tablets.
    ClusterDefault,
}

impl Tablets {
    /// The choice for a ScyllaDB version as `system.versions` gives it (`5.4.9-0.2024…`,
    /// `2025.4.0-0.20251217.…`, `6.3.0~dev-…`). Open-source releases are numbered 1.x – 6.x,
    /// Enterprise and later releases by year (2024.1 is based on 5.4, 2024.2 on 6.0). A version
    /// it cannot read is taken as one that needs tablets disabled, the case of every release
    /// from mid-2024 to 2025.
    ///
    /// From ScyllaDB's source: 6.0 refuses LWT on tablets (`storage_proxy::cas`) and lets
    /// counters break on them, 6.1 – 2025.4 refuse counter tables there
    /// (`create_table_statement.cc`), 2025.4 allows LWT and 2026.1 counters, each once every
    /// node has the feature (`lwt_with_tablets`, `counters_with_tablets`); the `tablets`
    /// keyspace option exists since 6.0.
    pub fn for_scylla_version(version: &str) -> Tablets {
        let Some(release) = release(version) else { return Tablets::Disabled };
        match release {
            (0..6, _) => Tablets::NotOffered,
            (6..2000, _) => Tablets::Disabled,
            v if v < (2024, 2) => Tablets::NotOffered,
            v if v < (2026, 1) => Tablets::Disabled,
            _ => Tablets::ClusterDefault,
        }
    }

    /// What `CREATE KEYSPACE` ends with: the option with its ` AND `, or nothing.
    pub fn keyspace_option(self) -> &'static str {
        match self {
            Tablets::Disabled => " AND tablets = {'enabled': false}",
            Tablets::NotOffered | Tablets::ClusterDefault => "",
        }
    }
}

/// The major and minor numbers of a ScyllaDB version (`2025.4.0-0.2025…` is 2025.4).
fn release(version: &str) -> Option<(u32, u32)> {
    let numbers = version.split(|c: char| !c.is_ascii_digit() && c != '.').next()?;
    let mut parts = numbers.split('.').map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

impl std::fmt::Display for Tablets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tablets::NotOffered => "no tablets option (the server has no tablets)",
            Tablets::Disabled => {
                "new keyspaces are created with tablets = {'enabled': false}: this ScyllaDB \
                 refuses counters on tablets (before 2026.1) and lightweight transactions \
                 (before 2025.4)"
            }
            Tablets::ClusterDefault => {
                "new keyspaces take the cluster's default for tablets: counters and lightweight \
                 transactions work on tablets since ScyllaDB 2026.1"
            }
        })
    }
}

/// The CQL `storyline schema` prints, which does not connect: for ScyllaDB (`scylla`) of a
/// version it does not know, tablets disabled as 6.0 – 2025.4 need, under a comment saying when
/// to leave the option out; else for Apache Cassandra. The store creates the schema with
/// [`schema_cql_for`] and the version of the server it is connected to.
///
/// With [`Tables::Shared`], the shared tables (`tenant` is not needed); else `tenant`'s keyspace
/// (nothing without a tenant).
pub fn schema_cql(tenant: Option<&TenantId>, config: &ScyllaConfig, scylla: bool) -> Vec<String> {
    let in_dialect = |dialect| match (&config.tables, tenant) {
        (Tables::Shared { keyspace }, _) => shared_schema_cql(keyspace, config, dialect),
        (Tables::KeyspacePerTenant, Some(tenant)) => schema_cql_for(tenant, config, dialect),
        (Tables::KeyspacePerTenant, None) => Vec::new(),
    };
    if !scylla {
        return in_dialect(Dialect::Cassandra);
    }
    let mut cql = in_dialect(Dialect::Scylla(Tablets::Disabled));
    let Some(first) = cql.first_mut() else { return cql };
    *first = format!(
        "-- Tablets disabled: ScyllaDB 6.0 - 2025.4 refuses counters (table late) on tablets, and\n\
         -- before 2025.4 lightweight transactions (tables shards, meta) too. Leave the option out\n\
         -- on ScyllaDB before 6.0 (Enterprise before 2024.2), which does not know it; it may be\n\
         -- left out on 2026.1 and later, where both work on tablets.\n{first}"
    );
    cql
}

/// The options of the queue tables (`events`, `buckets`): insert-only with a TTL, so expired
/// cells are the only tombstones (see module docs), compacted by time window.
fn queue_options(ttl_secs: i64, scylla: bool) -> String {
    format!(
        "compaction = {{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}} \
         AND default_time_to_live = {ttl_secs} AND gc_grace_seconds = 10800{}",
        if scylla { " AND tombstone_gc = {'mode': 'immediate'}" } else { "" }
    )
}

/// The CQL that creates a tenant's keyspace and tables in `dialect`.
pub fn schema_cql_for(tenant: &TenantId, config: &ScyllaConfig, dialect: Dialect) -> Vec<String> {
    let ks = keyspace(tenant);
    let ttl = config.retention_secs_of(tenant);
    let (scylla, tablets) = match dialect {
        Dialect::Scylla(tablets) => (true, tablets.keyspace_option()),
        Dialect::Cassandra => (false, ""),
    };
    let queue_options = queue_options(ttl, scylla);
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}{tablets}",
            config.replication
        ),
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

/// A tenant as the store reaches it: the statements of its keyspace (or the shared ones) and
/// the values the layout binds for it.
struct Tenant {
    /// The tenant's name, its key in the shared tables.
    name: String,
    /// The TTL of its inserts in the shared tables, seconds.
    ttl_secs: i32,
    statements: Arc<Statements>,
}

impl Tenant {
    /// What the layout binds for this tenant.
    fn key(&self) -> Key<'_> {
        Key { tenant: &self.name, ttl_secs: self.ttl_secs, slot: 0 }
    }
}

impl std::ops::Deref for Tenant {
    type Target = Statements;
    fn deref(&self) -> &Statements {
        &self.statements
    }
}

/// The prepared statements of a keyspace.
struct Statements {
    /// Whether they are the shared tables' (the tenant in every key).
    shared: bool,
    insert_event: Stmt,
    insert_bucket: Stmt,
    next_bucket: Stmt,
    newest_buckets: Stmt,
    read_bucket: Stmt,
    count_bucket: Stmt,
    read_shard: Stmt,
    create_shard: Stmt,
    take_shard: Stmt,
    renew_shard: Stmt,
    commit: Stmt,
    commit_with_state: Stmt,
    write_state_chunk: Stmt,
    read_state: Stmt,
    delete_state: Stmt,
    insert_story: Stmt,
    latest_stories: Stmt,
    all_stories: Stmt,
    insert_feed: Stmt,
    feed_since: Stmt,
    story_at: Stmt,
    insert_dead: Stmt,
    all_dead: Stmt,
    delete_dead: Stmt,
    read_layout: Stmt,
    heartbeat: Stmt,
    workers: Stmt,
    write_layout: Stmt,
    close: Stmt,
    closed_marks: Stmt,
    add_late: Stmt,
    read_late: Stmt,
}

/// The ScyllaDB (or Cassandra) store.
#[derive(Clone)]
pub struct ScyllaStore {
    session: Arc<Session>,
    config: ScyllaConfig,
    /// What the cluster is: the schema's dialect and tablets depend on it.
    server: Server,
    /// The gate of every request: bound and retries.
    requests: Requests,
    /// The statements of the shared tables, prepared once (after the tables are created).
    shared: Arc<OnceCell<Arc<Statements>>>,
    /// Tenants by name. A std mutex: held only to look up or insert.
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

/// Longest wait between two attempts of a request.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Retries are logged at most this often (each with how many there were since).
const RETRY_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a failed request may succeed if sent again, and whether it may have been applied.
///
/// From the driver's errors (scylla 1.9, `src/errors.rs`, and `DbError` in scylla-cql-core
/// `src/frame/response/error.rs`) and its `DefaultRetryPolicy`
/// (`src/policies/retry/default.rs`), which retries most of these at once, at most once and
/// usually on another node (no help from a single overloaded node), and those that may have
/// been applied only for statements marked idempotent. Everything else (syntax, invalid
/// request, unauthorized, a read or write *failure* on a replica, a server bug) fails the same
/// way again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transient {
    /// Refused before any replica saw it: no free stream id on the connection
    /// (`UnableToAllocStreamId`), no usable connection (`ConnectionPoolError`), too few live
    /// replicas (`Unavailable`), a node still joining (`IsBootstrapping`), a rate limit that
    /// the coordinator applied. Safe to send again whatever the statement does.
    NotApplied,
    /// May have been applied: a replica or client timeout (`ReadTimeout`, `WriteTimeout`,
    /// `RequestTimeout`), a connection broken mid-request, an overloaded coordinator
    /// (`Overloaded`). Safe to send again only when applying it twice is applying it once.
    MaybeApplied,
}

fn attempt_transient(e: &RequestAttemptError) -> Option<Transient> {
    match e {
        RequestAttemptError::UnableToAllocStreamId => Some(Transient::NotApplied),
        RequestAttemptError::BrokenConnectionError(_) => Some(Transient::MaybeApplied),
        RequestAttemptError::DbError(e, _) => match e {
            DbError::Unavailable { .. } | DbError::IsBootstrapping => Some(Transient::NotApplied),
            DbError::RateLimitReached { rejected_by_coordinator: true, .. } => {
                Some(Transient::NotApplied)
            }
            DbError::RateLimitReached { .. }
            | DbError::Overloaded
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. } => Some(Transient::MaybeApplied),
            _ => None,
        },
        _ => None,
    }
}

fn pool_transient(e: &ConnectionPoolError) -> Option<Transient> {
    match e {
        // The node's connections are down or still opening: nothing was sent.
        ConnectionPoolError::Broken { .. } | ConnectionPoolError::Initializing => {
            Some(Transient::NotApplied)
        }
        _ => None,
    }
}

fn prepare_transient(e: &PrepareError) -> Option<Transient> {
    match e {
        PrepareError::ConnectionPoolError(e) => pool_transient(e),
        // Preparing applies nothing.
        PrepareError::AllAttemptsFailed { first_attempt } => {
            attempt_transient(first_attempt).map(|_| Transient::NotApplied)
        }
        _ => None,
    }
}

fn request_transient(e: &RequestError) -> Option<Transient> {
    match e {
        RequestError::ConnectionPoolError(e) => pool_transient(e),
        RequestError::RequestTimeout(_) => Some(Transient::MaybeApplied),
        RequestError::LastAttemptError(e) => attempt_transient(e),
        _ => None,
    }
}

fn execution_transient(e: &ExecutionError) -> Option<Transient> {
    match e {
        ExecutionError::ConnectionPoolError(e) => pool_transient(e),
        ExecutionError::RequestTimeout(_) => Some(Transient::MaybeApplied),
        ExecutionError::LastAttemptError(e) => attempt_transient(e),
        ExecutionError::PrepareError(e) => prepare_transient(e),
        _ => None,
    }
}

fn next_page_transient(e: &NextPageError) -> Option<Transient> {
    match e {
        NextPageError::RequestFailure(e) => request_transient(e),
        _ => None,
    }
}

/// A failed attempt of a request: the error to return, and whether another attempt may do.
#[derive(Debug)]
struct Failed {
    /// What the caller gets if it is not retried.
    error: StoreError,
    /// `None`: sending it again would fail the same way.
    transient: Option<Transient>,
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Self {
        Failed { error, transient: None }
    }
}

impl From<ExecutionError> for Failed {
    fn from(e: ExecutionError) -> Self {
        Failed { transient: execution_transient(&e), error: backend(e) }
    }
}

impl From<PagerExecutionError> for Failed {
    fn from(e: PagerExecutionError) -> Self {
        let transient = match &e {
            PagerExecutionError::PrepareError(e) => prepare_transient(e),
            PagerExecutionError::NextPageError(e) => next_page_transient(e),
            _ => None,
        };
        Failed { transient, error: backend(e) }
    }
}

impl From<NextRowError> for Failed {
    fn from(e: NextRowError) -> Self {
        let transient = match &e {
            NextRowError::NextPageError(e) => next_page_transient(e),
            _ => None,
        };
        Failed { transient, error: backend(e) }
    }
}

/// The gate every request of a store goes through: a bound on requests in flight, and
/// retries with backoff. Clones share the bound.
#[derive(Debug, Clone)]
struct Requests {
    /// One permit per request in flight; never closed.
    in_flight: Arc<Semaphore>,
    /// Attempts after the first for a transient failure.
    retries: u32,
    /// Wait before the first retry.
    backoff: Duration,
    /// Retries since the last log line, and when that was logged (ms since `started`, from 1;
    /// 0: never).
    retried: Arc<(AtomicU64, AtomicU64)>,
    /// The origin of the log clock.
    started: Instant,
}

impl Requests {
    fn new(config: &ScyllaConfig) -> Self {
        Requests {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            retries: config.retries,
            backoff: config.retry_backoff,
            retried: Default::default(),
            started: Instant::now(),
        }
    }

    /// Runs `attempt` under a permit until it succeeds, fails for good, or has failed
    /// transiently `1 + retries` times. A [`Transient::MaybeApplied`] failure is retried only
    /// when `idempotent`. No permit is held while waiting to retry.
    async fn run<T, Fut>(
        &self,
        idempotent: bool,
        attempt: impl Fn() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, Failed>>,
    {
        let first = Instant::now();
        let mut backoff = self.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = {
                // `acquire` fails only on a closed semaphore, and this one is never closed; were
                // it closed, the request would go without a permit rather than fail.
                let _permit = self.in_flight.acquire().await.ok();
                attempt().await
            };
            let failed = match result {
                Ok(value) => return Ok(value),
                Err(failed) => failed,
            };
            let retry = match failed.transient {
                Some(Transient::NotApplied) => true,
                Some(Transient::MaybeApplied) => idempotent,
                None => false,
            };
            if !retry {
                return Err(failed.error);
            }
            if attempts > self.retries {
                return Err(match failed.error {
                    StoreError::Backend { backend, message } => StoreError::Backend {
                        backend,
                        message: format!(
                            "{message} (still failing after {attempts} attempt{} in {:.1} s: \
                             check that the nodes are up and not overloaded, and that the \
                             keyspace's replication fits the nodes there are)",
                            if attempts == 1 { "" } else { "s" },
                            first.elapsed().as_secs_f64()
                        ),
                    },
                    other => other,
                });
            }
            self.note_retry(&failed.error);
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
        }
    }

    /// Counts a retry and logs the count now and then: under overload there may be hundreds a
    /// second, each worth nothing on its own.
    fn note_retry(&self, error: &StoreError) {
        let (retries, logged_at) = &*self.retried;
        retries.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = logged_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= RETRY_LOG_EVERY.as_millis() as u64;
        // Of the callers that find it due, the one that moves the clock logs.
        if due
            && logged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                retries = retries.swap(0, Ordering::Relaxed),
                error = %error,
                "requests to the cluster failed transiently and are being sent again (the \
                 cluster is slow or overloaded)"
            );
        }
    }
}

/// `d` shortened by up to half, at random.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each `RandomState` is seeded differently: a random number without a dependency.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d.mul_f64(0.5 + (r % 1024) as f64 / 2048.0)
}

/// Runs `op` on every item, at most `width` at a time, and returns the outputs in the order
/// they completed. After a failure no other item is started; those running finish, then the
/// first failure is returned. (The store's [`Requests`] bound all callers together; this bounds
/// the futures one call keeps.)
async fn bounded<T, U, Fut>(
    width: usize,
    items: impl IntoIterator<Item = T>,
    mut op: impl FnMut(T) -> Fut,
) -> Result<Vec<U>, StoreError>
where
    Fut: Future<Output = Result<U, StoreError>>,
{
    let mut items = items.into_iter();
    let mut running = FuturesUnordered::new();
    let mut out = Vec::new();
    let mut failure = None;
    loop {
        while failure.is_none() && running.len() < width.max(1) {
            let Some(item) = items.next() else { break };
            running.push(op(item));
        }
        match running.next().await {
            Some(Ok(value)) => out.push(value),
            Some(Err(e)) => {
                failure.get_or_insert(e);
            }
            None => break,
        }
    }
    failure.map_or(Ok(out), Err)
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.config.nodes)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl ScyllaStore {
    /// Connects to the cluster, and finds out what it is.
    pub async fn connect(config: ScyllaConfig) -> Result<Self, StoreError> {
        if let Tables::Shared { keyspace } = &config.tables {
            tables::check_keyspace(keyspace)?;
        }
        let session =
            SessionBuilder::new().known_nodes(&config.nodes).build().await.map_err(|e| {
                backend(format!(
                    "cannot connect to {}: {e} (is the node up? check the address and port)",
                    config.nodes.join(", ")
                ))
            })?;
        let server = Self::server_of(&session).await?;
        if let Server::Scylla { version } = &server
            && release(version).is_none()
        {
            tracing::warn!(
                version,
                "cannot read ScyllaDB's version; taking it for one that needs tablets disabled"
            );
        }
        tracing::info!(%server, tablets = %server.dialect().tablets(), "connected to the cluster");
        Ok(ScyllaStore {
            session: Arc::new(session),
            requests: Requests::new(&config),
            config,
            server,
            shared: Default::default(),
            tenants: Default::default(),
            closed: Default::default(),
        })
    }

    /// What the cluster says it is: `system.versions` exists only on ScyllaDB, and Cassandra
    /// refuses to read it as an invalid query. Any other failure is an error rather than a
    /// guess: taking a ScyllaDB for Cassandra would create its keyspaces on tablets.
    async fn server_of(session: &Session) -> Result<Server, StoreError> {
        let first = |result: QueryResult| {
            let rows = result.into_rows_result().ok()?;
            rows.maybe_first_row::<(Option<String>,)>().ok().flatten()?.0
        };
        match session.query_unpaged("SELECT version FROM system.versions", &[]).await {
            Ok(result) => Ok(Server::Scylla { version: first(result).unwrap_or_default() }),
            Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Invalid,
                _,
            ))) => {
                let local = session.query_unpaged("SELECT release_version FROM system.local", &[]);
                let release_version = local.await.ok().and_then(first).unwrap_or_default();
                Ok(Server::Cassandra { release_version })
            }
            Err(e) => Err(backend(format!(
                "cannot tell whether the cluster is ScyllaDB or Cassandra (reading \
                 system.versions): {e}"
            ))),
        }
    }

    /// The configuration it connected with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.config
    }

    /// What the cluster is.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Whether the cluster is ScyllaDB rather than another CQL database.
    pub fn is_scylla(&self) -> bool {
        matches!(self.server, Server::Scylla { .. })
    }

    /// Drops a tenant's keyspace (tests). In the shared tables, deletes what names the tenant
    /// alone or with a shard (layout, leases and offsets, stories, dead letters, workers);
    /// events, their index, the feed and plugin states expire with their TTL.
    pub async fn drop_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let Tables::Shared { keyspace: ks } = &self.config.tables else {
            let ks = keyspace(tenant);
            self.query(&format!("DROP KEYSPACE IF EXISTS {ks}"), (), true).await?;
            return Ok(());
        };
        let shards = self.layout(tenant).await?.map_or(0, |l| l.shards as i32);
        let name = tenant.as_str();
        for table in ["dead_letters", "workers"] {
            self.query(&format!("DELETE FROM {ks}.{table} WHERE tenant = ?"), (name,), true)
                .await?;
        }
        for slot in 0..STORY_SLOTS {
            let cql = format!("DELETE FROM {ks}.stories WHERE tenant = ? AND slot = ?");
            self.query(&cql, (name, slot), true).await?;
        }
        // `shards` and `meta` are written with transactions only.
        for shard in 0..shards {
            let cql = format!("DELETE FROM {ks}.shards WHERE tenant = ? AND shard = ? IF EXISTS");
            self.query(&cql, (name, shard), true).await?;
        }
        let cql = format!("DELETE FROM {ks}.meta WHERE tenant = ? AND name = 'layout' IF EXISTS");
        self.query(&cql, (name,), true).await?;
        self.tenants.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        Ok(())
    }

    /// Executes a prepared statement, through the gate; retried after a failure that may have
    /// been applied only if the statement is marked idempotent.
    async fn execute<V: SerializeRow + Sync>(
        &self,
        key: Key<'_>,
        stmt: &Stmt,
        values: V,
    ) -> Result<QueryResult, StoreError> {
        let (session, values) = (&self.session, &stmt.bind(key, values));
        let prepared = &stmt.prepared;
        let attempt = || async move { Ok(session.execute_unpaged(prepared, values).await?) };
        self.requests.run(prepared.get_is_idempotent(), attempt).await
    }

    /// Runs a CQL text statement (schema reads and changes), through the gate.
    async fn query<V: SerializeRow + Sync>(
        &self,
        cql: &str,
        values: V,
        idempotent: bool,
    ) -> Result<QueryResult, StoreError> {
        let (session, values) = (&self.session, &values);
        let attempt = || async move { Ok(session.query_unpaged(cql, values).await?) };
        self.requests.run(idempotent, attempt).await
    }

    /// Runs a batch, through the gate.
    async fn batch<V: BatchValues + Sync>(
        &self,
        batch: &Batch,
        values: V,
    ) -> Result<(), StoreError> {
        let (session, values) = (&self.session, &values);
        let attempt = || async move { Ok(session.batch(batch, values).await.map(drop)?) };
        self.requests.run(batch.get_is_idempotent(), attempt).await
    }

    /// Every row of a paged read, through the gate: one permit for the whole read (its pages
    /// are fetched one after the other), and the whole read again after a transient failure.
    async fn read_all<R, V>(
        &self,
        what: &'static str,
        key: Key<'_>,
        stmt: &Stmt,
        values: V,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send,
        V: SerializeRow + Sync,
    {
        let (session, values) = (&self.session, &stmt.bind(key, values));
        let attempt = || async move {
            let pager = session.execute_iter(stmt.prepared.clone(), values).await?;
            let mut rows = pager.rows_stream::<R>().map_err(|e| corrupt(what, e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                out.push(row?);
            }
            Ok(out)
        };
        self.requests.run(true, attempt).await
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
                .query(
                    "SELECT default_time_to_live FROM system_schema.tables \
                     WHERE keyspace_name = ? AND table_name = ?",
                    (&ks, *table),
                    true,
                )
                .await?
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
        let Some(want) = self.config.given_retention_of(tenant) else { return Ok(()) };
        for (table, ttl) in self.table_ttls(tenant).await? {
            if ttl == want {
                continue;
            }
            let cql = format!("ALTER TABLE {ks}.{table} WITH default_time_to_live = {want}");
            self.query(&cql, (), true).await.map_err(|e| {
                in_context(e, |e| {
                    format!(
                        "cannot change the TTL of {ks}.{table} from {ttl} s to the retention of \
                         {want} s: {e} (the role needs ALTER permission on the keyspace)"
                    )
                })
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

    /// Whether keyspace `ks` has every table of the store (then nothing is created: a schema
    /// statement, even one that changes nothing, is slow and makes the cluster warn).
    async fn has_tables(&self, ks: &str) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (ks,),
                true,
            )
            .await?
            .into_rows_result()
            .map_err(|e| corrupt("system_schema.tables", e))?;
        let names: Vec<String> = rows
            .rows::<(String,)>()
            .map_err(|e| corrupt("system_schema.tables", e))?
            .map(|row| row.map(|(name,)| name))
            .collect::<Result<_, _>>()
            .map_err(|e| corrupt("system_schema.tables", e))?;
        Ok(TABLES.iter().all(|t| names.iter().any(|n| n == t)))
    }

    /// Adds the state reference columns to a `shards` table created before they existed.
    async fn upgrade_shards_table(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let ks = keyspace(tenant);
        let rows = self
            .query(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = 'shards'",
                (&ks,),
                true,
            )
            .await?
            .into_rows_result()
            .map_err(|e| corrupt("system_schema.columns", e))?;
        let mut columns =
            rows.rows::<(String,)>().map_err(|e| corrupt("system_schema.columns", e))?;
        if columns.any(|c| c.is_ok_and(|(name,)| name == "state_chunks")) {
            return Ok(());
        }
        // Not idempotent: adding columns that exist fails.
        let cql = format!("ALTER TABLE {ks}.shards ADD ({SHARD_STATE_COLUMNS})");
        self.query(&cql, (), false).await.map_err(|e| {
            in_context(e, |e| {
                format!(
                    "cannot add the state columns to {ks}.shards: {e} (the role needs ALTER \
                     permission on the keyspace)"
                )
            })
        })?;
        self.session.await_schema_agreement().await.map_err(backend)?;
        Ok(())
    }

    /// The error of a schema statement, with what to do when tablets are the cause.
    fn schema_failed(&self, tenant: &TenantId, e: StoreError) -> StoreError {
        self.schema_failed_in(&keyspace(tenant), e)
    }

    /// The error of a schema statement in keyspace `ks`.
    fn schema_failed_in(&self, ks: &str, e: StoreError) -> StoreError {
        let server = &self.server;
        in_context(e, |message| {
            if !message.contains("tablets") {
                return format!("creating the tables of {ks} on {server}: {message}");
            }
            format!(
                "creating the tables of {ks} on {server}: {message} (the keyspace uses tablets, \
                 on which this ScyllaDB refuses counters or lightweight transactions, and a \
                 keyspace cannot move off tablets: if it holds nothing to keep, drop it \
                 (`DROP KEYSPACE {ks}`) and storyline creates it again with tablets disabled; \
                 with tablets_mode_for_new_keyspaces: enforced, use ScyllaDB 2026.1 or later)"
            )
        })
    }

    async fn prepare_tenant(&self, tenant: &TenantId) -> Result<Arc<Tenant>, StoreError> {
        let statements = match &self.config.tables {
            Tables::KeyspacePerTenant => {
                if !self.has_tables(&keyspace(tenant)).await? {
                    let dialect = self.server.dialect();
                    for cql in schema_cql_for(tenant, &self.config, dialect) {
                        let created = self.query(&cql, (), true).await;
                        created.map_err(|e| self.schema_failed(tenant, e))?;
                    }
                    self.session.await_schema_agreement().await.map_err(backend)?;
                }
                self.upgrade_shards_table(tenant).await?;
                self.apply_retention(tenant).await?;
                Arc::new(
                    self.prepare_statements(Names::keyspace_per_tenant(keyspace(tenant))).await?,
                )
            }
            Tables::Shared { keyspace } => {
                let prepare = || async {
                    if !self.has_tables(keyspace).await? {
                        let dialect = self.server.dialect();
                        for cql in shared_schema_cql(keyspace, &self.config, dialect) {
                            let created = self.query(&cql, (), true).await;
                            created.map_err(|e| self.schema_failed_in(keyspace, e))?;
                        }
                        self.session.await_schema_agreement().await.map_err(backend)?;
                    }
                    Ok::<_, StoreError>(Arc::new(
                        self.prepare_statements(Names::shared(keyspace.clone())).await?,
                    ))
                };
                self.shared.get_or_try_init(prepare).await?.clone()
            }
        };
        // At most 20 years (the command line checks it), within CQL's TTL.
        let ttl_secs = i32::try_from(self.config.retention_secs_of(tenant)).unwrap_or(i32::MAX);
        Ok(Arc::new(Tenant { name: tenant.as_str().to_string(), ttl_secs, statements }))
    }

    /// Prepares every statement for the tables `names` renders.
    async fn prepare_statements(&self, names: Names) -> Result<Statements, StoreError> {
        let c = self.config.consistency;
        // Every statement here may be applied twice with the effect of once, so a request that
        // timed out is sent again (by the driver on another node, and by `Requests`): inserts
        // and deletes of fixed values, reads, and LWTs whose condition either still holds after
        // they applied (renew, commit, close) or fails harmlessly (a take or create that did
        // apply reads as refused; the owner's next attempt finds the lease its own). The
        // counters of `late` are the exception, marked below.
        let prepare = |statement: Statement| {
            let rendered = names.render(template(statement));
            async move {
                let mut p = self.session.prepare(rendered.cql.as_str()).await.map_err(backend)?;
                p.set_consistency(c);
                p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                p.set_page_size(self.config.page_size);
                p.set_is_idempotent(true);
                Ok::<_, StoreError>(Stmt::new(p, &rendered))
            }
        };
        use Statement as S;
        Ok(Statements {
            shared: names.is_shared(),
            insert_event: prepare(S::InsertEvent).await?,
            insert_bucket: prepare(S::InsertBucket).await?,
            newest_buckets: prepare(S::NewestBuckets).await?,
            next_bucket: prepare(S::NextBucket).await?,
            read_bucket: prepare(S::ReadBucket).await?,
            count_bucket: prepare(S::CountBucket).await?,
            read_shard: {
                // Reads of the LWT-written `shards` table go through Paxos too (SERIAL).
                let mut s = prepare(S::ReadShard).await?;
                s.prepared.set_consistency(Consistency::LocalSerial);
                s
            },
            create_shard: prepare(S::CreateShard).await?,
            take_shard: prepare(S::TakeShard).await?,
            renew_shard: prepare(S::RenewShard).await?,
            commit: prepare(S::Commit).await?,
            commit_with_state: prepare(S::CommitWithState).await?,
            write_state_chunk: prepare(S::WriteStateChunk).await?,
            read_state: {
                let mut s = prepare(S::ReadState).await?;
                // A few chunks per page, not `page_size` rows of a megabyte each.
                s.prepared.set_page_size(4);
                s
            },
            delete_state: prepare(S::DeleteState).await?,
            insert_story: prepare(S::InsertStory).await?,
            latest_stories: prepare(S::LatestStories).await?,
            all_stories: prepare(S::AllStories).await?,
            insert_feed: prepare(S::InsertFeed).await?,
            feed_since: prepare(S::FeedSince).await?,
            story_at: prepare(S::StoryAt).await?,
            insert_dead: prepare(S::InsertDead).await?,
            all_dead: prepare(S::AllDead).await?,
            delete_dead: prepare(S::DeleteDead).await?,
            heartbeat: prepare(S::Heartbeat).await?,
            workers: prepare(S::Workers).await?,
            read_layout: prepare(S::ReadLayout).await?,
            write_layout: prepare(S::WriteLayout).await?,
            close: prepare(S::Close).await?,
            closed_marks: prepare(S::ClosedMarks).await?,
            add_late: {
                let mut s = prepare(S::AddLate).await?;
                // An increment applied twice counts twice: sent again only when refused.
                s.prepared.set_is_idempotent(false);
                s
            },
            read_late: prepare(S::ReadLate).await?,
        })
    }

    /// Runs an LWT and tells whether it was applied. Rejected LWTs return the current values
    /// too, whose columns differ between ScyllaDB and Cassandra: only column 0 is read.
    async fn lwt(
        &self,
        key: Key<'_>,
        stmt: &Stmt,
        values: impl SerializeRow + Sync,
    ) -> Result<bool, StoreError> {
        let result = self.execute(key, stmt, values).await?;
        let rows = result.into_rows_result().map_err(backend)?;
        let row = rows.first_row::<scylla::value::Row>().map_err(backend)?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(corrupt("shards", format!("unexpected LWT result {other:?}"))),
        }
    }

    async fn shard_row(&self, t: &Tenant, shard: ShardId) -> Result<Option<ShardRow>, StoreError> {
        let result = self.execute(t.key(), &t.read_shard, (shard.0 as i32,)).await?;
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
        // Read here rather than with `read_all`: the chunks go straight into one buffer.
        let (session, incomplete) = (&self.session, &incomplete);
        let attempt = || async move {
            let values = t.read_state.bind(t.key(), (shard.0 as i32, epoch, slot, chunks));
            let pager = session.execute_iter(t.read_state.prepared.clone(), values).await?;
            let mut rows =
                pager.rows_stream::<(i32, Vec<u8>)>().map_err(|e| corrupt("shard_state", e))?;
            let mut out = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
            let mut next = 0;
            while let Some(row) = rows.next().await {
                let (chunk, data) = row?;
                if chunk != next {
                    return Err(incomplete(format!("chunk {next} is missing")).into());
                }
                out.extend_from_slice(&data);
                next += 1;
            }
            if next != chunks || out.len() as i64 != bytes {
                let got = format!("found {next} chunks and {} bytes", out.len());
                return Err(incomplete(got).into());
            }
            Ok(out)
        };
        self.requests.run(true, attempt).await
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
        let width = STATE_WRITES_IN_FLIGHT.min(self.config.max_in_flight);
        bounded(width, state.chunks(STATE_CHUNK).enumerate(), |(i, data)| async move {
            let values = (shard.0 as i32, epoch, slot, i as i32, data);
            self.execute(t.key(), &t.write_state_chunk, values).await.map(drop)
        })
        .await
        .map_err(|e| {
            in_context(e, |e| format!("writing the plugin state of shard {shard} failed: {e}"))
        })?;
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
        let result = self.execute(t.key(), &t.delete_state, (shard.0 as i32, epoch, slot)).await;
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
        shards: u32,
        fresh: bool,
    ) -> Result<ClosedCache, StoreError> {
        if !fresh {
            let cache = self.closed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(tenant).filter(|c| c.read_at.elapsed() < CLOSED_REFRESH) {
                return Ok(c.clone());
            }
        }
        let read_at = std::time::Instant::now();
        let all: Vec<i32> = (0..shards as i32).collect();
        let result = self.execute(t.key(), &t.closed_marks, (all,)).await?;
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
        let width = self.config.max_in_flight;
        bounded(width, &partitions, |(shard, bucket)| async move {
            let values = (shard.0 as i32, bucket.0.div_euclid(DAY_MS), bucket.0);
            self.execute(t.key(), &t.insert_bucket, values).await.map(drop)
        })
        .await?;
        // 2. One unlogged batch per partition (a single-partition batch is applied atomically
        //    by the replica that owns it), partitions concurrently. A retry of the same events
        //    rewrites the same rows: appends are idempotent.
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
                    batch.append_statement(t.insert_event.prepared.clone());
                }
                batch.set_consistency(self.config.consistency);
                batch.set_is_idempotent(true);
                let values: Vec<_> =
                    chunk.iter().map(|row| t.insert_event.bind(t.key(), *row)).collect();
                writes.push((batch, values));
            }
        }
        bounded(width, writes, |(batch, values)| async move { self.batch(&batch, values).await })
            .await?;
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
            self.execute(t.key(), &t.add_late, (Counter(n), Counter(lateness), shard)).await?;
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
        let result = self.execute(t.key(), &t.next_bucket, (shard.0 as i32, day, after)).await?;
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
        let rows = self.execute(t.key(), &t.read_layout, ()).await?;
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
                self.lwt(t.key(), &t.write_layout, (layout.shards as i32, layout.bucket_ms))
                    .await?;
                self.layout(tenant)
                    .await?
                    .ok_or_else(|| corrupt("meta", "layout missing after write"))?
            }
        };
        if existing != layout {
            return Err(StoreError::layout_mismatch(tenant, existing, layout));
        }
        // Events for buckets a worker closed go to the first open bucket of their shard.
        let marks = self.closed_marks(tenant, &t, layout.shards, false).await?;
        let targets = Self::targets(events, &marks, layout.bucket_ms);
        self.count_late(&t, events, &targets).await?;
        self.write_events(&t, events, |i| targets[i]).await?;
        // A write slower than the grace may have landed after a worker read its bucket: send
        // again whatever is behind the marks now (a worker may then see an event twice; it
        // never misses one).
        if marks.read_at.elapsed().as_millis() as i64
            >= CLOSE_GRACE_MS - CLOSED_REFRESH.as_millis() as i64
        {
            let fresh = self.closed_marks(tenant, &t, layout.shards, true).await?;
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
                (crate::producer::now_ms() - self.config.retention_secs_of(tenant) * 1000)
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

    async fn newest_buckets(
        &self,
        tenant: &TenantId,
        shards: u32,
    ) -> Result<Option<Vec<Option<BucketStart>>>, StoreError> {
        let t = self.tenant(tenant).await?;
        let day = crate::producer::now_ms().div_euclid(DAY_MS);
        let all: Vec<i32> = (0..shards as i32).collect();
        let result = self.execute(t.key(), &t.newest_buckets, (all, day)).await?;
        let rows = result.into_rows_result().map_err(backend)?;
        let mut newest = vec![None; shards as usize];
        for row in rows.rows::<(i32, i64)>().map_err(|e| corrupt("buckets", e))? {
            let (shard, bucket) = row.map_err(|e| corrupt("buckets", e))?;
            if let Some(slot) = usize::try_from(shard).ok().and_then(|s| newest.get_mut(s)) {
                *slot = Some(BucketStart(bucket));
            }
        }
        Ok(Some(newest))
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
        if self.lwt(t.key(), &t.close, (to.0, lease.shard.0 as i32, lease.epoch as i64)).await? {
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

    fn place_of(&self, tenant: &TenantId) -> Option<String> {
        Some(match &self.config.tables {
            Tables::KeyspacePerTenant => {
                format!("the ScyllaDB store (keyspace {})", keyspace(tenant))
            }
            Tables::Shared { keyspace } => {
                format!("the ScyllaDB store (the shared tables of keyspace {keyspace})")
            }
        })
    }

    fn retention_ms(&self, tenant: &TenantId) -> Option<i64> {
        Some(self.config.retention_secs_of(tenant) * 1000)
    }

    async fn late_stats(&self, tenant: &TenantId, shard: ShardId) -> Result<LateStats, StoreError> {
        let t = self.tenant(tenant).await?;
        let result = self.execute(t.key(), &t.read_late, (shard.0 as i32,)).await?;
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
        type Row =
            (String, String, String, i64, i64, Option<Vec<(String, String)>>, Option<Vec<u8>>);
        let rows: Vec<Row> =
            self.read_all("events", t.key(), &t.read_bucket, (shard.0 as i32, bucket.0)).await?;
        let events = rows.into_iter().map(
            |(id, source, kind, event_time, insert_time, attributes, payload)| Event {
                id,
                source,
                kind,
                event_time,
                insert_time,
                attributes: attributes.unwrap_or_default(),
                payload: payload.unwrap_or_default(),
            },
        );
        Ok(events.collect::<Vec<_>>().into())
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
            let r = self.execute(t.key(), &t.count_bucket, (shard.0 as i32, b.0)).await?;
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
            if self.lwt(t.key(), &t.commit, (bucket.0, shard, epoch)).await? {
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
        if !self.lwt(t.key(), &t.commit_with_state, values).await? {
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
                let applied = self
                    .lwt(t.key(), &t.create_shard, (shard.0 as i32, owner, 1i64, expires_ms))
                    .await?;
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
                    .lwt(
                        t.key(),
                        &t.take_shard,
                        (owner, epoch, expires_ms, shard.0 as i32, row.epoch),
                    )
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
                t.key(),
                &t.renew_shard,
                (expires_ms, lease.shard.0 as i32, lease.epoch as i64, lease.owner.as_str()),
            )
            .await?;
        Ok(applied.then(|| Lease { expires_ms, ..lease.clone() }))
    }

    async fn release_lease(&self, tenant: &TenantId, lease: &Lease) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.lwt(
            t.key(),
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
        self.execute(t.key(), &t.heartbeat, (owner, now + ttl_ms)).await?;
        Ok(())
    }

    async fn live_workers(
        &self,
        tenant: &TenantId,
        now: TimestampMs,
    ) -> Result<Vec<String>, StoreError> {
        let t = self.tenant(tenant).await?;
        let rows: Vec<(String, i64)> = self.read_all("workers", t.key(), &t.workers, ()).await?;
        let mut out: Vec<String> =
            rows.into_iter().filter(|(_, expires_ms)| *expires_ms > now).map(|(o, _)| o).collect();
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
        let t = &*self.tenant(tenant).await?;
        let minute = now.div_euclid(MINUTE_MS);
        // Each story, then its feed entry: a follower that sees the entry can read the story.
        // A failure (after retries) stops the publish and is returned with some stories
        // written, perhaps without their feed entries; the bucket stays uncommitted, so it is
        // published again, and both inserts write the same rows again.
        bounded(self.config.max_in_flight, stories, |s| async move {
            let story = (
                s.id.as_str(),
                s.revision as i32,
                s.kind.as_str(),
                &s.event_ids,
                s.first_seen,
                s.last_seen,
                s.fields.get(),
                now,
            );
            self.execute(t.key().story(&s.id), &t.insert_story, story).await?;
            let entry = (minute, now, s.id.as_str(), s.revision as i32);
            self.execute(t.key(), &t.insert_feed, entry).await.map(drop)
        })
        .await?;
        Ok(())
    }

    async fn stories_since(
        &self,
        tenant: &TenantId,
        since_ms: TimestampMs,
    ) -> Result<Vec<StoredStory>, StoreError> {
        let t = &*self.tenant(tenant).await?;
        let width = self.config.max_in_flight;
        // Nothing older than the retention is left; a worker's clock may run a little ahead.
        let now = crate::producer::now_ms();
        let from =
            since_ms.max(now - self.config.retention_secs_of(tenant) * 1000).div_euclid(MINUTE_MS);
        let minutes = from..=(now + MINUTE_MS).div_euclid(MINUTE_MS);
        let keys = bounded(width, minutes, |minute| {
            self.read_all::<(String, i32), _>(
                "story_feed",
                t.key(),
                &t.feed_since,
                (minute, since_ms),
            )
        })
        .await?;
        let found = bounded(width, keys.iter().flatten(), |(id, revision)| async move {
            let key = t.key().story(id);
            let result = self.execute(key, &t.story_at, (id.as_str(), *revision)).await?;
            let rows = result.into_rows_result().map_err(|e| corrupt("stories", e))?;
            let rows = rows.rows::<StoryRow>().map_err(|e| corrupt("stories", e))?;
            rows.map(|row| story_from_row(row.map_err(|e| corrupt("stories", e))?))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        let mut out: Vec<StoredStory> = found.into_iter().flatten().collect();
        // A revision published again has its latest time in `stories`.
        out.sort_by_key(|s| s.published_ms);
        Ok(out)
    }

    async fn stories(
        &self,
        tenant: &TenantId,
        all_revisions: bool,
    ) -> Result<Vec<StoredStory>, StoreError> {
        let t = &*self.tenant(tenant).await?;
        let stmt = if all_revisions { &t.all_stories } else { &t.latest_stories };
        // A keyspace of its own: one read of the table. Shared tables: the tenant's slots.
        let slots = if t.shared { 0..tables::STORY_SLOTS } else { 0..1 };
        let parts = bounded(self.config.max_in_flight, slots, |slot| {
            let key = Key { slot, ..t.key() };
            self.read_all::<StoryRow, _>("stories", key, stmt, ())
        })
        .await?;
        let rows = parts.into_iter().flatten();
        let mut out = rows.map(story_from_row).collect::<Result<Vec<_>, _>>()?;
        // By id, newest revision first; a shared partition holds every revision of its stories,
        // of which only the newest is wanted for the latest.
        out.sort_by(|a, b| {
            a.story.id.cmp(&b.story.id).then(b.story.revision.cmp(&a.story.revision))
        });
        if !all_revisions {
            out.dedup_by(|next, kept| next.story.id == kept.story.id);
        }
        out.sort_by(|a, b| {
            a.story.id.cmp(&b.story.id).then(a.story.revision.cmp(&b.story.revision))
        });
        Ok(out)
    }

    async fn put_dead_letter(&self, tenant: &TenantId, l: &DeadLetter) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        let letter = (
            l.shard.0 as i32,
            l.bucket.0,
            l.plugin.as_str(),
            l.reason.as_str(),
            l.attempts as i32,
            l.at_ms,
            l.replay,
        );
        self.execute(t.key(), &t.insert_dead, letter).await?;
        Ok(())
    }

    async fn delete_dead_letter(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> Result<(), StoreError> {
        let t = self.tenant(tenant).await?;
        self.execute(t.key(), &t.delete_dead, (shard.0 as i32, bucket.0)).await?;
        Ok(())
    }

    async fn dead_letters(&self, tenant: &TenantId) -> Result<Vec<DeadLetter>, StoreError> {
        let t = self.tenant(tenant).await?;
        type Row = (i32, i64, String, String, i32, i64, Option<bool>);
        let rows: Vec<Row> = self.read_all("dead_letters", t.key(), &t.all_dead, ()).await?;
        let mut out: Vec<DeadLetter> = rows
            .into_iter()
            .map(|(shard, bucket, plugin, reason, attempts, at_ms, replay)| DeadLetter {
                shard: ShardId(shard as u32),
                bucket: BucketStart(bucket),
                plugin,
                reason,
                attempts: attempts as u32,
                at_ms,
                replay: replay.unwrap_or(false),
            })
            .collect();
        out.sort_by_key(|d| (d.shard, d.bucket));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize};

    use scylla::errors::WriteType;

    use super::*;

    fn acme() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn tablets_are_disabled_where_scylla_refuses_counters_or_lwt_on_them() {
        for (version, want) in [
            ("5.4.9-0.20240703.2cd3b6d3a9b1", Tablets::NotOffered),
            ("6.0.1-0.20240612.bf0f4a6e8b6d", Tablets::Disabled),
            ("6.3.0~dev-0.20241022.cdd81cab3425", Tablets::Disabled),
            ("2024.1.3-0.20240401.64115ae91a55", Tablets::NotOffered),
            ("2024.2.0", Tablets::Disabled),
            ("2025.3.1-0.20250904.ee9b1f4d9c4f", Tablets::Disabled),
            // LWT work on tablets from 2025.4, counters only from 2026.1.
            ("2025.4.0-0.20251217.c6e1e1a9b2f3", Tablets::Disabled),
            ("2026.1.0", Tablets::ClusterDefault),
            ("2026.4.0~dev", Tablets::ClusterDefault),
            // Unreadable: taken for a version that needs them disabled.
            ("", Tablets::Disabled),
            ("unknown", Tablets::Disabled),
        ] {
            assert_eq!(Tablets::for_scylla_version(version), want, "ScyllaDB {version:?}");
        }
    }

    #[test]
    fn both_layouts_create_every_table_the_store_looks_for() {
        let created = |cql: Vec<String>| -> Vec<String> {
            cql.iter()
                .filter_map(|c| c.split("CREATE TABLE IF NOT EXISTS ").nth(1))
                .map(|rest| rest.split([' ', '(']).next().unwrap_or("").to_string())
                .map(|name| name.rsplit('.').next().unwrap_or("").to_string())
                .collect()
        };
        let config = ScyllaConfig::default();
        let own = created(schema_cql_for(&acme(), &config, Dialect::Cassandra));
        let shared = created(shared_schema_cql("storyline", &config, Dialect::Cassandra));
        assert_eq!(own, TABLES);
        assert_eq!(shared, TABLES);
    }

    #[test]
    fn cassandra_is_sent_neither_a_tablets_option_nor_scylla_table_options() {
        let server = Server::Cassandra { release_version: "4.0.13".into() };
        assert_eq!(server.dialect(), Dialect::Cassandra);
        let cql = schema_cql_for(&acme(), &ScyllaConfig::default(), server.dialect()).join(";\n");
        assert!(!cql.contains("tablets") && !cql.contains("tombstone_gc"), "{cql}");
    }

    #[test]
    fn the_keyspace_opts_out_of_tablets_on_scylla_6_and_keeps_the_default_on_2026_1() {
        let config = ScyllaConfig::default();
        let keyspace = |version: &str| {
            let server = Server::Scylla { version: version.into() };
            schema_cql_for(&acme(), &config, server.dialect()).remove(0)
        };
        let replication = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}";
        assert_eq!(
            keyspace("6.0.1"),
            format!(
                "CREATE KEYSPACE IF NOT EXISTS storyline_acme WITH replication = {replication} \
                 AND tablets = {{'enabled': false}}"
            )
        );
        assert_eq!(
            keyspace("2026.1.0"),
            format!(
                "CREATE KEYSPACE IF NOT EXISTS storyline_acme WITH replication = {replication}"
            )
        );
        assert_eq!(keyspace("5.4.9"), keyspace("2026.1.0"));
    }

    #[test]
    fn storyline_schema_disables_tablets_and_says_when_to_leave_the_option_out() {
        let config = ScyllaConfig::default();
        let scylla = schema_cql(Some(&acme()), &config, true);
        let (comments, statement): (Vec<&str>, Vec<&str>) =
            scylla[0].lines().partition(|l| l.starts_with("-- "));
        assert!(comments.join(" ").contains("2026.1"), "{comments:?}");
        assert!(statement.len() == 1 && statement[0].ends_with("AND tablets = {'enabled': false}"));
        assert!(scylla[1..].iter().all(|cql| !cql.contains("tablets")));
        assert!(!schema_cql(Some(&acme()), &config, false).join("\n").contains("tablets"));
    }

    fn attempt(e: RequestAttemptError) -> ExecutionError {
        ExecutionError::LastAttemptError(e)
    }

    fn db(e: DbError) -> ExecutionError {
        attempt(RequestAttemptError::DbError(e, "from the node".into()))
    }

    fn transient(e: ExecutionError) -> Option<Transient> {
        Failed::from(e).transient
    }

    #[test]
    fn a_full_connection_or_a_refused_request_is_sent_again_whatever_it_does() {
        let unavailable =
            DbError::Unavailable { consistency: Consistency::LocalQuorum, required: 2, alive: 1 };
        for e in [
            attempt(RequestAttemptError::UnableToAllocStreamId),
            db(unavailable),
            db(DbError::IsBootstrapping),
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
        ] {
            assert_eq!(transient(e.clone()), Some(Transient::NotApplied), "{e}");
        }
        // The same errors seen by a paged read, while fetching a page.
        let page = NextRowError::NextPageError(NextPageError::RequestFailure(
            RequestError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
        ));
        assert_eq!(Failed::from(page).transient, Some(Transient::NotApplied));
    }

    #[test]
    fn timeouts_and_an_overloaded_node_may_have_applied_the_request() {
        let write_timeout = DbError::WriteTimeout {
            consistency: Consistency::LocalQuorum,
            received: 1,
            required: 2,
            write_type: WriteType::Simple,
        };
        let read_timeout = DbError::ReadTimeout {
            consistency: Consistency::LocalQuorum,
            received: 1,
            required: 2,
            data_present: false,
        };
        for e in [
            db(DbError::Overloaded),
            db(write_timeout),
            db(read_timeout),
            ExecutionError::RequestTimeout(Duration::from_secs(30)),
        ] {
            assert_eq!(transient(e.clone()), Some(Transient::MaybeApplied), "{e}");
        }
    }

    #[test]
    fn errors_that_would_come_again_are_not_retried() {
        let write_failure = DbError::WriteFailure {
            consistency: Consistency::LocalQuorum,
            received: 1,
            required: 2,
            numfailures: 1,
            write_type: WriteType::Simple,
        };
        for e in [
            db(DbError::SyntaxError),
            db(DbError::Invalid),
            db(DbError::Unauthorized),
            db(DbError::ServerError),
            db(write_failure),
        ] {
            assert_eq!(transient(e.clone()), None, "{e}");
        }
    }

    fn requests(max_in_flight: usize, retries: u32) -> Requests {
        Requests::new(&ScyllaConfig {
            max_in_flight,
            retries,
            retry_backoff: Duration::from_millis(1),
            ..ScyllaConfig::default()
        })
    }

    fn no_stream_id() -> Failed {
        attempt(RequestAttemptError::UnableToAllocStreamId).into()
    }

    #[tokio::test]
    async fn a_transient_failure_is_sent_again_until_it_succeeds() {
        let attempts = AtomicU32::new(0);
        let got = requests(4, 6)
            .run(true, || async {
                if attempts.fetch_add(1, Ordering::Relaxed) < 3 {
                    Err(no_stream_id())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!((got.unwrap(), attempts.into_inner()), (7, 4));
    }

    #[tokio::test]
    async fn retries_end_with_the_error_and_how_long_it_was_tried() {
        let attempts = AtomicU32::new(0);
        let err = requests(4, 2)
            .run(true, || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(no_stream_id())
            })
            .await
            .unwrap_err();
        assert_eq!(attempts.into_inner(), 3);
        let message = err.to_string();
        assert!(
            message.contains("Unable to allocate stream id")
                && message.contains("still failing after 3 attempts"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn what_may_have_been_applied_is_sent_again_only_if_idempotent() {
        for (idempotent, want) in [(true, 2), (false, 1)] {
            let attempts = AtomicU32::new(0);
            let _ = requests(4, 6)
                .run(idempotent, || async {
                    if attempts.fetch_add(1, Ordering::Relaxed) == 0 {
                        Err(Failed::from(ExecutionError::RequestTimeout(Duration::from_secs(30))))
                    } else {
                        Ok(())
                    }
                })
                .await;
            assert_eq!(attempts.into_inner(), want, "idempotent: {idempotent}");
        }
    }

    #[tokio::test]
    async fn an_error_that_would_come_again_is_returned_at_once() {
        let attempts = AtomicU32::new(0);
        let err = requests(4, 6)
            .run(true, || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Failed::from(db(DbError::SyntaxError)))
            })
            .await
            .unwrap_err();
        assert_eq!(attempts.into_inner(), 1);
        assert!(!err.to_string().contains("still failing"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_together_stay_within_the_cap() {
        let gate = requests(3, 0);
        let (running, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let caller = || {
            bounded(16, 0..40, |_| {
                gate.run(true, || async {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
            })
        };
        let (a, b) = tokio::join!(caller(), caller());
        assert_eq!((a.unwrap().len(), b.unwrap().len()), (40, 40));
        assert_eq!(peak.into_inner(), 3, "requests in flight at most, both callers together");
    }

    #[tokio::test]
    async fn after_a_failure_no_item_starts_and_those_running_finish() {
        let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (started_ref, finished_ref) = (&started, &finished);
        let result = bounded(2, 0..10, |i| async move {
            started_ref.fetch_add(1, Ordering::Relaxed);
            if i == 1 {
                return Err(backend("item 1 failed"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            finished_ref.fetch_add(1, Ordering::Relaxed);
            Ok(i)
        })
        .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("item 1 failed"), "{err}");
        assert_eq!((started.into_inner(), finished.into_inner()), (2, 1));
    }
}
