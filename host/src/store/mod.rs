//! Where events, offsets, leases, stories and dead letters live: one trait, [`Store`], holding
//! exactly what the loop needs, with an embedded implementation ([`embedded`], the default) and
//! a ScyllaDB one ([`scylla`]).
//!
//! The shape follows "ScyllaDB as the queue": events are written only into partitions keyed by
//! `(shard, insert-time bucket)` with the event id as clustering key; a worker keeps, per shard,
//! the last bucket it consumed (the offset) together with its plugin's state, and moves it only
//! forward, under a lease whose epoch fences out a worker that lost the shard.

mod bucket_events;
pub mod embedded;
mod event_log;
pub mod scylla;
mod state_files;

use std::future::Future;

use crate::model::{BucketStart, Event, ShardId, Story, TenantId, TimestampMs};
pub use bucket_events::BucketEvents;

/// What changed in a tenant's data (see [`Store::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Events were appended.
    Events,
    /// A dead letter was written (or marked for replay).
    DeadLetters,
}

/// Told of every [`Change`] of a store.
pub type ChangeHook = std::sync::Arc<dyn Fn(&TenantId, Change) + Send + Sync>;

/// An event ready to be stored: the producer has chosen its shard and bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The shard its routing key maps to.
    pub shard: ShardId,
    /// The insert-time bucket.
    pub bucket: BucketStart,
    /// The event, with `insert_time` set.
    pub event: Event,
}

/// What a worker committed for a shard: the last bucket consumed, and the plugin state that
/// goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every bucket up to and including this one has been processed and its stories published.
    pub bucket: BucketStart,
    /// The plugin's snapshot after that bucket.
    pub state: Vec<u8>,
    /// The lease epoch under which it was committed.
    pub epoch: u64,
}

/// A worker's claim on a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: ShardId,
    /// Who holds it (`host:pid` by default).
    pub owner: String,
    /// Incremented at every change of owner: the fencing token of commits.
    pub epoch: u64,
    /// When it lapses unless renewed, epoch ms.
    pub expires_ms: TimestampMs,
}

/// A published story, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStory {
    /// The story.
    pub story: Story,
    /// When this revision was published, epoch ms.
    pub published_ms: TimestampMs,
}

/// A bucket a plugin could not process, kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The shard.
    pub shard: ShardId,
    /// The bucket.
    pub bucket: BucketStart,
    /// The plugin (name and hash) that failed.
    pub plugin: String,
    /// Why, as the error said it.
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was recorded, epoch ms.
    pub at_ms: TimestampMs,
    /// An operator asked for it to be processed again (`storyline replay`); the shard's
    /// worker does so and removes the letter.
    pub replay: bool,
}

/// Events a producer wrote into buckets a worker had already closed, redirected to the first
/// open bucket of their shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LateStats {
    /// How many.
    pub events: u64,
    /// Sum of their lateness (redirected bucket minus intended bucket), ms.
    pub lateness_ms: u64,
}

/// How a tenant's stream is cut; fixed when the tenant's first event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of shards.
    pub shards: u32,
    /// Bucket length, ms.
    pub bucket_ms: i64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { shards: 4, bucket_ms: 1000 }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine or the cluster failed; nothing of the operation was applied.
    #[error("store {backend}: {message}")]
    Backend {
        /// `embedded` or `scylla`.
        backend: &'static str,
        /// What failed, with the engine's message.
        message: String,
    },
    /// A commit under a lease epoch that is no longer current: another worker owns the shard.
    #[error(
        "tenant {tenant}, shard {shard}: commit refused, the lease moved to epoch {current} (this worker held epoch {held}); the shard belongs to another worker now"
    )]
    Fenced {
        /// The tenant.
        tenant: TenantId,
        /// The shard.
        shard: ShardId,
        /// The epoch the committer held.
        held: u64,
        /// The epoch now current.
        current: u64,
    },
    /// A write that does not fit the tenant's layout.
    #[error("tenant {tenant}: {message}")]
    Layout {
        /// The tenant.
        tenant: TenantId,
        /// What does not fit and what to do.
        message: String,
    },
    /// Stored data that cannot be decoded.
    #[error("store {backend}: corrupt record in {what}: {message}")]
    Corrupt {
        /// `embedded` or `scylla`.
        backend: &'static str,
        /// Which table or keyspace.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
}

