//! Where a tenant's rows live on the cluster, and the statements that reach them.
//!
//! Two layouts, chosen per deployment ([`Tables`]):
//!
//! - **A keyspace per tenant** (`storyline_<tenant>`, the default): the tables of
//!   [`super::schema_cql_for`]. Each tenant has its own TTLs (the tables' default), can be
//!   dropped whole, and is isolated down to its files; but every keyspace is ten tables, and a
//!   cluster pays memory for each table (on ScyllaDB, on every shard): Cassandra warns past 150
//!   tables, about fifteen tenants.
//! - **Shared tables** (one keyspace, `storyline` unless named): the same ten tables once, with
//!   the tenant as the first column of every partition key ([`shared_schema_cql`]). A tenant's
//!   reads name its partitions, so they never see another tenant's rows; its retention is the
//!   TTL each insert carries (`USING TTL ?`), so tenants keep theirs on one table.
//!
//! Each statement is written once, as a template ([`template`]) that the layout renders
//! ([`Names::render`]): the keyspace, and in the shared layout the tenant's key column, its
//! bind marker and the TTL. The values the layout adds (tenant, TTL, a story's slot) are bound
//! by [`Keyed`], spliced among the caller's at the positions the rendering found, so that the
//! caller binds the same values under both layouts.

use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::{CellWriter, RowWriter, WrittenCellProof};
use scylla::statement::prepared::PreparedStatement;

use super::{Dialect, ScyllaConfig};

/// How tenants' rows are laid out, for a whole deployment: every process on a cluster must use
/// the same (a process with the other one sees none of the data).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Tables {
    /// A keyspace of its own per tenant, `storyline_<tenant>`.
    #[default]
    KeyspacePerTenant,
    /// One set of tables in `keyspace`, the tenant in every partition key.
    Shared {
        /// The keyspace of the shared tables.
        keyspace: String,
    },
}

/// The keyspace of the shared tables when none is named.
pub const SHARED_KEYSPACE: &str = "storyline";

/// Checks a keyspace name as CQL takes it unquoted: a letter, then letters, digits or `_`, at
/// most 48 in all.
pub fn check_keyspace(name: &str) -> Result<(), super::StoreError> {
    let mut chars = name.chars();
    let first_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_letter && name.len() <= 48 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(());
    }
    Err(super::backend(format!(
        "{name:?} is not a keyspace name for the shared tables: a letter, then letters, digits \
         or _, at most 48 (set --scylla-keyspace)"
    )))
}

/// Partitions of a tenant's `stories` in the shared layout: listing a tenant's stories reads
/// these, and a story lives in the one its id hashes to.
pub const STORY_SLOTS: i32 = 64;

/// The slot of a story's id in the shared layout.
pub fn story_slot(id: &str) -> i32 {
    (crate::producer::fnv1a(id.as_bytes()) % STORY_SLOTS as u64) as i32
}

