//! One shard as a task: each [`Task::step`] does one bounded piece of work (take the lease,
//! process a bucket, tick, renew, hand over) and says when it wants to run again.
//!
//! lease → offset and plugin state → the next non-empty bucket that ended before
//! `now - delay` → read the whole partition → plugin `process` → publish → commit (offset and
//! state, fenced by the lease epoch, at most every `checkpoint_ms`).
//!
//! When no bucket is pending the plugin still hears of time passing: every `tick_ms` it gets an
//! empty bucket (the latest ready one) so that sessions seen by one sensor close on their
//! timeout; ticks that publish nothing come further apart (up to 8 × `tick_ms`). That bucket is committed like any other. A shard whose plugin holds nothing (its
//! state is a fresh instance's) needs no ticks: it drops its instance and sleeps until new data,
//! and gives its lease up after [`WorkerConfig::linger_ms`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Context, OnFailure, Step, Task, WorkerConfig, WorkerError, spaced};
use crate::catalog::Active;
use crate::model::{BucketStart, ShardId, TimestampMs};
use crate::plugin::{BucketHeader, PluginInstance};
use crate::producer::now_ms;
use crate::store::{BucketEvents, DeadLetter, Layout, Lease, Store, StoreError};

/// Longest wait between attempts.
const MAX_BACKOFF_MS: u64 = 30_000;
/// A shard healthy for this long forgets its earlier failures.
const HEALTHY_MS: i64 = 60_000;
/// Idle ticks that publish nothing come further apart, up to this many times `tick_ms`: a
/// quiet shard whose plugin keeps published sessions for ten minutes ticks every 8 s instead of
/// every second; a session it closes is published up to that much later.
const IDLE_TICK_STRETCH: i64 = 8;

/// The instant at epoch ms `at` (now if it passed).
fn instant_at(at: TimestampMs) -> Instant {
    Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64)
}

/// One shard: what it needs and where it is.
pub(super) struct ShardTask<S> {
    /// What the tenant's tasks share (store, plugin slot, config, counters, fair share).
    ctx: Arc<Context<S>>,
    /// The shard served.
    shard: ShardId,
    /// The tenant's layout (bucket length).
    layout: Layout,
    /// When the lag alarm was last logged (at most once a minute).
    last_alarm: TimestampMs,
    /// Store failures in a row (the backoff exponent); reset once the shard serves again.
    store_failures: u32,
    phase: Phase,
}

/// Where a shard is.
enum Phase {
    /// Without a lease: waiting for a plugin, for the lease, or (cold) for work.
    Start {
        /// The shard went cold at this offset: it takes its lease again only for a bucket
        /// after it, or for dead letters to replay.
        cold: Option<Cold>,
        /// The plugin version that could not take the shard (init or restore failed): the
        /// shard waits for another.
        failed_generation: Option<u64>,
    },
    /// Holding the lease, with offset, state and (unless it holds nothing) an instance.
    Serving(Box<Cursor>),
}

/// What a cold shard remembers.
#[derive(Debug, Clone, Copy)]
struct Cold {
    offset: Option<BucketStart>,
    dead_letters_seen: u64,
}

/// Why a shard stopped serving.
enum Stop {
    /// Shut down, drained: the task ends.
    Done,
    /// The tenant's plugin was removed: the shard waits for one, offset kept.
    Unloaded,
    /// The lease lapsed and another worker took the shard (this one stalled): nothing is
    /// committed (the commit would be fenced); the shard waits to take a shard again.
    Lost,
    /// The shard goes to another worker; this one waits to take it again.
    Handoff,
    /// Nothing open, nothing to read for [`WorkerConfig::linger_ms`]: the lease goes.
    Cold,
}

