//! The worker loop, one per shard it can lease:
//!
//! lease → offset and plugin state → wait until the next non-empty bucket ends before
//! `now - delay` → read the whole partition → plugin `process` → publish → commit (offset and
//! state, fenced by the lease epoch).
//!
//! Each shard runs on its own OS thread: a guest that computes for a long time occupies that
//! thread only (and is stopped by its deadline), never the async runtime that serves the store.
//! Store calls are made through a runtime handle.
//!
//! When no bucket is pending the plugin still hears of time passing: every `tick_ms` it gets an
//! empty bucket (the latest ready one) so that sessions seen by one sensor close on their
//! timeout. That bucket is committed like any other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::catalog::{Active, Slot};
use crate::model::{BucketStart, ShardId, Story, TenantId, TimestampMs};
use crate::plugin::{BucketHeader, CallError, Limits, PluginInstance};
use crate::producer::now_ms;
use crate::store::{BucketEvents, DeadLetter, Layout, Lease, Store, StoreError};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A bucket is read once it ended this long ago, so producers with slightly late clocks are
    /// not overtaken. Default 2 000 ms.
    pub delay_ms: i64,
    /// Sleep between polls when nothing is ready. Default 100 ms.
    pub poll_ms: u64,
    /// Lease lifetime; renewed at a third of it. Default 10 000 ms.
    pub lease_ttl_ms: i64,
    /// Time passes for the plugin at least this often when idle (spaced further for a large
    /// state, see [`SNAPSHOT_SPACING`]). Default 1 000 ms.
    pub tick_ms: i64,
    /// Stop when caught up and nothing new arrived for a bucket; drain the plugin first.
    pub exit_when_idle: bool,
    /// Lease owner name.
    pub owner: String,
    /// Limits of each plugin call.
    pub limits: Limits,
    /// Attempts at a failing bucket before it is dead-lettered. Default 3.
    pub attempts: u32,
    /// What a shard does with a bucket that failed every attempt. Default: skip it.
    pub on_failure: OnFailure,
    /// First wait before trying a failing bucket again, ms; doubles with every further
    /// failure up to 30 s, and starts over after a healthy minute. Default 1 000.
    pub backoff_ms: u64,
    /// Offset and plugin state are committed at most this often while buckets flow (and at
    /// every tick that changed something, at shutdown, handover and drain). A crash replays
    /// the buckets since the last commit; their stories are the same and overwrite themselves.
    /// Default 5 000 ms; a large state spaces them further (see [`SNAPSHOT_SPACING`]).
    pub checkpoint_ms: i64,
}

/// Checkpoints and idle ticks each take a snapshot of the plugin's state, whose cost grows with
/// the state (open sessions, and published ones kept for late events). They are spaced at least
/// this many times the last snapshot's cost apart, so that snapshots take at most about a
/// twentieth of a shard's time however large the state: with a 1 s snapshot, checkpoints come
/// every 20 s (a crash then replays up to 20 s of buckets) and idle ticks every 20 s.
pub const SNAPSHOT_SPACING: i64 = 20;

/// The interval `base_ms`, widened for a snapshot that costs `snapshot_ms`.
pub fn spaced(base_ms: i64, snapshot_ms: i64) -> i64 {
    base_ms.max(snapshot_ms.saturating_mul(SNAPSHOT_SPACING))
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            delay_ms: 2000,
            poll_ms: 100,
            lease_ttl_ms: 10_000,
            tick_ms: 1000,
            exit_when_idle: false,
            owner: format!("{}:{}", hostname(), std::process::id()),
            limits: Limits::default(),
            attempts: 3,
            on_failure: OnFailure::Skip,
            backoff_ms: 1000,
            checkpoint_ms: 5000,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// What a shard does with a bucket its plugin failed on every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Record a dead letter and go on with the next bucket (`storyline replay` processes the
    /// bucket later).
    #[default]
    Skip,
    /// Record a dead letter and stay on the bucket, trying again with backoff (for instance
    /// until a fixed plugin version is installed); other shards and tenants go on.
    Pause,
}

/// Longest wait between attempts.
const MAX_BACKOFF_MS: u64 = 30_000;
/// A shard healthy for this long forgets its earlier failures.
const HEALTHY_MS: i64 = 60_000;
/// How often a shard looks for dead letters to replay.
const REPLAY_CHECK_MS: i64 = 2_000;

/// Counters shared by the shard threads of a run.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events handed to the plugin.
    pub events: AtomicU64,
    /// Buckets processed (including empty ticks).
    pub buckets: AtomicU64,
    /// Stories published (each revision counts).
    pub stories: AtomicU64,
    /// Buckets dead-lettered.
    pub dead_letters: AtomicU64,
}