/// The CQL that creates the shared tables, once for every tenant.
pub fn shared_schema_cql(keyspace: &str, config: &ScyllaConfig, dialect: Dialect) -> Vec<String> {
    let ks = keyspace;
    let (scylla, tablets) = match dialect {
        Dialect::Scylla(tablets) => (true, tablets.keyspace_option()),
        Dialect::Cassandra => (false, ""),
    };
    // Rows carry their tenant's TTL; the tables' own is the default retention, for rows written
    // without one (none are).
    let queue_options = super::queue_options(config.retention_secs(), scylla);
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}{tablets}",
            config.replication
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.events (tenant text, shard int, bucket bigint, event_id text, source text, \
             kind text, event_time bigint, insert_time bigint, attributes frozen<list<tuple<text, text>>>, payload blob, \
             PRIMARY KEY ((tenant, shard, bucket), event_id)) WITH {queue_options}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.buckets (tenant text, shard int, day bigint, bucket bigint, \
             PRIMARY KEY ((tenant, shard, day), bucket)) WITH {queue_options}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.shards (tenant text, shard int, owner text, epoch bigint, expires_ms bigint, \
             bucket bigint, state blob, closed bigint, {}, PRIMARY KEY ((tenant, shard)))",
            super::SHARD_STATE_COLUMNS
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.shard_state (tenant text, shard int, epoch bigint, slot int, chunk int, \
             data blob, PRIMARY KEY ((tenant, shard, epoch, slot), chunk))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.late (tenant text, shard int, events counter, lateness_ms counter, \
             PRIMARY KEY ((tenant, shard)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.stories (tenant text, slot int, story_id text, revision int, kind text, \
             event_ids list<text>, first_seen bigint, last_seen bigint, fields text, published_ms bigint, \
             PRIMARY KEY ((tenant, slot), story_id, revision)) WITH CLUSTERING ORDER BY (story_id ASC, revision DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.story_feed (tenant text, minute bigint, published_ms bigint, story_id text, \
             revision int, PRIMARY KEY ((tenant, minute), published_ms, story_id, revision)) \
             WITH default_time_to_live = {}",
            config.retention_secs()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dead_letters (tenant text, shard int, bucket bigint, plugin text, \
             reason text, attempts int, at_ms bigint, replay boolean, PRIMARY KEY ((tenant), shard, bucket))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.meta (tenant text, name text, shards int, bucket_ms bigint, \
             PRIMARY KEY ((tenant, name)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.workers (tenant text, owner text, expires_ms bigint, \
             PRIMARY KEY ((tenant), owner)) WITH default_time_to_live = 3600"
        ),
    ]
}

/// Every statement, as a template of both layouts. Placeholders:
/// `{ks}` the keyspace; `{kc}`, `{kv}`, `{kw}` the tenant's column, bind marker and condition
/// (`tenant, `, `?, `, `tenant = ? AND `), `{wt}` a whole-tenant condition (` WHERE tenant = ?`);
/// `{sc}`, `{sv}`, `{ws}`, `{sw}` a story's slot likewise (`slot, `, `?, `, ` AND slot = ?`,
/// `slot = ? AND `); `{ttl}` the TTL of an insert (` USING TTL ?`); `{latest}` what keeps a
/// story's newest revision only (` PER PARTITION LIMIT 1`, keyspace per tenant only: a shared
/// partition holds many stories). All empty in the keyspace-per-tenant layout but `{ks}` and
/// `{latest}`.
pub fn template(statement: Statement) -> &'static str {
    use Statement::*;
    match statement {
        InsertEvent => {
            "INSERT INTO {ks}.events ({kc}shard, bucket, event_id, source, kind, event_time, insert_time, attributes, \
             payload) VALUES ({kv}?, ?, ?, ?, ?, ?, ?, ?, ?){ttl}"
        }
        InsertBucket => {
            "INSERT INTO {ks}.buckets ({kc}shard, day, bucket) VALUES ({kv}?, ?, ?){ttl}"
        }
        // ORDER BY with IN on the partition key is refused on paged queries: run unpaged.
        NewestBuckets => {
            "SELECT shard, bucket FROM {ks}.buckets WHERE {kw}shard IN ? AND day = ? ORDER BY bucket DESC \
             PER PARTITION LIMIT 1"
        }
        NextBucket => {
            "SELECT bucket FROM {ks}.buckets WHERE {kw}shard = ? AND day = ? AND bucket > ? LIMIT 1"
        }
        ReadBucket => {
            "SELECT event_id, source, kind, event_time, insert_time, attributes, payload FROM {ks}.events \
             WHERE {kw}shard = ? AND bucket = ?"
        }
        CountBucket => "SELECT COUNT(*) FROM {ks}.events WHERE {kw}shard = ? AND bucket = ?",
        ReadShard => {
            "SELECT owner, epoch, expires_ms, bucket, state, closed, state_epoch, state_slot, state_chunks, \
             state_bytes FROM {ks}.shards WHERE {kw}shard = ?"
        }
        CreateShard => {
            "INSERT INTO {ks}.shards ({kc}shard, owner, epoch, expires_ms) VALUES ({kv}?, ?, ?, ?) IF NOT EXISTS"
        }
        TakeShard => {
            "UPDATE {ks}.shards SET owner = ?, epoch = ?, expires_ms = ? WHERE {kw}shard = ? IF epoch = ?"
        }
        RenewShard => {
            "UPDATE {ks}.shards SET expires_ms = ? WHERE {kw}shard = ? IF epoch = ? AND owner = ?"
        }
        Commit => "UPDATE {ks}.shards SET bucket = ? WHERE {kw}shard = ? IF epoch = ?",
        CommitWithState => {
            "UPDATE {ks}.shards SET bucket = ?, state = null, state_epoch = ?, state_slot = ?, state_chunks = ?, \
             state_bytes = ? WHERE {kw}shard = ? IF epoch = ?"
        }
        // The closed mark lives in the LWT-only shard row, fenced by the epoch like commits.
        Close => "UPDATE {ks}.shards SET closed = ? WHERE {kw}shard = ? IF epoch = ?",
        ClosedMarks => "SELECT shard, closed FROM {ks}.shards WHERE {kw}shard IN ?",
        WriteStateChunk => {
            "INSERT INTO {ks}.shard_state ({kc}shard, epoch, slot, chunk, data) VALUES ({kv}?, ?, ?, ?, ?)"
        }
        ReadState => {
            "SELECT chunk, data FROM {ks}.shard_state WHERE {kw}shard = ? AND epoch = ? AND slot = ? AND chunk < ?"
        }
        DeleteState => {
            "DELETE FROM {ks}.shard_state WHERE {kw}shard = ? AND epoch = ? AND slot = ?"
        }
        InsertStory => {
            "INSERT INTO {ks}.stories ({kc}{sc}story_id, revision, kind, event_ids, first_seen, last_seen, fields, \
             published_ms) VALUES ({kv}{sv}?, ?, ?, ?, ?, ?, ?, ?)"
        }
        LatestStories => {
            "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms \
             FROM {ks}.stories{wt}{ws}{latest}"
        }
        AllStories => {
            "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms \
             FROM {ks}.stories{wt}{ws}"
        }
        StoryAt => {
            "SELECT story_id, revision, kind, event_ids, first_seen, last_seen, fields, published_ms \
             FROM {ks}.stories WHERE {kw}{sw}story_id = ? AND revision = ?"
        }
        InsertFeed => {
            "INSERT INTO {ks}.story_feed ({kc}minute, published_ms, story_id, revision) VALUES ({kv}?, ?, ?, ?){ttl}"
        }
        FeedSince => {
            "SELECT story_id, revision FROM {ks}.story_feed WHERE {kw}minute = ? AND published_ms >= ?"
        }
        InsertDead => {
            "INSERT INTO {ks}.dead_letters ({kc}shard, bucket, plugin, reason, attempts, at_ms, replay) \
             VALUES ({kv}?, ?, ?, ?, ?, ?, ?)"
        }
        AllDead => {
            "SELECT shard, bucket, plugin, reason, attempts, at_ms, replay FROM {ks}.dead_letters{wt}"
        }
        DeleteDead => "DELETE FROM {ks}.dead_letters WHERE {kw}shard = ? AND bucket = ?",
        Heartbeat => "INSERT INTO {ks}.workers ({kc}owner, expires_ms) VALUES ({kv}?, ?)",
        Workers => "SELECT owner, expires_ms FROM {ks}.workers{wt}",
        ReadLayout => "SELECT shards, bucket_ms FROM {ks}.meta WHERE {kw}name = 'layout'",
        WriteLayout => {
            "INSERT INTO {ks}.meta ({kc}name, shards, bucket_ms) VALUES ({kv}'layout', ?, ?) IF NOT EXISTS"
        }
        AddLate => {
            "UPDATE {ks}.late SET events = events + ?, lateness_ms = lateness_ms + ? WHERE {kw}shard = ?"
        }
        ReadLate => "SELECT events, lateness_ms FROM {ks}.late WHERE {kw}shard = ?",
    }
}

/// Declares [`Statement`] and [`Statement::ALL`] from one list.
macro_rules! statements {
    ($($name:ident),* $(,)?) => {
        /// The statements of the store.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Statement {
            $($name),*
        }

        #[cfg(test)]
        impl Statement {
            /// Every statement.
            pub const ALL: &[Statement] = &[$(Statement::$name),*];
        }
    };
}