/// A serving step's outcome.
enum Flow {
    Step(Step),
    Stop(Stop),
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
    /// The plugin instance holding the shard's open sessions; `None` while it holds nothing
    /// (its state is a fresh instance's): re-created for the next bucket.
    instance: Option<PluginInstance>,
    /// Digest of the last committed state: an unchanged state is not rewritten.
    state_digest: u64,
    /// Digest of a fresh instance's state: a shard holding nothing needs no ticks.
    blank_digest: u64,
    /// Buckets up to this one are closed for writing and may be read.
    closed: Option<BucketStart>,
    /// A close under way: buckets up to the first may be read from the second on (the store's
    /// grace, during which producers learn of it).
    closing: Option<(BucketStart, TimestampMs)>,
    /// When this shard last closed buckets (it stays leased for the grace after).
    closed_at: TimestampMs,
    /// When the lease was last renewed.
    renewed_at: TimestampMs,
    /// When time last passed for the plugin (a bucket or a tick was processed).
    last_tick: TimestampMs,
    /// The idle tick interval now: `tick_ms`, doubled after every tick that published
    /// nothing, up to [`IDLE_TICK_STRETCH`] times `tick_ms`.
    tick_every: i64,
    /// What the last snapshot cost (taking it, and writing it when committed), ms.
    snapshot_ms: i64,
    /// Failures in a row (reset after a healthy minute): the backoff exponent.
    failures: u32,
    /// When the last failure happened.
    failed_at: TimestampMs,
    /// A bucket that failed and is tried again: the attempts so far and when the next is due.
    retry: Option<(BucketStart, u32, Instant)>,
    /// Paused on a bucket that failed every attempt (`OnFailure::Pause`): not before then.
    paused: Option<(BucketStart, TimestampMs)>,
    /// The tenant's dead-letter changes seen (see `TenantRun::dead_letter_changes`).
    dead_letters_seen: u64,
    /// With exit_when_idle: since when nothing was pending.
    idle_since: Option<TimestampMs>,
}

