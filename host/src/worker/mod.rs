//! The workers: every shard of every tenant served, as tasks on one fixed [`Pool`] of threads.
//!
//! - [`pool`]: the threads, turns across tenants, timers and wake-ups. Knows nothing of shards.
//! - [`shard`]: one shard's steps: lease → offset and plugin state → the next bucket that ended
//!   before `now - delay` → read the partition → plugin `process` → publish → commit (offset
//!   and state, fenced by the lease epoch). Idle, it sleeps until its next tick, lease renewal,
//!   or new data; with nothing open it drops its plugin instance, and after [`WorkerConfig::linger_ms`]
//!   its lease.
//! - [`Workers`] (here): a tenant's housekeeping task (waits for its first events, starts its
//!   shards; on a store that cannot announce writes, wakes them every poll), the fair share of
//!   shards between worker processes, and the wake-ups from the store and the plugin catalog.
//!
//! A guest runs on a pool thread, never on the async runtime that serves the store; a guest
//! that computes until its deadline holds one pool thread for that long.

mod pool;
mod shard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

pub use pool::{Pool, Step, Task, TaskId};

use crate::catalog::Slot;
use crate::model::{ShardId, Story, TenantId};
use crate::plugin::{CallError, Limits};
use crate::producer::now_ms;
use crate::store::{Change, Store, StoreError};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A bucket is read once it ended this long ago, so producers with slightly late clocks are
    /// not overtaken. Default 2 000 ms.
    pub delay_ms: i64,
    /// On a store that cannot announce writes (ScyllaDB), how often idle shards look for new
    /// buckets; also how often a shard retries a lease another worker holds. Default 100 ms.
    pub poll_ms: u64,
    /// Lease lifetime; renewed at a third of it. Default 10 000 ms.
    pub lease_ttl_ms: i64,
    /// Time passes for the plugin this often when idle (spaced further for a large state, see
    /// [`SNAPSHOT_SPACING`], and after ticks that published nothing, up to 8 times). Default
    /// 1 000 ms.
    pub tick_ms: i64,
    /// A shard with nothing open and nothing to read drops its plugin instance at once and
    /// gives its lease up after this long. Default 30 000 ms.
    pub linger_ms: i64,
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
            linger_ms: 30_000,
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

/// Counters shared by the shards of a run.
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
    /// Set to stop every shard after its current bucket (seen within 50 ms by sleeping ones).
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
    /// A worker task panicked (a bug of the host): its shard stopped.
    #[error("a worker task of tenant {tenant} panicked: {message}")]
    Panicked {
        /// The tenant.
        tenant: TenantId,
        /// The panic's message.
        message: String,
    },
}

/// The tenants served by one process, as tasks on a pool.
#[allow(missing_debug_implementations)] // holds the store
pub struct Workers<S: Store> {
    pool: Pool,
    handle: Handle,
    store: S,
    /// Settings of tenants served without their own.
    config: WorkerConfig,
    shared: Shared,
    /// Whether the store announces writes (else idle shards are woken every poll).
    watched: bool,
    runs: Arc<Mutex<HashMap<TenantId, Arc<TenantRun>>>>,
}