statements!(
    InsertEvent,
    InsertBucket,
    NewestBuckets,
    NextBucket,
    ReadBucket,
    CountBucket,
    ReadShard,
    CreateShard,
    TakeShard,
    RenewShard,
    Commit,
    CommitWithState,
    Close,
    ClosedMarks,
    WriteStateChunk,
    ReadState,
    DeleteState,
    InsertStory,
    LatestStories,
    AllStories,
    StoryAt,
    InsertFeed,
    FeedSince,
    InsertDead,
    AllDead,
    DeleteDead,
    Heartbeat,
    Workers,
    ReadLayout,
    WriteLayout,
    AddLate,
    ReadLate,
);

/// A value a layout binds besides the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    Tenant,
    Ttl,
    Slot,
}

/// A statement's CQL as a layout renders it, with where its own values go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The CQL.
    pub cql: String,
    /// The bind markers of the layout's values, by position, in order.
    extras: Vec<(usize, Extra)>,
}

/// What the placeholders of a template become.
#[derive(Debug, Clone)]
pub struct Names {
    keyspace: String,
    shared: bool,
}

impl Names {
    /// The names of a tenant's keyspace.
    pub fn keyspace_per_tenant(keyspace: String) -> Names {
        Names { keyspace, shared: false }
    }

    /// The names of the shared tables in `keyspace`.
    pub fn shared(keyspace: String) -> Names {
        Names { keyspace, shared: true }
    }