impl<S: Store + Clone> Task for ShardTask<S> {
    fn step(&mut self) -> Step {
        match self.step_inner() {
            Ok(Some(step)) => {
                if matches!(self.phase, Phase::Serving(_)) {
                    self.store_failures = 0;
                }
                step
            }
            Ok(None) => self.finish(Ok(())),
            // A live worker outlasts its store: an overloaded or unreachable node costs a
            // backoff, and the shard starts again from its last commit (what was processed
            // since is processed again; its stories are the same and overwrite themselves).
            Err(WorkerError::Store(e)) if !self.config().exit_when_idle && !self.ctx.stopping() => {
                let wait = self
                    .config()
                    .backoff_ms
                    .saturating_mul(1 << self.store_failures.min(16))
                    .min(MAX_BACKOFF_MS);
                self.store_failures += 1;
                tracing::error!(
                    tenant = %self.ctx.tenant,
                    shard = %self.shard,
                    wait_ms = wait,
                    "store failed: {e}; the shard starts again from its last commit after the wait"
                );
                self.phase = Phase::Start { cold: None, failed_generation: None };
                Step::Sleep(Some(Instant::now() + Duration::from_millis(wait)))
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn panicked(&mut self, message: String) {
        let tenant = self.ctx.tenant.clone();
        self.finish(Err(WorkerError::Panicked { tenant, message }));
    }
}

impl<S: Store + Clone> ShardTask<S> {
    pub(super) fn new(ctx: Arc<Context<S>>, shard: ShardId, layout: Layout) -> Self {
        ShardTask {
            ctx,
            shard,
            layout,
            last_alarm: i64::MIN,
            store_failures: 0,
            phase: Phase::Start { cold: None, failed_generation: None },
        }
    }

    fn config(&self) -> &WorkerConfig {
        &self.ctx.config
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.ctx.handle.block_on(f)
    }

    /// The task ends: its tenant learns the outcome and looks again at its tasks.
    fn finish(&mut self, result: Result<(), WorkerError>) -> Step {
        self.ctx.run.task_done(result);
        self.ctx.pool.wake(&self.ctx.tenant, self.ctx.pool.current());
        Step::Done
    }

    /// One step; `None`: the shard is done.
    fn step_inner(&mut self) -> Result<Option<Step>, WorkerError> {
        let phase = std::mem::replace(
            &mut self.phase,
            Phase::Start { cold: None, failed_generation: None },
        );
        match phase {
            Phase::Start { cold, failed_generation } => self.start(cold, failed_generation),
            Phase::Serving(mut cursor) => {
                let flow = self.serve(&mut cursor);
                let stop = match flow {
                    Ok(Flow::Step(step)) => {
                        self.phase = Phase::Serving(cursor);
                        return Ok(Some(step));
                    }
                    Ok(Flow::Stop(stop)) => Ok(stop),
                    Err(e) => Err(e),
                };
                let share = &self.ctx.run.share;
                let released = match stop {
                    // A lost lease is someone else's now: nothing to release.
                    Ok(Stop::Lost) => Ok(()),
                    _ => self.block(self.ctx.store.release_lease(&self.ctx.tenant, &cursor.lease)),
                };
                share.held.fetch_sub(1, Ordering::Relaxed);
                let (tenant, shard) = (&self.ctx.tenant, self.shard);
                match stop? {
                    // Handed over to a worker that joined: wait for the shard to be ours again.
                    Stop::Handoff => {
                        share.handing_over.store(false, Ordering::Relaxed);
                        released?;
                        tracing::info!(%tenant, %shard, "handed over");
                        Ok(Some(Step::Again))
                    }
                    Stop::Lost => Ok(Some(Step::Again)),
                    Stop::Unloaded => {
                        released?;
                        tracing::warn!(%tenant, %shard, "no plugin: shard stopped at its commit until one is installed");
                        Ok(Some(Step::Again))
                    }
                    Stop::Cold => {
                        released?;
                        tracing::debug!(%tenant, %shard, "idle: lease given up until new events");
                        self.phase = Phase::Start {
                            cold: Some(Cold {
                                offset: cursor.committed,
                                dead_letters_seen: cursor.dead_letters_seen,
                            }),
                            failed_generation: None,
                        };
                        Ok(Some(Step::Sleep(None)))
                    }
                    Stop::Done => released.map(|()| None).map_err(WorkerError::from),
                }
            }
        }
    }

    /// Without a lease: takes it when there is work and a plugin, and opens the shard.
    fn start(
        &mut self,
        cold: Option<Cold>,
        failed_generation: Option<u64>,
    ) -> Result<Option<Step>, WorkerError> {
        let ctx = self.ctx.clone();
        let (tenant, shard) = (&ctx.tenant, self.shard);
        let wait_here = |me: &mut Self, step| {
            me.phase = Phase::Start { cold, failed_generation };
            Ok(Some(step))
        };
        if ctx.stopping() {
            return Ok(None);
        }
        let generation = ctx.slot.generation();
        let Some(active) = ctx.slot.active() else {
            if self.config().exit_when_idle {
                tracing::warn!(%tenant, %shard, "no plugin; nothing to do");
                return Ok(None);
            }
            // The catalog wakes the tenant's tasks when a plugin is installed.
            return wait_here(self, Step::Sleep(None));
        };
        if failed_generation == Some(generation) {
            return wait_here(self, Step::Sleep(None));
        }
        if let Some(c) = cold {
            let letters = ctx.run.dead_letter_changes.load(Ordering::Relaxed);
            let next = self.block(ctx.store.next_bucket(tenant, shard, c.offset))?;
            if next.is_none() && letters == c.dead_letters_seen {
                return wait_here(self, Step::Sleep(None));
            }
        }
        ctx.beat_if_stale(self.layout.shards)?;
        let Some(lease) = self.lease()? else {
            if self.config().exit_when_idle {
                return Ok(None);
            }
            let retry = Instant::now() + Duration::from_millis(self.config().poll_ms * 5);
            return wait_here(self, Step::Sleep(Some(retry)));
        };
        match self.open(lease.clone(), active) {
            Ok(cursor) => {
                self.phase = Phase::Serving(Box::new(cursor));
                Ok(Some(Step::Again))
            }
            Err(WorkerError::Plugin(e)) => {
                // This version cannot take the shard (init or restore failed): the shard
                // waits at its commit for another version; other shards and tenants go on.
                ctx.slot.record_error(format!(
                    "shard {shard}: {e}; the shard waits at its last commit for another plugin version"
                ));
                self.block(ctx.store.release_lease(tenant, &lease))?;
                ctx.run.share.held.fetch_sub(1, Ordering::Relaxed);
                if self.config().exit_when_idle {
                    return Err(WorkerError::Plugin(e));
                }
                self.phase = Phase::Start { cold: None, failed_generation: Some(generation) };
                Ok(Some(Step::Sleep(None)))
            }
            Err(e) => {
                // The store failed while opening: give the lease back if it can be.
                let _ = self.block(ctx.store.release_lease(tenant, &lease));
                ctx.run.share.held.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Takes the lease if it is free and within this worker's fair share (`None`: not now).
    fn lease(&mut self) -> Result<Option<Lease>, WorkerError> {
        let ctx = self.ctx.clone();
        let (config, share) = (&ctx.config, &ctx.run.share);
        let now = now_ms();
        // Take a shard only within this worker's fair share of the tenant's shards (unless
        // its lease is already ours), so that workers split them.
        let current = self.block(ctx.store.lease(&ctx.tenant, self.shard))?;
        let ours = current.as_ref().is_some_and(|l| l.owner == config.owner && l.expires_ms > now);
        // A batch run (exit_when_idle) takes every free shard: it is there to finish.
        let within_share = config.exit_when_idle
            || share.held.load(Ordering::Relaxed) < share.fair.load(Ordering::Relaxed);
        let got = if ours || within_share {
            self.block(ctx.store.acquire_lease(
                &ctx.tenant,
                self.shard,
                &config.owner,
                config.lease_ttl_ms,
                now,
            ))?
        } else {
            None
        };
        match got {
            Some(lease) => {
                share.held.fetch_add(1, Ordering::Relaxed);
                Ok(Some(lease))
            }
            None => {
                if config.exit_when_idle {
                    tracing::warn!(
                        tenant = %ctx.tenant,
                        shard = %self.shard,
                        holder = ?current.map(|l| l.owner),
                        "another worker holds this shard; this batch run leaves it to that worker"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Restores offset and state under `lease` into an instance of `active`.
    fn open(&self, lease: Lease, active: Arc<Active>) -> Result<Cursor, WorkerError> {
        let (tenant, shard) = (&self.ctx.tenant, self.shard);
        let checkpoint = self.block(self.ctx.store.load_checkpoint(tenant, shard))?;
        let mut instance =
            active.plugin.instantiate(tenant, &active.config, self.config().limits)?;
        let (offset, state) = match checkpoint {
            Some(cp) => (Some(cp.bucket), cp.state),
            None => (None, Vec::new()),
        };
        let blank_digest = digest(&instance.snapshot()?);
        let closed = self.block(self.ctx.store.closed_until(tenant, shard))?;
        if !state.is_empty() {
            instance.restore(&state)?;
        }
        tracing::debug!(%tenant, %shard, epoch = lease.epoch, ?offset, plugin = %active.plugin.info().label(), "shard started");
        let now = now_ms();
        Ok(Cursor {
            seen_generation: active.generation,
            active,
            lease,
            offset,
            committed: offset,
            committed_at: now,
            instance: Some(instance),
            state_digest: if state.is_empty() { blank_digest } else { digest(&state) },
            blank_digest,
            closed,
            closing: None,
            closed_at: now,
            renewed_at: now,
            last_tick: now,
            tick_every: self.config().tick_ms,
            snapshot_ms: 0,
            failures: 0,
            failed_at: i64::MIN,
            retry: None,
            paused: None,
            dead_letters_seen: u64::MAX,
            idle_since: None,
        })
    }

    /// The shard's instance, re-created if it was dropped while holding nothing.
    fn instance<'c>(&self, c: &'c mut Cursor) -> Result<&'c mut PluginInstance, WorkerError> {
        match &mut c.instance {
            Some(_) => {}
            slot @ None => {
                let active = &c.active;
                *slot = Some(active.plugin.instantiate(
                    &self.ctx.tenant,
                    &active.config,
                    self.config().limits,
                )?);
            }
        }
        c.instance.as_mut().ok_or_else(|| {
            WorkerError::Store(StoreError::Backend {
                backend: "worker",
                message: "no instance".into(),
            })
        })
    }

    /// Takes the tenant's current plugin version at this bucket boundary: the old instance's
    /// state (after a commit) goes to a new instance's `restore`. `false`: the tenant has no
    /// plugin any more. A version that refuses the state is reported and the shard keeps the
    /// version it runs.
    fn switch(&self, c: &mut Cursor) -> Result<bool, WorkerError> {
        let slot = &self.ctx.slot;
        let generation = slot.generation();
        let Some(active) = slot.active() else {
            self.flush(c)?;
            return Ok(false);
        };
        if active.generation == c.active.generation {
            return Ok(true);
        }
        self.flush(c)?;
        // A shard holding nothing has no instance and nothing to hand over.
        let state = match &mut c.instance {
            Some(instance) => Some(instance.snapshot()?),
            None => None,
        };
        let handed = active
            .plugin
            .instantiate(&self.ctx.tenant, &active.config, self.config().limits)
            .and_then(|mut fresh| {
                let blank = digest(&fresh.snapshot()?);
                if let Some(state) = &state {
                    fresh.restore(state)?;
                }
                Ok((fresh, blank))
            });
        match handed {
            Ok((fresh, blank)) => {
                tracing::info!(
                    tenant = %self.ctx.tenant,
                    shard = %self.shard,
                    from = %c.active.plugin.info().label(),
                    to = %active.plugin.info().label(),
                    "plugin version switched at a bucket boundary"
                );
                if state.is_none() {
                    c.state_digest = blank;
                }
                c.instance = Some(fresh);
                c.blank_digest = blank;
                c.active = active;
                // A bucket waiting out a backoff is tried with the new version at once.
                if let Some((bucket, _)) = c.paused {
                    c.paused = Some((bucket, now_ms()));
                }
                if let Some((bucket, tried, _)) = c.retry {
                    c.retry = Some((bucket, tried, Instant::now()));
                }
            }
            Err(e) => slot.record_error(format!(
                "shard {}: the new version cannot take over the state: {e}; {} keeps serving this shard",
                self.shard,
                c.active.plugin.info().label()
            )),
        }
        c.seen_generation = generation;
        Ok(true)
    }

    /// One serving step: at most one bucket (or tick) processed.
    fn serve(&mut self, c: &mut Cursor) -> Result<Flow, WorkerError> {
        let ctx = self.ctx.clone();
        let config = &ctx.config;
        let bucket_ms = self.layout.bucket_ms;
        if ctx.stopping() {
            self.flush(c)?;
            return Ok(Flow::Stop(Stop::Done));
        }
        if ctx.slot.generation() != c.seen_generation && !self.switch(c)? {
            return Ok(Flow::Stop(Stop::Unloaded));
        }
        // Dead letters changed (the store said so, or the tenant's task saw letters marked for
        // replay): look for this shard's.
        let letters = ctx.run.dead_letter_changes.load(Ordering::Relaxed);
        if letters != c.dead_letters_seen {
            c.dead_letters_seen = letters;
            self.replay_dead_letters(c)?;
        }
        let now = now_ms();
        let renew_at = c.renewed_at + config.lease_ttl_ms / 3;
        if now >= renew_at {
            match self.block(ctx.store.renew_lease(
                &ctx.tenant,
                &c.lease,
                config.lease_ttl_ms,
                now,
            ))? {
                Some(l) => {
                    c.lease = l;
                    c.renewed_at = now;
                }
                None => {
                    tracing::warn!(tenant = %ctx.tenant, shard = %self.shard, "lease lost (another worker took the shard); this worker will take it again only when it is free");
                    return Ok(Flow::Stop(Stop::Lost));
                }
            }
            if let Err(e) = ctx.beat_if_stale(self.layout.shards) {
                tracing::warn!(tenant = %ctx.tenant, "heartbeat failed: {e}");
            }
        }
        let renew_at = instant_at(c.renewed_at + config.lease_ttl_ms / 3);
        if let Some((_, until)) = c.paused
            && now < until
        {
            return Ok(Flow::Step(Step::Sleep(Some(renew_at.min(instant_at(until))))));
        }
        if let Some((_, _, at)) = c.retry
            && Instant::now() < at
        {
            return Ok(Flow::Step(Step::Sleep(Some(renew_at.min(at)))));
        }
        // More shards than the fair share (a worker joined): one shard at a time hands its
        // shard over, at this bucket boundary, after its last commit.
        let share = &ctx.run.share;
        let fair = share.fair.load(Ordering::Relaxed);
        if !config.exit_when_idle
            && share.held.load(Ordering::Relaxed) > fair
            && share
                .handing_over
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.flush(c)?;
            return Ok(Flow::Stop(Stop::Handoff));
        }
        let lag = (config.delay_ms - ctx.store.close_grace_ms()).max(0);
        match self.block(ctx.store.next_bucket(&ctx.tenant, self.shard, c.offset))? {
            Some(b) if self.closed_for(c, b, now)? => {
                c.idle_since = None;
                self.lag_alarm(b, now);
                let events = self.block(ctx.store.read_bucket(&ctx.tenant, self.shard, b))?;
                match self.process(c, b, events)? {
                    Some(retry_at) => Ok(Flow::Step(Step::Sleep(Some(renew_at.min(retry_at))))),
                    None => Ok(Flow::Step(Step::Again)),
                }
            }
            Some(b) => {
                // Not readable yet: when its close takes effect, or when it may be closed.
                c.idle_since = None;
                let at = match c.closing {
                    Some((_, at)) => at,
                    None => b.0 + bucket_ms + lag,
                };
                Ok(Flow::Step(Step::Sleep(Some(renew_at.min(instant_at(at))))))
            }
            None => self.idle(c, now, renew_at),
        }
    }

    /// Nothing pending: let time pass for the plugin if it holds anything; otherwise drop the
    /// instance and, after the linger, the lease.
    fn idle(
        &mut self,
        c: &mut Cursor,
        now: TimestampMs,
        renew_at: Instant,
    ) -> Result<Flow, WorkerError> {
        let ctx = self.ctx.clone();
        let config = &ctx.config;
        let bucket_ms = self.layout.bucket_ms;
        let grace = ctx.store.close_grace_ms();
        let lag = (config.delay_ms - grace).max(0);
        // Process the latest closed bucket, empty (it is closed, so no event can still land
        // in it).
        // Buckets processed since the last commit are committed once the checkpoint interval
        // has passed, busy or not: an idle shard does not keep them uncommitted.
        let commit_at = c.committed_at + spaced(config.checkpoint_ms, c.snapshot_ms);
        if c.offset != c.committed && now >= commit_at {
            self.commit(c)?;
            return Ok(Flow::Step(Step::Again));
        }
        let holds_something = c.offset != c.committed || c.state_digest != c.blank_digest;
        let latest = self.close_to(now);
        let tick_at = c.last_tick + spaced(c.tick_every, c.snapshot_ms);
        if now >= tick_at && holds_something && c.offset.is_none_or(|o| o < latest) {
            // The latest closable bucket if it may be read now (a store without a grace),
            // else the newest whose close completed: with a grace of a bucket or more, the
            // latest closable bucket moves on while its close takes effect, so waiting for it
            // would never tick.
            let ready = if self.closed_for(c, latest, now)? {
                Some(latest)
            } else {
                c.closed.filter(|&x| c.offset.is_none_or(|o| o < x))
            };
            if let Some(b) = ready {
                if let Some(retry_at) = self.process(c, b, BucketEvents::default())? {
                    return Ok(Flow::Step(Step::Sleep(Some(renew_at.min(retry_at)))));
                }
                return Ok(Flow::Step(Step::Again));
            }
        }
        if config.exit_when_idle {
            let since = *c.idle_since.get_or_insert(now);
            if now - since >= bucket_ms + config.delay_ms {
                return self.drain(c).map(|()| Flow::Stop(Stop::Done));
            }
            let poll = Instant::now() + Duration::from_millis(config.poll_ms);
            return Ok(Flow::Step(Step::Sleep(Some(poll))));
        }
        let mut wake = renew_at;
        if let Some((_, at)) = c.closing {
            wake = wake.min(instant_at(at));
        }
        if c.offset != c.committed {
            wake = wake.min(instant_at(commit_at));
        }
        if holds_something {
            // The next tick: when due, once a bucket after the offset may be closed.
            let possible = c.offset.map_or(now, |o| o.0 + 2 * bucket_ms + lag);
            wake = wake.min(instant_at(tick_at.max(possible)));
            return Ok(Flow::Step(Step::Sleep(Some(wake))));
        }
        if c.paused.is_some() || c.retry.is_some() || c.closing.is_some() {
            return Ok(Flow::Step(Step::Sleep(Some(wake))));
        }
        // Holds nothing: the instance goes (re-created in microseconds for the next bucket).
        c.instance = None;
        let cold_at = c.last_tick.max(c.closed_at + grace) + config.linger_ms;
        if now >= cold_at {
            return Ok(Flow::Stop(Stop::Cold));
        }
        Ok(Flow::Step(Step::Sleep(Some(wake.min(instant_at(cold_at))))))
    }

    /// Logs an error when the bucket about to be read is older than half the events'
    /// retention: at this lag, events would expire before they are read.
    fn lag_alarm(&mut self, b: BucketStart, now: TimestampMs) {
        if let Some(retention) = self.ctx.store.retention_ms(&self.ctx.tenant)
            && now - b.0 >= retention / 2
            && now.saturating_sub(self.last_alarm) >= 60_000
        {
            self.last_alarm = now;
            tracing::error!(
                tenant = %self.ctx.tenant,
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
        let lag = (self.config().delay_ms - self.ctx.store.close_grace_ms()).max(0);
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
        self.block(self.ctx.store.close_buckets(&self.ctx.tenant, &c.lease, close_to))?;
        c.closed_at = now;
        let grace = self.ctx.store.close_grace_ms();
        if grace <= 0 {
            c.closed = Some(close_to);
            return Ok(true);
        }
        c.closing = Some((close_to, now + grace));
        Ok(false)
    }

    /// Process → publish → commit one bucket (the commit at most every `checkpoint_ms`). A
    /// bucket the plugin fails on is tried again after a backoff (`Some(when)`: the shard
    /// sleeps until then, holding no thread), and dead-lettered after the last attempt.
    fn process(
        &self,
        c: &mut Cursor,
        start: BucketStart,
        events: BucketEvents,
    ) -> Result<Option<Instant>, WorkerError> {
        let bucket_ms = self.layout.bucket_ms;
        let n = events.len() as u64;
        let views = events.views();
        let bucket = self.bucket(start, start.0 + bucket_ms);
        let attempt = match c.retry.take() {
            Some((b, tried, _)) if b == start => tried + 1,
            _ => 1,
        };
        // Stories may name events of earlier buckets, which this loop does not keep; ids
        // within the bucket are checked by the runtime.
        let stories = match self.instance(c)?.process_events(bucket, &views, &|_| true) {
            Ok(stories) => Some(stories),
            Err(err) => {
                tracing::warn!(attempt, "{err}");
                let wait = self.failed(c);
                // An instance that trapped is re-created from the last commit.
                if err.failure.poisons() {
                    self.rewind(c, start)?;
                }
                if attempt < self.config().attempts {
                    let at = Instant::now() + Duration::from_millis(wait);
                    c.retry = Some((start, attempt, at));
                    return Ok(Some(at));
                }
                let letter = DeadLetter {
                    shard: self.shard,
                    bucket: start,
                    plugin: c.active.plugin.info().label(),
                    reason: err.to_string(),
                    attempts: attempt,
                    at_ms: now_ms(),
                    replay: false,
                };
                self.block(self.ctx.store.put_dead_letter(&self.ctx.tenant, &letter))?;
                tracing::error!(
                    tenant = %self.ctx.tenant,
                    shard = %self.shard,
                    bucket = %start,
                    attempts = attempt,
                    "bucket dead-lettered: {err}; its {n} events are kept and reach the plugin again with `storyline replay --tenant {}` once it is fixed",
                    self.ctx.tenant
                );
                if self.config().on_failure == OnFailure::Pause {
                    tracing::warn!(tenant = %self.ctx.tenant, shard = %self.shard, bucket = start.0, wait_ms = wait, "shard paused on a failing bucket");
                    c.paused = Some((start, now_ms() + wait as i64));
                    return Ok(None);
                }
                self.ctx.shared.progress.dead_letters.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if c.paused.take().is_some_and(|(b, _)| b == start) {
            // The bucket it paused on went through: its dead letter is obsolete.
            self.block(self.ctx.store.delete_dead_letter(&self.ctx.tenant, self.shard, start))?;
            tracing::info!(tenant = %self.ctx.tenant, shard = %self.shard, bucket = start.0, "shard resumed");
        }
        let stories = stories.unwrap_or_default();
        if !stories.is_empty() {
            self.block(self.ctx.store.publish(&self.ctx.tenant, &stories, now_ms()))?;
            if let Some(sink) = &self.ctx.shared.sink {
                sink(&stories);
            }
        }
        let now = now_ms();
        if n == 0 {
            // A tick (time passing, no events) is committed whenever it changed something, so
            // that a replay after a crash never has to reproduce when ticks happened. A tick
            // that changed nothing is not committed: an idle shard writes nothing.
            let started = Instant::now();
            let state = self.instance(c)?.snapshot()?;
            if !stories.is_empty() || digest(&state) != c.state_digest {
                c.offset = Some(start);
                self.commit_state(c, state, started)?;
            } else {
                c.snapshot_ms = started.elapsed().as_millis() as i64;
            }
        } else {
            c.offset = Some(start);
            if now - c.committed_at >= spaced(self.config().checkpoint_ms, c.snapshot_ms) {
                self.commit(c)?;
            }
        }
        c.last_tick = now;
        let tick_ms = self.config().tick_ms;
        c.tick_every = if n == 0 && stories.is_empty() {
            c.tick_every.saturating_mul(2).min(tick_ms.saturating_mul(IDLE_TICK_STRETCH))
        } else {
            tick_ms
        };
        self.ctx.shared.progress.events.fetch_add(n, Ordering::Relaxed);
        self.ctx.shared.progress.buckets.fetch_add(1, Ordering::Relaxed);
        self.ctx.shared.progress.stories.fetch_add(stories.len() as u64, Ordering::Relaxed);
        Ok(None)
    }

    /// The bucket starting at `start` as the plugin sees it, but its events.
    fn bucket(&self, start: BucketStart, watermark: TimestampMs) -> BucketHeader<'_> {
        BucketHeader {
            tenant: self.ctx.tenant.as_str(),
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
            self.config().backoff_ms.saturating_mul(1 << c.failures.min(16)).min(MAX_BACKOFF_MS);
        c.failures += 1;
        wait
    }

    /// Processes again the dead letters of this shard an operator marked for replay
    /// (`storyline replay`), typically after the plugin was fixed: their events go to the
    /// current instance as a late bucket, the stories are published, the letter removed. A
    /// letter that fails again stays, with the new reason.
    fn replay_dead_letters(&self, c: &mut Cursor) -> Result<(), WorkerError> {
        let letters = self.block(self.ctx.store.dead_letters(&self.ctx.tenant))?;
        let bucket_ms = self.layout.bucket_ms;
        for letter in letters.into_iter().filter(|l| l.shard == self.shard && l.replay) {
            let events = self.block(self.ctx.store.read_bucket(
                &self.ctx.tenant,
                self.shard,
                letter.bucket,
            ))?;
            let n = events.len() as u64;
            let end = letter.bucket.0 + bucket_ms;
            // Time does not go back for the plugin: the bucket comes in late.
            let watermark = c.offset.map_or(end, |o| (o.0 + bucket_ms).max(end));
            let views = events.views();
            match self.instance(c)?.process_events(
                self.bucket(letter.bucket, watermark),
                &views,
                &|_| true,
            ) {
                Ok(stories) => {
                    if !stories.is_empty() {
                        self.block(self.ctx.store.publish(&self.ctx.tenant, &stories, now_ms()))?;
                        if let Some(sink) = &self.ctx.shared.sink {
                            sink(&stories);
                        }
                    }
                    self.commit(c)?;
                    self.block(self.ctx.store.delete_dead_letter(
                        &self.ctx.tenant,
                        self.shard,
                        letter.bucket,
                    ))?;
                    self.ctx.shared.progress.events.fetch_add(n, Ordering::Relaxed);
                    self.ctx
                        .shared
                        .progress
                        .stories
                        .fetch_add(stories.len() as u64, Ordering::Relaxed);
                    tracing::info!(tenant = %self.ctx.tenant, shard = %self.shard, bucket = letter.bucket.0, events = n, stories = stories.len(), "dead letter replayed");
                }
                Err(err) => {
                    tracing::warn!(tenant = %self.ctx.tenant, shard = %self.shard, bucket = letter.bucket.0, "replay failed: {err}");
                    if err.failure.poisons() {
                        let after = c
                            .offset
                            .map_or(BucketStart(i64::MIN), |o| BucketStart(o.0.saturating_add(1)));
                        self.rewind(c, after)?;
                    }
                    let again = DeadLetter {
                        plugin: c.active.plugin.info().label(),
                        reason: err.to_string(),
                        attempts: letter.attempts + 1,
                        at_ms: now_ms(),
                        replay: false,
                        ..letter
                    };
                    self.block(self.ctx.store.put_dead_letter(&self.ctx.tenant, &again))?;
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
                Err(WorkerError::Plugin(e)) if !self.ctx.stopping() => {
                    let wait = self.failed(c);
                    tracing::warn!(tenant = %self.ctx.tenant, shard = %self.shard, wait_ms = wait, "cannot re-create the plugin instance: {e}");
                    std::thread::sleep(Duration::from_millis(wait));
                }
                done => return done,
            }
        }
    }

    fn try_rewind(&self, c: &mut Cursor, failing: BucketStart) -> Result<(), WorkerError> {
        c.instance = Some(self.reinstantiate(c)?);
        let bucket_ms = self.layout.bucket_ms;
        let mut at = c.committed;
        while let Some(b) =
            self.block(self.ctx.store.next_bucket(&self.ctx.tenant, self.shard, at))?
        {
            if b >= failing {
                break;
            }
            let events = self.block(self.ctx.store.read_bucket(&self.ctx.tenant, self.shard, b))?;
            let views = events.views();
            self.instance(c)?.process_events(self.bucket(b, b.0 + bucket_ms), &views, &|_| true)?;
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
        let mut instance = c.active.plugin.instantiate(
            &self.ctx.tenant,
            &c.active.config,
            self.config().limits,
        )?;
        let checkpoint =
            self.block(self.ctx.store.load_checkpoint(&self.ctx.tenant, self.shard))?;
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
        let state = self.instance(c)?.snapshot()?;
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
        self.block(self.ctx.store.commit(&self.ctx.tenant, &c.lease, bucket, changed))?;
        c.state_digest = d;
        c.committed = Some(bucket);
        c.committed_at = now_ms();
        c.snapshot_ms = started.elapsed().as_millis() as i64;
        tracing::debug!(
            tenant = %self.ctx.tenant,
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
        let stories = self.instance(c)?.drain(&|_| true)?;
        if !stories.is_empty() {
            self.block(self.ctx.store.publish(&self.ctx.tenant, &stories, now_ms()))?;
            if let Some(sink) = &self.ctx.shared.sink {
                sink(&stories);
            }
            self.ctx.shared.progress.stories.fetch_add(stories.len() as u64, Ordering::Relaxed);
        }
        self.commit(c)?;
        tracing::info!(tenant = %self.ctx.tenant, shard = %self.shard, "drained");
        Ok(())
    }
}

/// A state's digest, kept in memory only (to skip writing an unchanged state). XXH3: several
/// GB/s, where SipHash took ~10 ms per 16 MB state.
fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