impl StoreError {
    /// A write whose layout differs from the one the tenant was created with.
    pub fn layout_mismatch(tenant: &TenantId, existing: Layout, wanted: Layout) -> Self {
        StoreError::Layout {
            tenant: tenant.clone(),
            message: format!(
                "it was created with {} shards and {} ms buckets; this write uses {} shards and {} ms buckets (pass the same --shards and --bucket-ms, or use a new tenant)",
                existing.shards, existing.bucket_ms, wanted.shards, wanted.bucket_ms
            ),
        }
    }

    /// An event routed to a shard the layout does not have.
    pub fn shard_out_of_range(tenant: &TenantId, shard: ShardId, layout: Layout) -> Self {
        StoreError::Layout {
            tenant: tenant.clone(),
            message: format!("shard {shard} is outside 0..{}", layout.shards),
        }
    }
}

/// What the loop needs from storage. Every method is about one tenant; tenants never share
/// data. Writes are durable when the future resolves `Ok`.
pub trait Store: Clone + Send + Sync + 'static {
    /// The tenant's layout, or `None` before its first event.
    fn layout(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<Layout>, StoreError>> + Send;

    /// Appends events atomically: all are durable, or none is. Fails with
    /// [`StoreError::Layout`] if `layout` differs from the tenant's.
    fn append(
        &self,
        tenant: &TenantId,
        layout: Layout,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The first non-empty bucket of `shard` after `after` (from the start when `None`).
    /// Empty buckets cost nothing: the store keeps an index of non-empty ones.
    fn next_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> impl Future<Output = Result<Option<BucketStart>, StoreError>> + Send;

    /// Closes every bucket of the shard up to and including `to` for writing, under `lease`
    /// (fenced like a commit). From then on (after [`Store::close_grace_ms`]) an event a
    /// producer writes into a closed bucket — its clock lags, or its write was slow — lands in
    /// the first open bucket instead and is counted as late: nothing is written behind a
    /// worker. Closing never moves backwards.
    fn close_buckets(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        to: BucketStart,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The last closed bucket of a shard.
    fn closed_until(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<BucketStart>, StoreError>> + Send;

    /// How long after [`Store::close_buckets`] returns every producer honours it: a worker
    /// reads a closed bucket only after this. 0 when producers and workers share the store's
    /// lock (embedded); on a cluster, producers re-read the closed buckets periodically.
    fn close_grace_ms(&self) -> i64;

    /// How long `tenant`'s events are kept before the store drops them (`None`: until
    /// deleted). A lag approaching it means events would expire unread: status and workers
    /// raise an alarm.
    fn retention_ms(&self, tenant: &TenantId) -> Option<i64>;

    /// Late events redirected on a shard so far.
    fn late_stats(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> impl Future<Output = Result<LateStats, StoreError>> + Send;

    /// Every event of one `(shard, bucket)` partition, in event-id order.
    fn read_bucket(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> impl Future<Output = Result<BucketEvents, StoreError>> + Send;

    /// Events written to `shard` in buckets after `after`: the lag in events.
    fn pending_events(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        after: Option<BucketStart>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The bucket of the shard's last commit, without its state (which may be tens of
    /// megabytes): for status and metrics.
    fn committed_offset(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<BucketStart>, StoreError>> + Send;

    /// The shard's last commit.
    fn load_checkpoint(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// Moves the shard's offset to `bucket` with the plugin state (`None`: unchanged since the
    /// last commit), only if `lease` is still current; otherwise [`StoreError::Fenced`].
    fn commit(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        bucket: BucketStart,
        state: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the shard for `owner` until `now + ttl_ms` if it is free, expired or already
    /// `owner`'s. A change of owner increments the epoch. `None`: someone else holds it.
    fn acquire_lease(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Extends a held lease; `None` if it was lost (expired and taken, or released).
    fn renew_lease(
        &self,
        tenant: &TenantId,
        lease: &Lease,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Gives a lease up so another worker can take the shard at once.
    fn release_lease(
        &self,
        tenant: &TenantId,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Announces that worker `owner` is alive until `now + ttl_ms`. Workers share a tenant's
    /// shards fairly among the live ones.
    fn heartbeat(
        &self,
        tenant: &TenantId,
        owner: &str,
        ttl_ms: i64,
        now: TimestampMs,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Workers whose heartbeat has not expired at `now`, sorted.
    fn live_workers(
        &self,
        tenant: &TenantId,
        now: TimestampMs,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The current lease of a shard, if any (for status).
    fn lease(
        &self,
        tenant: &TenantId,
        shard: ShardId,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Publishes stories. Idempotent: publishing the same `(id, revision)` again overwrites it.
    fn publish(
        &self,
        tenant: &TenantId,
        stories: &[Story],
        now: TimestampMs,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Published stories: the latest revision of each (or every revision), ordered by id and
    /// revision.
    fn stories(
        &self,
        tenant: &TenantId,
        all_revisions: bool,
    ) -> impl Future<Output = Result<Vec<StoredStory>, StoreError>> + Send;

    /// Every revision published at or after `since_ms`, in publication order (what `stories
    /// --follow` polls). This default reads every story and filters; a store with an index of
    /// publications answers from it.
    fn stories_since(
        &self,
        tenant: &TenantId,
        since_ms: TimestampMs,
    ) -> impl Future<Output = Result<Vec<StoredStory>, StoreError>> + Send
    where
        Self: Sync,
    {
        async move {
            let mut stories = self.stories(tenant, true).await?;
            stories.retain(|s| s.published_ms >= since_ms);
            stories.sort_by_key(|s| s.published_ms);
            Ok(stories)
        }
    }

    /// Whether several processes may use this store at once (ScyllaDB); the embedded store
    /// belongs to the one process that opened it.
    fn shared(&self) -> bool {
        true
    }

    /// Where `tenant`'s rows are, for messages (`keyspace storyline_acme`); `None` when the
    /// store cannot say.
    fn place_of(&self, _tenant: &TenantId) -> Option<String> {
        None
    }

    /// Closes what this process holds open for `tenant`, so that another process may open it
    /// (the embedded store's directory lock). Nothing for a shared store.
    fn release(&self, _tenant: &TenantId) {}

    /// The newest non-empty bucket of each of the tenant's first `shards` shards among recent
    /// writes (`None` for a shard without any), in one request: how an idle host polling a
    /// store that cannot announce writes ([`Store::watch`]) learns which shards have new
    /// events without asking every shard. `Ok(None)`: this store cannot tell; every idle shard
    /// then looks for itself.
    fn newest_buckets(
        &self,
        _tenant: &TenantId,
        _shards: u32,
    ) -> impl Future<Output = Result<Option<Vec<Option<BucketStart>>>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Calls `hook` after every durable change that gives workers something to do (events
    /// appended, a dead letter written), so that idle workers sleep until then instead of
    /// polling. `false`: this store cannot tell (other processes write to it) and workers poll.
    fn watch(&self, _hook: ChangeHook) -> bool {
        false
    }

    /// Records a bucket that could not be processed (overwrites the record of the same bucket).
    fn put_dead_letter(
        &self,
        tenant: &TenantId,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the dead letter of a bucket (it was replayed).
    fn delete_dead_letter(
        &self,
        tenant: &TenantId,
        shard: ShardId,
        bucket: BucketStart,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Dead letters, by shard and bucket.
    fn dead_letters(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StoreError>> + Send;
}