    /// Whether these are the shared tables' names.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A template with its placeholders replaced, and where the layout's values go.
    pub fn render(&self, template: &str) -> Rendered {
        let mut cql = String::with_capacity(template.len() + 64);
        let mut extras = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            cql.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else { break };
            let name = &rest[open + 1..open + close];
            rest = &rest[open + close + 1..];
            let (text, extra) = match (name, self.shared) {
                ("ks", _) => (self.keyspace.as_str(), None),
                ("latest", false) => (" PER PARTITION LIMIT 1", None),
                (_, false) => ("", None),
                ("kc", true) => ("tenant, ", None),
                ("kv", true) => ("?, ", Some(Extra::Tenant)),
                ("kw", true) => ("tenant = ? AND ", Some(Extra::Tenant)),
                ("wt", true) => (" WHERE tenant = ?", Some(Extra::Tenant)),
                ("sc", true) => ("slot, ", None),
                ("sv", true) => ("?, ", Some(Extra::Slot)),
                ("ws", true) => (" AND slot = ?", Some(Extra::Slot)),
                ("sw", true) => ("slot = ? AND ", Some(Extra::Slot)),
                ("ttl", true) => (" USING TTL ?", Some(Extra::Ttl)),
                (_, true) => ("", None),
            };
            if let Some(extra) = extra {
                extras.push((markers(&cql), extra));
            }
            cql.push_str(text);
        }
        cql.push_str(rest);
        Rendered { cql, extras }
    }
}

/// Bind markers in `cql` (no statement here has a `?` inside a string literal).
fn markers(cql: &str) -> usize {
    cql.bytes().filter(|&b| b == b'?').count()
}

/// A prepared statement, with where the layout's values go.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// The prepared statement.
    pub prepared: PreparedStatement,
    extras: Vec<(usize, Extra)>,
}

impl Stmt {
    /// `prepared`, prepared from `rendered`.
    pub fn new(prepared: PreparedStatement, rendered: &Rendered) -> Stmt {
        Stmt { prepared, extras: rendered.extras.clone() }
    }
}