impl<S: Store + Clone> Workers<S> {
    /// Workers on `pool` for tenants of `store`; wake-ups from the store are wired here.
    pub fn new(
        pool: Pool,
        handle: Handle,
        store: S,
        config: WorkerConfig,
        shared: Shared,
    ) -> Arc<Self> {
        let runs: Arc<Mutex<HashMap<TenantId, Arc<TenantRun>>>> = Arc::default();
        let watched = {
            let (pool, runs) = (pool.clone(), runs.clone());
            store.watch(Arc::new(move |tenant: &TenantId, change| {
                let run = runs.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned();
                if let Some(run) = run {
                    if change == Change::DeadLetters {
                        run.dead_letter_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    pool.wake(tenant, None);
                }
            }))
        };
        pool.watch_stop(shared.shutdown.clone());
        Arc::new(Workers { pool, handle, store, config, shared, watched, runs })
    }

    /// Starts serving `tenant` with the plugin in `slot` (nothing if it is served already).
    pub fn serve(&self, tenant: &TenantId, slot: Arc<Slot>) {
        self.serve_with(tenant, slot, self.config.clone());
    }

    /// [`Workers::serve`] with settings of the tenant's own (its read delay, its limits).
    pub fn serve_with(&self, tenant: &TenantId, slot: Arc<Slot>, config: WorkerConfig) {
        let run = {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            if runs.get(tenant).is_some_and(|r| !r.finished()) {
                return;
            }
            let run = Arc::new(TenantRun::new(tenant.clone()));
            runs.insert(tenant.clone(), run.clone());
            run
        };
        run.tasks.fetch_add(1, Ordering::AcqRel);
        // A shard waiting for a plugin (or for another version) sleeps until the slot changes.
        {
            let (pool, tenant) = (self.pool.clone(), tenant.clone());
            slot.on_change(Arc::new(move || pool.wake(&tenant, None)));
        }
        let task = TenantTask {
            ctx: Arc::new(Context {
                pool: self.pool.clone(),
                handle: self.handle.clone(),
                store: self.store.clone(),
                tenant: tenant.clone(),
                slot,
                config,
                shared: self.shared.clone(),
                watched: self.watched,
                run,
            }),
            phase: TenantPhase::WaitingForEvents { since: now_ms(), polls: 0 },
            id: None,
        };
        self.pool.spawn(tenant, Box::new(task));
    }

    /// Something changed for `tenant` outside the store (its plugin was reloaded): its tasks
    /// look again at once.
    pub fn wake(&self, tenant: &TenantId) {
        self.pool.wake(tenant, None);
    }

    /// Whether every tenant started has finished (and at least one was started).
    pub fn finished(&self) -> bool {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        !runs.is_empty() && runs.values().all(|r| r.finished())
    }

    /// Waits until every tenant's tasks have finished (after `shutdown`, or idle with
    /// `exit_when_idle`); the errors they stopped on, by tenant.
    pub fn wait(&self) -> Vec<(TenantId, WorkerError)> {
        self.pool.wait_until(|| {
            self.runs.lock().unwrap_or_else(|p| p.into_inner()).values().all(|r| r.finished())
        });
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let mut failed: Vec<(TenantId, WorkerError)> =
            runs.values().filter_map(|r| r.take_error().map(|e| (r.tenant.clone(), e))).collect();
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        failed
    }

    /// Number of tasks (tenants waiting for events, shards) on the pool now.
    pub fn tasks(&self) -> usize {
        self.pool.tasks()
    }
}

/// Runs every shard of `tenant` on a pool of its own until `shutdown` is set (or, with
/// `exit_when_idle`, until all shards are caught up). Returns when every shard has finished
/// its current bucket, committed and released its lease. (A host serving many tenants shares
/// one pool through [`Workers`].)
pub fn run_tenant<S: Store + Clone>(
    handle: &Handle,
    store: &S,
    tenant: &TenantId,
    slot: &Arc<Slot>,
    config: &WorkerConfig,
    shared: &Shared,
) -> Result<(), WorkerError> {
    let pool = Pool::per_core().map_err(|e| StoreError::Backend {
        backend: "worker",
        message: format!("cannot start the worker threads: {e}"),
    })?;
    let workers =
        Workers::new(pool.clone(), handle.clone(), store.clone(), config.clone(), shared.clone());
    workers.serve(tenant, slot.clone());
    let failed = workers.wait();
    pool.close();
    for (tenant, e) in &failed {
        tracing::error!(%tenant, "shard stopped: {e}");
    }
    failed.into_iter().next().map_or(Ok(()), |(_, e)| Err(e))
}

/// What the tasks of one tenant share.
struct Context<S> {
    pool: Pool,
    /// Runtime handle for store calls.
    handle: Handle,
    store: S,
    tenant: TenantId,
    /// The tenant's plugin, as the plugin directory has it now; each shard runs its own
    /// instance and takes a new version at a bucket boundary.
    slot: Arc<Slot>,
    config: WorkerConfig,
    shared: Shared,
    /// Whether the store announces writes (see [`Store::watch`]).
    watched: bool,
    run: Arc<TenantRun>,
}

impl<S: Store> Context<S> {
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.handle.block_on(f)
    }

    fn stopping(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }

    /// Announces this worker and recomputes its fair share of the tenant's shards, unless
    /// that was done within the last few polls.
    fn beat_if_stale(&self, shards: u32) -> Result<(), StoreError> {
        let now = now_ms();
        let last = self.run.share.beat_at.load(Ordering::Relaxed);
        let every = (self.config.poll_ms as i64 * 5).min(self.config.lease_ttl_ms / 3);
        if now - last < every
            || self
                .run
                .share
                .beat_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        self.block(self.store.heartbeat(
            &self.tenant,
            &self.config.owner,
            self.config.lease_ttl_ms,
            now,
        ))?;
        let live = self.block(self.store.live_workers(&self.tenant, now))?.len().max(1) as u32;
        self.run.share.fair.store(shards.div_ceil(live), Ordering::Relaxed);
        Ok(())
    }
}

/// One tenant's run: its tasks, the first error, the fair share.
struct TenantRun {
    tenant: TenantId,
    /// Tasks not finished (the tenant's own and its shards').
    tasks: AtomicUsize,
    /// The first error a task stopped on.
    error: Mutex<Option<WorkerError>>,
    /// Counts dead-letter changes the store announced: a shard whose count is behind looks
    /// for letters to replay.
    dead_letter_changes: AtomicU64,
    share: FairShare,
}