/// Where stories go besides the store.
pub type StorySink = Arc<dyn Fn(&[Story]) + Send + Sync>;

/// What the shards of a run share: an extra story sink, counters, and the stop flag.
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)] // holds a closure
pub struct Shared {
    /// Extra destination for published stories (JSONL output).
    pub sink: Option<StorySink>,
    /// Counters.
    pub progress: Arc<Progress>,
    /// Set to stop every shard after its current bucket.
    pub shutdown: Arc<AtomicBool>,
}

/// Why a shard stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugin could not be set up for the shard (init or restore failed).
    #[error(transparent)]
    Plugin(#[from] CallError),
}

/// Runs every shard of `tenant` until `shutdown` is set (or, with `exit_when_idle`, until all
/// shards are caught up). Returns when every shard thread has finished its current bucket,
/// committed and released its lease.
pub fn run_tenant<S: Store + Clone>(
    handle: &Handle,
    store: &S,
    tenant: &TenantId,
    slot: &Arc<Slot>,
    config: &WorkerConfig,
    shared: &Shared,
) -> Result<(), WorkerError> {
    // A tenant whose first events are still to come: wait for them (a worker may start before
    // its producers). With exit_when_idle, a tenant that stays empty is simply done.
    let waiting_since = now_ms();
    let layout = loop {
        if let Some(layout) = handle.block_on(store.layout(tenant))? {
            break layout;
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        if config.exit_when_idle && now_ms() - waiting_since > config.delay_ms + 1000 {
            tracing::info!(%tenant, "no events; nothing to do");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(config.poll_ms));
    };
    let share = Arc::new(FairShare::default());
    beat(handle, store, tenant, config, layout, &share)?;
    let stop_heartbeat = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (handle, store, tenant, config, share, stop) = (
            handle.clone(),
            store.clone(),
            tenant.clone(),
            config.clone(),
            share.clone(),
            stop_heartbeat.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(config.poll_ms * 5));
                if let Err(e) = beat(&handle, &store, &tenant, &config, layout, &share) {
                    tracing::warn!(%tenant, "heartbeat failed: {e}");
                }
            }
        })
    };
    let mut threads = Vec::new();
    for shard in 0..layout.shards {
        let name = format!("shard-{tenant}-{shard}");
        let worker = ShardWorker {
            handle: handle.clone(),
            store: store.clone(),
            tenant: tenant.clone(),
            shard: ShardId(shard),
            layout,
            slot: slot.clone(),
            config: config.clone(),
            sink: shared.sink.clone(),
            progress: shared.progress.clone(),
            shutdown: shared.shutdown.clone(),
            share: share.clone(),
            last_alarm: std::cell::Cell::new(i64::MIN),
        };
        let spawned = std::thread::Builder::new().name(name).spawn(move || worker.run());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Shards already started keep running until shutdown; the heartbeat stops.
                stop_heartbeat.store(true, Ordering::Relaxed);
                return Err(WorkerError::Store(StoreError::Backend {
                    backend: "worker",
                    message: format!("cannot start a shard thread: {e}"),
                }));
            }
        }
    }
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(%tenant, "shard stopped: {e}");
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(WorkerError::Store(StoreError::Backend {
                    backend: "worker",
                    message: "a shard thread panicked".into(),
                }));
            }
        }
    }
    stop_heartbeat.store(true, Ordering::Relaxed);
    let _ = heartbeat.join();
    // Leave at once rather than when the heartbeat expires, so the next worker gets every shard.
    if let Err(e) = handle.block_on(store.heartbeat(tenant, &config.owner, -1, now_ms())) {
        tracing::warn!(%tenant, "cannot withdraw the heartbeat: {e}");
    }
    first_error.map_or(Ok(()), Err)
}

/// Announces this worker and recomputes its fair share of the tenant's shards.
fn beat<S: Store>(
    handle: &Handle,
    store: &S,
    tenant: &TenantId,
    config: &WorkerConfig,
    layout: Layout,
    share: &FairShare,
) -> Result<(), StoreError> {
    let now = now_ms();
    handle.block_on(store.heartbeat(tenant, &config.owner, config.lease_ttl_ms, now))?;
    let live = handle.block_on(store.live_workers(tenant, now))?.len().max(1) as u32;
    share.fair.store(layout.shards.div_ceil(live), Ordering::Relaxed);
    Ok(())
}