/// The values a layout binds for a tenant.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The TTL of its inserts, seconds.
    pub ttl_secs: i32,
    /// The story slot (statements of `stories` only).
    pub slot: i32,
}

impl Key<'_> {
    /// The key of the story `id`.
    pub fn story(self, id: &str) -> Self {
        Key { slot: story_slot(id), ..self }
    }
}

impl Stmt {
    /// The values of this statement for `key`: `values` and the layout's.
    pub fn bind<'a, V>(&'a self, key: Key<'a>, values: V) -> Keyed<'a, V> {
        Keyed { extras: &self.extras, key, values }
    }
}

/// A statement's values: the caller's, and the layout's spliced in at their positions.
pub struct Keyed<'a, V> {
    /// Where the layout's values go.
    extras: &'a [(usize, Extra)],
    /// The tenant's values.
    key: Key<'a>,
    /// The caller's values, as in the keyspace-per-tenant layout.
    values: V,
}

impl<V: SerializeRow> SerializeRow for Keyed<'_, V> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        let extras = self.extras;
        if extras.is_empty() {
            return self.values.serialize(ctx, writer);
        }
        let columns = ctx.columns();
        let extra_at = |i: usize| extras.iter().find(|(at, _)| *at == i).map(|(_, e)| *e);
        // The caller's values, serialized against their own columns, then copied cell by cell
        // with the layout's in between.
        let own: Vec<_> = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| extra_at(*i).is_none())
            .map(|(_, c)| c.clone())
            .collect();
        let mut buf = Vec::new();
        self.values
            .serialize(&RowSerializationContext::from_specs(&own), &mut RowWriter::new(&mut buf))?;
        let mut cells = Cells(&buf);
        for (i, column) in columns.iter().enumerate() {
            let cell = writer.make_cell_writer();
            match extra_at(i) {
                Some(Extra::Tenant) => self.key.tenant.serialize(column.typ(), cell)?,
                Some(Extra::Ttl) => self.key.ttl_secs.serialize(column.typ(), cell)?,
                Some(Extra::Slot) => self.key.slot.serialize(column.typ(), cell)?,
                None => cells.copy_next(cell)?,
            };
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.extras.is_empty() && self.values.is_empty()
    }
}

/// Serialized cells: each a length (`-1` null, `-2` unset) and its bytes.
struct Cells<'a>(&'a [u8]);

impl Cells<'_> {
    fn copy_next<'b>(
        &mut self,
        cell: CellWriter<'b>,
    ) -> Result<WrittenCellProof<'b>, SerializationError> {
        let malformed = || SerializationError::new(MalformedCells);
        let (len, rest) = self.0.split_first_chunk::<4>().ok_or_else(malformed)?;
        match i32::from_be_bytes(*len) {
            -1 => {
                self.0 = rest;
                Ok(cell.set_null())
            }
            -2 => {
                self.0 = rest;
                Ok(cell.set_unset())
            }
            n => {
                let n = usize::try_from(n).map_err(|_| malformed())?;
                let (value, rest) = rest.split_at_checked(n).ok_or_else(malformed)?;
                self.0 = rest;
                cell.set_value(value).map_err(SerializationError::new)
            }
        }
    }
}

/// The caller's values serialized to fewer cells than their columns.
#[derive(Debug, thiserror::Error)]
#[error("the values of a statement did not fill its bind markers")]
struct MalformedCells;

#[cfg(test)]
mod tests {
    use scylla::frame::response::result::{ColumnSpec, ColumnType, NativeType, TableSpec};

    use super::*;

    #[test]
    fn the_keyspace_layout_renders_the_statements_as_they_were() {
        let names = Names::keyspace_per_tenant("storyline_acme".into());
        let r = names.render(template(Statement::TakeShard));
        assert_eq!(
            r.cql,
            "UPDATE storyline_acme.shards SET owner = ?, epoch = ?, expires_ms = ? WHERE shard = ? IF epoch = ?"
        );
        assert!(r.extras.is_empty());
        let r = names.render(template(Statement::LatestStories));
        assert!(r.cql.ends_with("FROM storyline_acme.stories PER PARTITION LIMIT 1"), "{}", r.cql);
    }