impl TenantRun {
    fn new(tenant: TenantId) -> Self {
        TenantRun {
            tenant,
            tasks: AtomicUsize::new(0),
            error: Mutex::new(None),
            dead_letter_changes: AtomicU64::new(0),
            share: FairShare::default(),
        }
    }

    fn finished(&self) -> bool {
        self.tasks.load(Ordering::Acquire) == 0
    }

    /// A task ends, with its error if any.
    fn task_done(&self, result: Result<(), WorkerError>) {
        if let Err(e) = result {
            tracing::error!(tenant = %self.tenant, "shard stopped: {e}");
            self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
        self.tasks.fetch_sub(1, Ordering::AcqRel);
    }

    fn take_error(&self) -> Option<WorkerError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// This worker's part of a tenant's shards.
#[derive(Debug)]
struct FairShare {
    /// Shards this worker holds now.
    held: AtomicU32,
    /// `ceil(shards / live workers)`.
    fair: AtomicU32,
    /// A handover is under way (one shard at a time is handed over).
    handing_over: AtomicBool,
    /// When this worker last announced itself, epoch ms.
    beat_at: AtomicI64,
}

impl Default for FairShare {
    fn default() -> Self {
        FairShare {
            held: AtomicU32::new(0),
            fair: AtomicU32::new(0),
            handing_over: AtomicBool::new(false),
            beat_at: AtomicI64::new(i64::MIN / 2),
        }
    }
}

/// A tenant's own task: waits for its first events, starts its shards, wakes them on a store
/// that cannot announce writes, withdraws the heartbeat at the end.
struct TenantTask<S> {
    ctx: Arc<Context<S>>,
    phase: TenantPhase,
    /// This task's id in the pool (not woken by its own wake-ups).
    id: Option<TaskId>,
}

enum TenantPhase {
    /// No layout yet: no events were ever written.
    WaitingForEvents { since: i64, polls: u32 },
    /// Shards started.
    Serving(Box<Polling>),
}

/// What a tenant's task keeps while its shards run.
struct Polling {
    shards: u32,
    /// The shards' tasks, by shard.
    tasks: Vec<TaskId>,
    /// On a store that cannot announce writes: the newest bucket of each shard seen so far.
    newest: Vec<Option<crate::model::BucketStart>>,
    next_poll: Instant,
    /// Polls in a row that found nothing new (they space out, see [`idle_poll`]).
    idle_polls: u32,
    /// When dead letters marked for replay are looked for next.
    next_letters: Instant,
}

/// On a store that cannot announce dead letters, how often a tenant's task looks for ones
/// marked for replay (one request for all its shards).
const REPLAY_CHECK: Duration = Duration::from_secs(2);

/// On a store that cannot announce writes, a tenant's polls space out while they find nothing
/// new, the wait doubling from `poll_ms` up to this (or `poll_ms` if longer): a tenant that
/// wakes up is seen at most this late, and a thousand idle tenants cost about a thousand
/// requests a second instead of ten thousand.
const IDLE_POLL_MAX: Duration = Duration::from_secs(1);

/// The wait before the next poll after `idle_polls` polls that found nothing.
fn idle_poll(poll_ms: u64, idle_polls: u32) -> Duration {
    let base = Duration::from_millis(poll_ms);
    base.saturating_mul(1 << idle_polls.min(16)).min(IDLE_POLL_MAX.max(base))
}

impl<S: Store + Clone> TenantTask<S> {
    fn step_inner(&mut self) -> Result<Step, WorkerError> {
        let ctx = self.ctx.clone();
        let config = &ctx.config;
        match self.phase {
            TenantPhase::WaitingForEvents { since, ref mut polls } => {
                if ctx.stopping() {
                    return Ok(Step::Done);
                }
                let Some(layout) = ctx.block(ctx.store.layout(&ctx.tenant))? else {
                    // A worker may start before its producers: wait for the first events. With
                    // exit_when_idle, a tenant that stays empty is simply done.
                    let give_up = since + config.delay_ms + 1000;
                    if config.exit_when_idle && now_ms() > give_up {
                        tracing::info!(tenant = %ctx.tenant, "no events; nothing to do");
                        return Ok(Step::Done);
                    }
                    let poll = if config.exit_when_idle {
                        Duration::from_millis(config.poll_ms)
                    } else {
                        *polls = polls.saturating_add(1);
                        idle_poll(config.poll_ms, *polls)
                    };
                    let poll = Instant::now() + poll;
                    return Ok(Step::Sleep(if config.exit_when_idle || !ctx.watched {
                        Some(poll)
                    } else {
                        None
                    }));
                };
                ctx.beat_if_stale(layout.shards)?;
                let mut tasks = Vec::new();
                for shard in 0..layout.shards {
                    ctx.run.tasks.fetch_add(1, Ordering::AcqRel);
                    let task = shard::ShardTask::new(ctx.clone(), ShardId(shard), layout);
                    tasks.push(ctx.pool.spawn(&ctx.tenant, Box::new(task)));
                }
                self.phase = TenantPhase::Serving(Box::new(Polling {
                    shards: layout.shards,
                    tasks,
                    newest: vec![None; layout.shards as usize],
                    next_poll: Instant::now(),
                    idle_polls: 0,
                    next_letters: Instant::now(),
                }));
                Ok(Step::Again)
            }
            TenantPhase::Serving(ref mut polling) => {
                // Only this task left: every shard finished.
                if ctx.run.tasks.load(Ordering::Acquire) <= 1 {
                    // Leave at once rather than when the heartbeat expires, so the next worker
                    // gets every shard.
                    if let Err(e) =
                        ctx.block(ctx.store.heartbeat(&ctx.tenant, &config.owner, -1, now_ms()))
                    {
                        tracing::warn!(tenant = %ctx.tenant, "cannot withdraw the heartbeat: {e}");
                    }
                    return Ok(Step::Done);
                }
                let poll = Duration::from_millis(config.poll_ms);
                if ctx.stopping() {
                    // Shards are finishing their buckets and committing.
                    return Ok(Step::Sleep(Some(Instant::now() + poll)));
                }
                if ctx.watched && !config.exit_when_idle {
                    return Ok(Step::Sleep(None));
                }
                // The store cannot say when events arrive: one request a poll for the newest
                // bucket of every shard, and only shards with new ones are woken.
                let now = Instant::now();
                let p = &mut **polling;
                if now >= p.next_poll {
                    let mut found = false;
                    match ctx.block(ctx.store.newest_buckets(&ctx.tenant, p.shards)) {
                        Ok(Some(newest)) => {
                            for (i, b) in newest.into_iter().enumerate() {
                                if b.is_some() && p.newest.get(i).is_some_and(|seen| *seen != b) {
                                    p.newest[i] = b;
                                    ctx.pool.wake_task(p.tasks[i]);
                                    found = true;
                                }
                            }
                        }
                        Ok(None) => ctx.pool.wake(&ctx.tenant, self.id),
                        Err(e) => {
                            tracing::warn!(tenant = %ctx.tenant, "cannot look for new events: {e}");
                            ctx.pool.wake(&ctx.tenant, self.id);
                        }
                    }
                    // While nothing new comes, the polls space out (while draining at exit,
                    // they keep their pace).
                    p.idle_polls =
                        if found || config.exit_when_idle { 0 } else { p.idle_polls + 1 };
                    p.next_poll = now + idle_poll(config.poll_ms, p.idle_polls);
                    if let Err(e) = ctx.beat_if_stale(p.shards) {
                        tracing::warn!(tenant = %ctx.tenant, "heartbeat failed: {e}");
                    }
                }
                if now >= p.next_letters {
                    p.next_letters = now + REPLAY_CHECK;
                    match ctx.block(ctx.store.dead_letters(&ctx.tenant)) {
                        Ok(letters) if letters.iter().any(|l| l.replay) => {
                            ctx.run.dead_letter_changes.fetch_add(1, Ordering::Relaxed);
                            ctx.pool.wake(&ctx.tenant, self.id);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(tenant = %ctx.tenant, "cannot read dead letters: {e}")
                        }
                    }
                }
                Ok(Step::Sleep(Some(p.next_poll.min(p.next_letters))))
            }
        }
    }
}

impl<S: Store + Clone> Task for TenantTask<S> {
    fn step(&mut self) -> Step {
        if self.id.is_none() {
            self.id = self.ctx.pool.current();
        }
        match self.step_inner() {
            Ok(Step::Done) => {
                self.ctx.run.task_done(Ok(()));
                Step::Done
            }
            Ok(step) => step,
            Err(e) => {
                self.ctx.run.task_done(Err(e));
                Step::Done
            }
        }
    }

    fn panicked(&mut self, message: String) {
        let tenant = self.ctx.tenant.clone();
        self.ctx.run.task_done(Err(WorkerError::Panicked { tenant, message }));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_polls_space_out_to_a_second_and_never_below_the_poll() {
        let ms = |d: Duration| d.as_millis();
        let waits: Vec<u128> = (0..7).map(|n| ms(idle_poll(100, n))).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(ms(idle_poll(100, u32::MAX)), 1000);
        assert_eq!(ms(idle_poll(5000, 3)), 5000, "a poll longer than the cap stays as set");
    }

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