/// One shard's loop and everything it needs.
struct ShardWorker<S> {
    /// Runtime handle for store calls.
    handle: Handle,
    /// The store.
    store: S,
    /// The tenant.
    tenant: TenantId,
    /// The shard served.
    shard: ShardId,
    /// The tenant's layout (bucket length).
    layout: Layout,
    /// The tenant's plugin, as the plugin directory has it now; this shard runs its own
    /// instance and takes a new version at a bucket boundary.
    slot: Arc<Slot>,
    /// Settings.
    config: WorkerConfig,
    /// Extra destination for stories.
    sink: Option<StorySink>,
    /// Shared counters.
    progress: Arc<Progress>,
    /// Set to stop after the current bucket.
    shutdown: Arc<AtomicBool>,
    /// How many shards this worker holds and may hold.
    share: Arc<FairShare>,
    /// When the lag alarm was last logged (at most once a minute).
    last_alarm: std::cell::Cell<TimestampMs>,
}

/// Why a shard's loop ended.
enum Stop {
    /// Shut down, drained, or the lease was lost: the thread ends.
    Done,
    /// The tenant's plugin was removed: the shard waits for one, offset kept.
    Unloaded,
    /// The lease lapsed and another worker took the shard (this one stalled): nothing is
    /// committed (the commit would be fenced); the thread waits to take a shard again.
    Lost,
    /// The shard goes to another worker; this thread waits to take a shard again.
    Handoff,
}

/// This worker's part of a tenant's shards, kept by the heartbeat thread of [`run_tenant`].
#[derive(Debug, Default)]
struct FairShare {
    /// Shards this worker holds now.
    held: AtomicU32,
    /// `ceil(shards / live workers)`.
    fair: AtomicU32,
    /// A handover is under way (one shard at a time is handed over).
    handing_over: AtomicBool,
}

/// The running state of a shard: lease, offset, plugin instance.
struct Cursor {
    /// The plugin version the instance runs.
    active: Arc<Active>,
    /// The slot generation last acted on.
    seen_generation: u64,
    /// The lease held; commits are fenced by its epoch.
    lease: Lease,
    /// The last bucket processed (committed or not).
    offset: Option<BucketStart>,
    /// The last committed bucket.
    committed: Option<BucketStart>,
    /// When the last commit was made.
    committed_at: TimestampMs,
    /// The plugin instance holding the shard's open sessions.
    instance: PluginInstance,
    /// Digest of the last committed state: an unchanged state is not rewritten.
    state_digest: u64,
    /// Digest of a fresh instance's state: a shard holding nothing needs no ticks.
    blank_digest: u64,
    /// Buckets up to this one are closed for writing and may be read.
    closed: Option<BucketStart>,
    /// A close under way: buckets up to the first may be read from the second on (the store's
    /// grace, during which producers learn of it).
    closing: Option<(BucketStart, TimestampMs)>,
    /// When the lease was last renewed.
    renewed_at: TimestampMs,
    /// When time last passed for the plugin.
    last_tick: TimestampMs,
    /// What the last snapshot cost (taking it, and writing it when committed), ms.
    snapshot_ms: i64,
    /// Failures in a row (reset after a healthy minute): the backoff exponent.
    failures: u32,
    /// When the last failure happened.
    failed_at: TimestampMs,
    /// Paused on a bucket that failed every attempt (`OnFailure::Pause`): not before then.
    paused: Option<(BucketStart, TimestampMs)>,
    /// When dead letters to replay were last looked for.
    replay_checked: TimestampMs,
}