    #[test]
    fn the_shared_layout_keys_every_statement_by_tenant_and_finds_its_markers() {
        let names = Names::shared("storyline".into());
        let r = names.render(template(Statement::TakeShard));
        assert_eq!(
            r.cql,
            "UPDATE storyline.shards SET owner = ?, epoch = ?, expires_ms = ? WHERE tenant = ? AND shard = ? IF epoch = ?"
        );
        assert_eq!(r.extras, [(3, Extra::Tenant)]);
        let r = names.render(template(Statement::InsertEvent));
        assert!(r.cql.ends_with("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"), "{}", r.cql);
        assert_eq!(r.extras, [(0, Extra::Tenant), (10, Extra::Ttl)]);
        let r = names.render(template(Statement::StoryAt));
        assert!(r.cql.ends_with("WHERE tenant = ? AND slot = ? AND story_id = ? AND revision = ?"));
        assert_eq!(r.extras, [(0, Extra::Tenant), (1, Extra::Slot)]);
        let r = names.render(template(Statement::LatestStories));
        assert!(
            r.cql.ends_with("FROM storyline.stories WHERE tenant = ? AND slot = ?"),
            "{}",
            r.cql
        );
        // Every statement of the shared layout names its tenant.
        assert_eq!(Statement::ALL.len(), 32);
        for &s in Statement::ALL {
            let r = names.render(template(s));
            assert!(r.cql.contains("tenant"), "{s:?}: {}", r.cql);
            assert!(!r.cql.contains('{'), "{s:?}: {}", r.cql);
        }
    }

    /// The bytes `values` serialize to against `columns`.
    fn serialized(columns: &[ColumnSpec<'_>], values: &impl SerializeRow) -> Vec<u8> {
        let mut buf = Vec::new();
        values
            .serialize(&RowSerializationContext::from_specs(columns), &mut RowWriter::new(&mut buf))
            .unwrap();
        buf
    }

    #[test]
    fn the_layouts_values_are_spliced_among_the_callers_at_their_markers() {
        let spec = |name, typ| ColumnSpec::borrowed(name, typ, TableSpec::borrowed("ks", "t"));
        let columns = [
            spec("tenant", ColumnType::Native(NativeType::Text)),
            spec("owner", ColumnType::Native(NativeType::Text)),
            spec("shard", ColumnType::Native(NativeType::Int)),
            spec("closed", ColumnType::Native(NativeType::BigInt)),
            spec("[ttl]", ColumnType::Native(NativeType::Int)),
        ];
        let extras = [(0, Extra::Tenant), (4, Extra::Ttl)];
        let key = Key { tenant: "acme", ttl_secs: 3600, slot: 0 };
        let caller = ("w1", 7i32, None::<i64>);
        let keyed = Keyed { extras: &extras, key, values: caller };
        let whole = ("acme", "w1", 7i32, None::<i64>, 3600i32);
        assert_eq!(serialized(&columns, &keyed), serialized(&columns, &whole));
        // Without extras the caller's values go as they are.
        let plain = Keyed { extras: &[], key, values: whole };
        assert_eq!(serialized(&columns, &plain), serialized(&columns, &whole));
        // Too few values for the markers: an error, not a statement sent short.
        let short = Keyed { extras: &extras, key, values: ("w1", 7i32) };
        let mut buf = Vec::new();
        let ctx = RowSerializationContext::from_specs(&columns);
        assert!(short.serialize(&ctx, &mut RowWriter::new(&mut buf)).is_err());
    }

    #[test]
    fn story_slots_spread_and_stay_in_range() {
        let slots: std::collections::BTreeSet<i32> =
            (0..1000).map(|i| story_slot(&format!("story-{i}"))).collect();
        assert!(slots.iter().all(|s| (0..STORY_SLOTS).contains(s)));
        assert_eq!(slots.len(), STORY_SLOTS as usize);
    }
}