impl<S: Store> ShardWorker<S> {
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.handle.block_on(f)
    }

    fn run(self) -> Result<(), WorkerError> {
        loop {
            let Some(mut cursor) = self.start()? else { return Ok(()) };
            let result = self.serve(&mut cursor);
            let released = self.block(self.store.release_lease(&self.tenant, &cursor.lease));
            self.share.held.fetch_sub(1, Ordering::Relaxed);
            match result? {
                // Handed over to a worker that joined: wait for the shard to be ours again.
                Stop::Handoff => {
                    self.share.handing_over.store(false, Ordering::Relaxed);
                    released?;
                    tracing::info!(tenant = %self.tenant, shard = %self.shard, "handed over");
                }
                Stop::Lost => {}
                Stop::Unloaded => {
                    released?;
                    tracing::warn!(tenant = %self.tenant, shard = %self.shard, "no plugin: shard stopped at its commit until one is installed");
                }
                Stop::Done => return released.map_err(WorkerError::from),
            }
        }
    }

    /// Takes the lease (waiting while another worker holds it), restores offset and state.
    fn start(&self) -> Result<Option<Cursor>, WorkerError> {
        loop {
            let Some(active) = self.wait_for_plugin() else { return Ok(None) };
            let generation = self.slot.generation();
            let Some(lease) = self.lease()? else { return Ok(None) };
            match self.open(lease.clone(), active) {
                Ok(cursor) => return Ok(Some(cursor)),
                Err(WorkerError::Plugin(e)) => {
                    // This version cannot take the shard (init or restore failed): the shard
                    // waits at its commit for another version; other shards and tenants go on.
                    self.slot.record_error(format!(
                        "shard {}: {e}; the shard waits at its last commit for another plugin version",
                        self.shard
                    ));
                    self.block(self.store.release_lease(&self.tenant, &lease))?;
                    self.share.held.fetch_sub(1, Ordering::Relaxed);
                    if self.config.exit_when_idle {
                        return Err(WorkerError::Plugin(e));
                    }
                    while self.slot.generation() == generation
                        && !self.shutdown.load(Ordering::Relaxed)
                    {
                        std::thread::sleep(Duration::from_millis(self.config.poll_ms));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The tenant's plugin, waiting while it has none (`None`: stop).
    fn wait_for_plugin(&self) -> Option<Arc<Active>> {
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(active) = self.slot.active() {
                return Some(active);
            }
            if self.config.exit_when_idle {
                tracing::warn!(tenant = %self.tenant, shard = %self.shard, "no plugin; nothing to do");
                return None;
            }
            std::thread::sleep(Duration::from_millis(self.config.poll_ms));
        }
    }

    /// Takes the lease, waiting while another worker holds it (`None`: stop).
    fn lease(&self) -> Result<Option<Lease>, WorkerError> {
        let lease = loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let now = now_ms();
            // Take a shard only within this worker's fair share of the tenant's shards (unless
            // its lease is already ours), so that workers split them.
            let current = self.block(self.store.lease(&self.tenant, self.shard))?;
            let ours = current
                .as_ref()
                .is_some_and(|l| l.owner == self.config.owner && l.expires_ms > now);
            // A batch run (exit_when_idle) takes every free shard: it is there to finish.
            let within_share = self.config.exit_when_idle
                || self.share.held.load(Ordering::Relaxed)
                    < self.share.fair.load(Ordering::Relaxed);
            let got = if ours || within_share {
                self.block(self.store.acquire_lease(
                    &self.tenant,
                    self.shard,
                    &self.config.owner,
                    self.config.lease_ttl_ms,
                    now,
                ))?
            } else {
                None
            };
            match got {
                Some(lease) => {
                    self.share.held.fetch_add(1, Ordering::Relaxed);
                    break lease;
                }
                None if self.config.exit_when_idle => {
                    tracing::warn!(
                        tenant = %self.tenant,
                        shard = %self.shard,
                        holder = ?current.map(|l| l.owner),
                        "another worker holds this shard; this batch run leaves it to that worker"
                    );
                    return Ok(None);
                }
                None => std::thread::sleep(Duration::from_millis(self.config.poll_ms * 5)),
            }
        };
        Ok(Some(lease))
    }

    /// Restores offset and state under `lease` into an instance of `active`.
    fn open(&self, lease: Lease, active: Arc<Active>) -> Result<Cursor, WorkerError> {
        let checkpoint = self.block(self.store.load_checkpoint(&self.tenant, self.shard))?;
        let mut instance =
            active.plugin.instantiate(&self.tenant, &active.config, self.config.limits)?;
        let (offset, state) = match checkpoint {
            Some(cp) => (Some(cp.bucket), cp.state),
            None => (None, Vec::new()),
        };
        let blank_digest = digest(&instance.snapshot()?);
        let closed = self.block(self.store.closed_until(&self.tenant, self.shard))?;
        if !state.is_empty() {
            instance.restore(&state)?;
        }
        tracing::info!(tenant = %self.tenant, shard = %self.shard, epoch = lease.epoch, ?offset, plugin = %instance.info().label(), "shard started");
        let now = now_ms();
        Ok(Cursor {
            seen_generation: active.generation,
            active,
            lease,
            offset,
            committed: offset,
            committed_at: now,
            instance,
            state_digest: if state.is_empty() { blank_digest } else { digest(&state) },
            blank_digest,
            closed,
            closing: None,
            renewed_at: now,
            last_tick: now,
            snapshot_ms: 0,
            failures: 0,
            failed_at: i64::MIN,
            paused: None,
            replay_checked: i64::MIN,
        })
    }

    /// Takes the tenant's current plugin version at this bucket boundary: the old instance's
    /// state (after a commit) goes to a new instance's `restore`. `false`: the tenant has no
    /// plugin any more. A version that refuses the state is reported and the shard keeps the
    /// version it runs.
    fn switch(&self, c: &mut Cursor) -> Result<bool, WorkerError> {
        let generation = self.slot.generation();
        let Some(active) = self.slot.active() else {
            self.flush(c)?;
            return Ok(false);
        };
        if active.generation == c.active.generation {
            return Ok(true);
        }
        self.flush(c)?;
        let state = c.instance.snapshot()?;
        let handed = active
            .plugin
            .instantiate(&self.tenant, &active.config, self.config.limits)
            .and_then(|mut fresh| {
                let blank = digest(&fresh.snapshot()?);
                fresh.restore(&state)?;
                Ok((fresh, blank))
            });
        match handed {
            Ok((fresh, blank)) => {
                tracing::info!(
                    tenant = %self.tenant,
                    shard = %self.shard,
                    from = %c.instance.info().label(),
                    to = %fresh.info().label(),
                    "plugin version switched at a bucket boundary"
                );
                c.instance = fresh;
                c.blank_digest = blank;
                c.active = active;
            }
            Err(e) => self.slot.record_error(format!(
                "shard {}: the new version cannot take over the state: {e}; {} keeps serving this shard",
                self.shard,
                c.instance.info().label()
            )),
        }
        c.seen_generation = generation;
        Ok(true)
    }

    fn serve(&self, c: &mut Cursor) -> Result<Stop, WorkerError> {
        let bucket_ms = self.layout.bucket_ms;
        let mut idle_since: Option<TimestampMs> = None;
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                self.flush(c)?;
                return Ok(Stop::Done);
            }
            if self.slot.generation() != c.seen_generation && !self.switch(c)? {
                return Ok(Stop::Unloaded);
            }
            if now_ms().saturating_sub(c.replay_checked) >= REPLAY_CHECK_MS {
                self.replay_dead_letters(c)?;
            }
            if let Some((_, until)) = c.paused
                && now_ms() < until
            {
                std::thread::sleep(Duration::from_millis(self.config.poll_ms));
                continue;
            }
            // More shards than the fair share (a worker joined): one shard thread at a time
            // hands its shard over, at this bucket boundary, after its last commit.
            let fair = self.share.fair.load(Ordering::Relaxed);
            if !self.config.exit_when_idle
                && self.share.held.load(Ordering::Relaxed) > fair
                && self
                    .share
                    .handing_over
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.flush(c)?;
                return Ok(Stop::Handoff);
            }
            let now = now_ms();
            if now - c.renewed_at >= self.config.lease_ttl_ms / 3 {
                match self.block(self.store.renew_lease(
                    &self.tenant,
                    &c.lease,
                    self.config.lease_ttl_ms,
                    now,
                ))? {
                    Some(l) => {
                        c.lease = l;
                        c.renewed_at = now;
                    }
                    None => {
                        tracing::warn!(tenant = %self.tenant, shard = %self.shard, "lease lost (another worker took the shard); this worker will take it again only when it is free");
                        return Ok(Stop::Lost);
                    }
                }
            }
            match self.block(self.store.next_bucket(&self.tenant, self.shard, c.offset))? {
                Some(b) if self.closed_for(c, b, now)? => {
                    idle_since = None;
                    self.lag_alarm(b, now);
                    let events = self.block(self.store.read_bucket(&self.tenant, self.shard, b))?;
                    self.process(c, b, events)?;
                }
                Some(_) => {
                    idle_since = None;
                    std::thread::sleep(Duration::from_millis(self.config.poll_ms.min(50)));
                }
                None => {
                    // Let time pass for the plugin if it holds anything: process the latest
                    // closed bucket, empty (it is closed, so no event can still land in it).
                    let holds_something =
                        c.offset != c.committed || c.state_digest != c.blank_digest;
                    let latest = self.close_to(now);
                    if now - c.last_tick >= spaced(self.config.tick_ms, c.snapshot_ms)
                        && holds_something
                        && c.offset.is_none_or(|o| o < latest)
                    {
                        // The latest closable bucket if it may be read now (a store without a
                        // grace), else the newest whose close completed: with a grace of a
                        // bucket or more, the latest closable bucket moves on while its close
                        // takes effect, so waiting for it would never tick.
                        let ready = if self.closed_for(c, latest, now)? {
                            Some(latest)
                        } else {
                            c.closed.filter(|&x| c.offset.is_none_or(|o| o < x))
                        };
                        if let Some(b) = ready {
                            self.process(c, b, BucketEvents::default())?;
                        }
                    }
                    if self.config.exit_when_idle {
                        let since = *idle_since.get_or_insert(now);
                        if now - since >= bucket_ms + self.config.delay_ms {
                            return self.drain(c).map(|()| Stop::Done);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(self.config.poll_ms));
                }
            }
        }
    }

    /// Logs an error when the bucket about to be read is older than half the events'
    /// retention: at this lag, events would expire before they are read.
    fn lag_alarm(&self, b: BucketStart, now: TimestampMs) {
        if let Some(retention) = self.store.retention_ms()
            && now - b.0 >= retention / 2
            && now.saturating_sub(self.last_alarm.get()) >= 60_000
        {
            self.last_alarm.set(now);
            tracing::error!(
                tenant = %self.tenant,
                shard = %self.shard,
                lag_s = (now - b.0) / 1000,
                retention_s = retention / 1000,
                "lag is over half the events' retention: events will expire unread unless workers catch up (start more workers, or raise the retention)"
            );
        }
    }

    /// The last bucket that may be closed at `now`: it ended `delay` ago (less the store's
    /// grace, which passes before it is read).
    fn close_to(&self, now: TimestampMs) -> BucketStart {
        let bucket_ms = self.layout.bucket_ms;
        let lag = (self.config.delay_ms - self.store.close_grace_ms()).max(0);
        BucketStart(((now - lag).div_euclid(bucket_ms) - 1) * bucket_ms)
    }

    /// Whether bucket `b` may be read: closed for writing, the grace passed. Closes buckets
    /// on demand (up to [`Self::close_to`]), so an idle shard writes nothing.
    fn closed_for(
        &self,
        c: &mut Cursor,
        b: BucketStart,
        now: TimestampMs,
    ) -> Result<bool, WorkerError> {
        if let Some((to, at)) = c.closing
            && now >= at
        {
            c.closed = Some(to);
            c.closing = None;
        }
        if c.closed.is_some_and(|x| b <= x) {
            return Ok(true);
        }
        let close_to = self.close_to(now);
        if b > close_to || c.closing.is_some() {
            return Ok(false);
        }
        self.block(self.store.close_buckets(&self.tenant, &c.lease, close_to))?;
        let grace = self.store.close_grace_ms();
        if grace <= 0 {
            c.closed = Some(close_to);
            return Ok(true);
        }
        c.closing = Some((close_to, now + grace));
        Ok(false)
    }

    /// Process → publish → commit one bucket (the commit at most every `checkpoint_ms`). A
    /// bucket the plugin keeps failing on is dead-lettered and the shard goes on.
    fn process(
        &self,
        c: &mut Cursor,
        start: BucketStart,
        events: BucketEvents,
    ) -> Result<(), WorkerError> {
        let bucket_ms = self.layout.bucket_ms;
        let n = events.len() as u64;
        let views = events.views();
        let bucket = self.bucket(start, start.0 + bucket_ms);
        let mut attempt = 0;
        let stories = loop {
            attempt += 1;
            // Stories may name events of earlier buckets, which this loop does not keep;
            // ids within the bucket are checked by the runtime.
            match c.instance.process_events(bucket, &views, &|_| true) {
                Ok(stories) => break Some(stories),
                Err(err) => {
                    tracing::warn!(attempt, "{err}");
                    let wait = self.failed(c);
                    if attempt >= self.config.attempts {
                        let letter = DeadLetter {
                            shard: self.shard,
                            bucket: start,
                            plugin: c.instance.info().label(),
                            reason: err.to_string(),
                            attempts: attempt,
                            at_ms: now_ms(),
                            replay: false,
                        };
                        self.block(self.store.put_dead_letter(&self.tenant, &letter))?;
                        tracing::error!(
                            tenant = %self.tenant,
                            shard = %self.shard,
                            bucket = %start,
                            attempts = attempt,
                            "bucket dead-lettered: {err}; its {n} events are kept and reach the plugin again with `storyline replay --tenant {}` once it is fixed",
                            self.tenant
                        );
                        if err.failure.poisons() {
                            self.rewind(c, start)?;
                        }
                        if self.config.on_failure == OnFailure::Pause {
                            tracing::warn!(tenant = %self.tenant, shard = %self.shard, bucket = start.0, wait_ms = wait, "shard paused on a failing bucket");
                            c.paused = Some((start, now_ms() + wait as i64));
                            return Ok(());
                        }
                        self.progress.dead_letters.fetch_add(1, Ordering::Relaxed);
                        break None;
                    }
                    // An instance that trapped is re-created, after the backoff.
                    std::thread::sleep(Duration::from_millis(wait));
                    if err.failure.poisons() {
                        self.rewind(c, start)?;
                    }
                }
            }
        };
        if c.paused.take().is_some_and(|(b, _)| b == start) {
            // The bucket it paused on went through: its dead letter is obsolete.
            self.block(self.store.delete_dead_letter(&self.tenant, self.shard, start))?;
            tracing::info!(tenant = %self.tenant, shard = %self.shard, bucket = start.0, "shard resumed");
        }
        let stories = stories.unwrap_or_default();
        if !stories.is_empty() {
            self.block(self.store.publish(&self.tenant, &stories, now_ms()))?;
            if let Some(sink) = &self.sink {
                sink(&stories);
            }
        }
        let now = now_ms();
        if n == 0 {
            // A tick (time passing, no events) is committed whenever it changed something, so
            // that a replay after a crash never has to reproduce when ticks happened. A tick
            // that changed nothing is not committed: an idle shard writes nothing.
            let started = Instant::now();
            let state = c.instance.snapshot()?;
            if !stories.is_empty() || digest(&state) != c.state_digest {
                c.offset = Some(start);
                self.commit_state(c, state, started)?;
            } else {
                c.snapshot_ms = started.elapsed().as_millis() as i64;
            }
        } else {
            c.offset = Some(start);
            if now - c.committed_at >= spaced(self.config.checkpoint_ms, c.snapshot_ms) {
                self.commit(c)?;
            }
        }
        c.last_tick = now;
        self.progress.events.fetch_add(n, Ordering::Relaxed);
        self.progress.buckets.fetch_add(1, Ordering::Relaxed);
        self.progress.stories.fetch_add(stories.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The bucket starting at `start` as the plugin sees it, but its events.
    fn bucket(&self, start: BucketStart, watermark: TimestampMs) -> BucketHeader<'_> {
        BucketHeader {
            tenant: self.tenant.as_str(),
            shard: self.shard.0,
            start: start.0,
            end: start.0 + self.layout.bucket_ms,
            watermark,
        }
    }

    /// Counts a failure; the wait before the next attempt (1 s doubling up to 30 s by
    /// default; a shard healthy for a minute starts over).
    fn failed(&self, c: &mut Cursor) -> u64 {
        let now = now_ms();
        if now.saturating_sub(c.failed_at) >= HEALTHY_MS {
            c.failures = 0;
        }
        c.failed_at = now;
        let wait =
            self.config.backoff_ms.saturating_mul(1 << c.failures.min(16)).min(MAX_BACKOFF_MS);
        c.failures += 1;
        wait
    }

    /// Processes again the dead letters of this shard an operator marked for replay
    /// (`storyline replay`), typically after the plugin was fixed: their events go to the
    /// current instance as a late bucket, the stories are published, the letter removed. A
    /// letter that fails again stays, with the new reason.
    fn replay_dead_letters(&self, c: &mut Cursor) -> Result<(), WorkerError> {
        c.replay_checked = now_ms();
        let letters = self.block(self.store.dead_letters(&self.tenant))?;
        let bucket_ms = self.layout.bucket_ms;
        for letter in letters.into_iter().filter(|l| l.shard == self.shard && l.replay) {
            let events =
                self.block(self.store.read_bucket(&self.tenant, self.shard, letter.bucket))?;
            let n = events.len() as u64;
            let end = letter.bucket.0 + bucket_ms;
            // Time does not go back for the plugin: the bucket comes in late.
            let watermark = c.offset.map_or(end, |o| (o.0 + bucket_ms).max(end));
            let views = events.views();
            match c
                .instance
                .process_events(self.bucket(letter.bucket, watermark), &views, &|_| true)
            {
                Ok(stories) => {
                    if !stories.is_empty() {
                        self.block(self.store.publish(&self.tenant, &stories, now_ms()))?;
                        if let Some(sink) = &self.sink {
                            sink(&stories);
                        }
                    }
                    self.commit(c)?;
                    self.block(self.store.delete_dead_letter(
                        &self.tenant,
                        self.shard,
                        letter.bucket,
                    ))?;
                    self.progress.events.fetch_add(n, Ordering::Relaxed);
                    self.progress.stories.fetch_add(stories.len() as u64, Ordering::Relaxed);
                    tracing::info!(tenant = %self.tenant, shard = %self.shard, bucket = letter.bucket.0, events = n, stories = stories.len(), "dead letter replayed");
                }
                Err(err) => {
                    tracing::warn!(tenant = %self.tenant, shard = %self.shard, bucket = letter.bucket.0, "replay failed: {err}");
                    if err.failure.poisons() {
                        let after = c
                            .offset
                            .map_or(BucketStart(i64::MIN), |o| BucketStart(o.0.saturating_add(1)));
                        self.rewind(c, after)?;
                    }
                    let again = DeadLetter {
                        plugin: c.instance.info().label(),
                        reason: err.to_string(),
                        attempts: letter.attempts + 1,
                        at_ms: now_ms(),
                        replay: false,
                        ..letter
                    };
                    self.block(self.store.put_dead_letter(&self.tenant, &again))?;
                }
            }
        }
        Ok(())
    }

    /// After the instance was poisoned on bucket `failing`: a fresh instance restored from the
    /// last committed state, brought up to just before `failing` by processing again the
    /// buckets since the commit (their stories were published already and would be the same).
    fn rewind(&self, c: &mut Cursor, failing: BucketStart) -> Result<(), WorkerError> {
        loop {
            match self.try_rewind(c, failing) {
                // The tenant's memory may be held by its other shards for a while: wait.
                Err(WorkerError::Plugin(e)) if !self.shutdown.load(Ordering::Relaxed) => {
                    let wait = self.failed(c);
                    tracing::warn!(tenant = %self.tenant, shard = %self.shard, wait_ms = wait, "cannot re-create the plugin instance: {e}");
                    std::thread::sleep(Duration::from_millis(wait));
                }
                done => return done,
            }
        }
    }

    fn try_rewind(&self, c: &mut Cursor, failing: BucketStart) -> Result<(), WorkerError> {
        c.instance = self.reinstantiate(c)?;
        let bucket_ms = self.layout.bucket_ms;
        let mut at = c.committed;
        while let Some(b) = self.block(self.store.next_bucket(&self.tenant, self.shard, at))? {
            if b >= failing {
                break;
            }
            let events = self.block(self.store.read_bucket(&self.tenant, self.shard, b))?;
            let views = events.views();
            c.instance.process_events(self.bucket(b, b.0 + bucket_ms), &views, &|_| true)?;
            at = Some(b);
        }
        Ok(())
    }

    /// Commits what was processed since the last commit, if anything.
    fn flush(&self, c: &mut Cursor) -> Result<(), WorkerError> {
        if c.offset != c.committed { self.commit(c) } else { Ok(()) }
    }

    /// A fresh instance restored from the last committed state (the poisoned one's state is
    /// undefined).
    fn reinstantiate(&self, c: &Cursor) -> Result<PluginInstance, WorkerError> {
        let mut instance =
            c.active.plugin.instantiate(&self.tenant, &c.active.config, self.config.limits)?;
        let checkpoint = self.block(self.store.load_checkpoint(&self.tenant, self.shard))?;
        if let Some(cp) = checkpoint.filter(|cp| !cp.state.is_empty()) {
            instance.restore(&cp.state)?;
        }
        Ok(instance)
    }

    /// Commits the processed offset with the plugin state (fenced by the lease epoch).
    fn commit(&self, c: &mut Cursor) -> Result<(), WorkerError> {
        if c.offset.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let state = c.instance.snapshot()?;
        self.commit_state(c, state, started)
    }

    /// [`Self::commit`] of a snapshot taken since `started` (the cost counted for spacing).
    fn commit_state(
        &self,
        c: &mut Cursor,
        state: Vec<u8>,
        started: Instant,
    ) -> Result<(), WorkerError> {
        let Some(bucket) = c.offset else { return Ok(()) };
        let d = digest(&state);
        let changed = (d != c.state_digest).then_some(state.as_slice());
        self.block(self.store.commit(&self.tenant, &c.lease, bucket, changed))?;
        c.state_digest = d;
        c.committed = Some(bucket);
        c.committed_at = now_ms();
        c.snapshot_ms = started.elapsed().as_millis() as i64;
        tracing::debug!(
            tenant = %self.tenant,
            shard = %self.shard,
            bucket = bucket.0,
            state_bytes = state.len(),
            written = changed.is_some(),
            ms = c.snapshot_ms,
            "committed"
        );
        Ok(())
    }

    /// The input is over: close every open session, publish, commit the emptied state.
    fn drain(&self, c: &mut Cursor) -> Result<(), WorkerError> {
        let stories = c.instance.drain(&|_| true)?;
        if !stories.is_empty() {
            self.block(self.store.publish(&self.tenant, &stories, now_ms()))?;
            if let Some(sink) = &self.sink {
                sink(&stories);
            }
            self.progress.stories.fetch_add(stories.len() as u64, Ordering::Relaxed);
        }
        self.commit(c)?;
        tracing::info!(tenant = %self.tenant, shard = %self.shard, "drained");
        Ok(())
    }
}

/// A state's digest, kept in memory only (to skip writing an unchanged state). XXH3: several
/// GB/s, where SipHash took ~10 ms per 16 MB state.
fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_snapshot_spaces_checkpoints_and_ticks() {
        // Small states keep the configured intervals.
        assert_eq!(spaced(5000, 0), 5000);
        assert_eq!(spaced(5000, 250), 5000);
        // A 1.5 s snapshot: one every 30 s, a twentieth of the shard's time.
        assert_eq!(spaced(5000, 1500), 30_000);
        assert_eq!(spaced(1000, i64::MAX), i64::MAX);
    }
}
