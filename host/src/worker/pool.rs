//! A fixed pool of threads that runs tasks one step at a time.
//!
//! A task (a shard, a tenant's housekeeping) owns its state and does one bounded piece of work
//! per [`Task::step`]: a bucket, a tick, a lease. It then says when it wants to run again:
//! at once ([`Step::Again`]), at a time or when woken ([`Step::Sleep`]), or never
//! ([`Step::Done`]). A sleeping task holds no thread; thousands of idle shards cost a timer
//! each at most, and no timer at all when only new data can give them work ([`Pool::wake`]).
//!
//! Fairness: tasks are grouped by tenant and ready groups take turns, one step each, so a
//! tenant with a backlog cannot starve the others. While other tenants wait, one tenant holds
//! at most all threads but one: a guest looping until its deadline delays the others by at
//! most that deadline. Alone, a tenant uses every thread.
//!
//! Guests run on these threads, never on the async runtime; store calls block on it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::TenantId;

/// What a task wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work is ready: run again (after the other ready tenants had their turn).
    Again,
    /// Nothing to do until this time (`None`: until woken).
    Sleep(Option<Instant>),
    /// Finished: the task is dropped.
    Done,
}

/// A unit of work the pool runs step by step.
pub trait Task: Send + 'static {
    /// Does one bounded piece of work.
    fn step(&mut self) -> Step;
    /// The step panicked: the task is dropped after this (record why, release what it holds).
    fn panicked(&mut self, message: String);
}

/// Identifies a task in its pool.
pub type TaskId = u64;

thread_local! {
    /// The task this pool thread is stepping.
    static CURRENT: std::cell::Cell<Option<TaskId>> = const { std::cell::Cell::new(None) };
}

/// How often idle threads look at the stop flags they watch (see [`Pool::watch_stop`]).
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The pool. Cloning shares it; threads stop when [`Pool::close`] is called and every task is
/// done.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.inner.threads).finish_non_exhaustive()
    }
}

struct Inner {
    /// Number of threads.
    threads: usize,
    sched: Mutex<Sched>,
    /// Signalled when a task becomes ready or the pool closes.
    work: Condvar,
    /// Signalled when a task finishes.
    finished: Condvar,
}

#[derive(Default)]
struct Sched {
    tasks: HashMap<TaskId, Entry>,
    /// Tenants with ready tasks, in turn order.
    turns: VecDeque<TenantId>,
    groups: HashMap<TenantId, Group>,
    /// Wake-up times of sleeping tasks; stale entries are skipped (see [`Entry::sleep_seq`]).
    timers: BinaryHeap<Reverse<(Instant, TaskId, u64)>>,
    next_id: TaskId,
    /// No new tasks; threads end once the last task is done.
    closed: bool,
    /// Stop flags whose setting wakes every task (checked every [`STOP_CHECK`]).
    stops: Vec<(Arc<AtomicBool>, bool)>,
    stops_checked: Option<Instant>,
    /// Tasks finished so far (what [`Pool::wait_until`] waits on).
    finished_count: u64,
}

/// A tenant's tasks.
#[derive(Default)]
struct Group {
    /// Every task of the tenant.
    members: Vec<TaskId>,
    /// Its tasks ready to run, in order.
    ready: VecDeque<TaskId>,
    /// Its tasks running now.
    running: usize,
    /// Whether it is in [`Sched::turns`].
    queued: bool,
}

struct Entry {
    group: TenantId,
    /// The task; `None` while a thread runs it.
    task: Option<Box<dyn Task>>,
    state: State,
    /// Woken while running: run again rather than sleep.
    woken: bool,
    /// Increases with every sleep, so a timer set for an earlier sleep is ignored.
    sleep_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Running,
    Sleeping,
}

impl Pool {
    /// A pool of `threads` threads (at least one), named `storyline-pool-N`.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let inner = Arc::new(Inner {
            threads,
            sched: Mutex::new(Sched::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
        });
        for n in 0..threads {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("storyline-pool-{n}"))
                .spawn(move || inner.serve())?;
        }
        Ok(Pool { inner })
    }

    /// A pool with a thread per core.
    pub fn per_core() -> std::io::Result<Pool> {
        Pool::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Adds a task of `tenant`, ready to run.
    pub fn spawn(&self, tenant: &TenantId, task: Box<dyn Task>) -> TaskId {
        let mut s = self.inner.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.tasks.insert(
            id,
            Entry {
                group: tenant.clone(),
                task: Some(task),
                state: State::Ready,
                woken: false,
                sleep_seq: 0,
            },
        );
        s.groups.entry(tenant.clone()).or_default().members.push(id);
        s.make_ready(id);
        drop(s);
        self.inner.work.notify_one();
        id
    }

    /// Wakes every task of `tenant` (but `except`): a sleeping one runs at once, a running one
    /// runs again after its step.
    pub fn wake(&self, tenant: &TenantId, except: Option<TaskId>) {
        let mut s = self.inner.lock();
        let members = match s.groups.get(tenant) {
            Some(g) => g.members.clone(),
            None => return,
        };
        let mut any = false;
        for id in members.into_iter().filter(|&id| Some(id) != except) {
            any |= s.wake_one(id);
        }
        drop(s);
        if any {
            self.inner.work.notify_all();
        }
    }

    /// Wakes one task (see [`Pool::wake`]).
    pub fn wake_task(&self, id: TaskId) {
        let woke = self.inner.lock().wake_one(id);
        if woke {
            self.inner.work.notify_one();
        }
    }

    /// Wakes every task of every tenant.
    pub fn wake_all(&self) {
        let mut s = self.inner.lock();
        s.wake_everything();
        drop(s);
        self.inner.work.notify_all();
    }

    /// Wakes every task soon after `flag` is set (within [`STOP_CHECK`]): tasks sleeping until
    /// woken see a shutdown without polling it.
    pub fn watch_stop(&self, flag: Arc<AtomicBool>) {
        let mut s = self.inner.lock();
        if !s.stops.iter().any(|(f, _)| Arc::ptr_eq(f, &flag)) {
            s.stops.push((flag, false));
        }
    }

    /// The task the calling thread is stepping, if any.
    pub fn current(&self) -> Option<TaskId> {
        CURRENT.get()
    }

    /// Number of tasks not done.
    pub fn tasks(&self) -> usize {
        self.inner.lock().tasks.len()
    }

    /// Waits until `done` holds, checked whenever a task finishes. `done` runs without the
    /// pool's lock (it may call the pool).
    pub fn wait_until(&self, mut done: impl FnMut() -> bool) {
        loop {
            let seen = self.inner.lock().finished_count;
            if done() {
                return;
            }
            let s = self.inner.lock();
            if s.finished_count == seen {
                drop(
                    self.inner
                        .finished
                        .wait_timeout(s, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner()),
                );
            }
        }
    }

    /// No more tasks: threads end once every task is done.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.work.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A thread's loop: take the next ready task, step it, put it back.
    fn serve(&self) {
        let mut s = self.lock();
        loop {
            let now = Instant::now();
            s.fire_timers(now);
            if s.check_stops(now) {
                self.work.notify_all();
            }
            if let Some((id, mut task)) = s.next_ready(self.threads) {
                drop(s);
                CURRENT.set(Some(id));
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.step()))
                    .unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|m| m.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a task panicked".into());
                        task.panicked(message);
                        Step::Done
                    });
                CURRENT.set(None);
                s = self.lock();
                if step == Step::Done {
                    s.remove(id);
                    s.finished_count += 1;
                    drop(s);
                    // Dropped outside the lock: a task may release resources as it goes.
                    drop(task);
                    self.finished.notify_all();
                    s = self.lock();
                } else if s.put_back(id, task, step) {
                    self.work.notify_one();
                }
                continue;
            }
            if s.closed && s.tasks.is_empty() {
                self.work.notify_all();
                return;
            }
            let mut wait = STOP_CHECK;
            if let Some(Reverse((at, _, _))) = s.timers.peek() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            s = self.work.wait_timeout(s, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Sched {
    fn make_ready(&mut self, id: TaskId) {
        let Some(e) = self.tasks.get_mut(&id) else { return };
        e.state = State::Ready;
        let group = self.groups.entry(e.group.clone()).or_default();
        group.ready.push_back(id);
        if !group.queued {
            group.queued = true;
            self.turns.push_back(e.group.clone());
        }
    }

    /// Wakes one task; whether it became ready.
    fn wake_one(&mut self, id: TaskId) -> bool {
        let Some(e) = self.tasks.get_mut(&id) else { return false };
        match e.state {
            State::Sleeping => {
                self.make_ready(id);
                true
            }
            State::Running => {
                e.woken = true;
                false
            }
            State::Ready => false,
        }
    }

    fn wake_everything(&mut self) {
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.wake_one(id);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id, seq))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            if self.tasks.get(&id).is_some_and(|e| e.state == State::Sleeping && e.sleep_seq == seq)
            {
                self.make_ready(id);
            }
        }
    }

    /// Whether a watched stop flag was newly set (every task is then woken).
    fn check_stops(&mut self, now: Instant) -> bool {
        if self.stops_checked.is_some_and(|at| now.duration_since(at) < STOP_CHECK) {
            return false;
        }
        self.stops_checked = Some(now);
        let mut newly = false;
        for (flag, seen) in &mut self.stops {
            if !*seen && flag.load(Ordering::Relaxed) {
                *seen = true;
                newly = true;
            }
        }
        if newly {
            self.wake_everything();
        }
        newly
    }

    /// The next task to run: tenants take turns; while others wait, one tenant runs on at most
    /// all threads but one.
    fn next_ready(&mut self, threads: usize) -> Option<(TaskId, Box<dyn Task>)> {
        let cap = threads.saturating_sub(1).max(1);
        let mut passed = 0;
        while let Some(tenant) = self.turns.pop_front() {
            let others_waiting = !self.turns.is_empty();
            let Some(group) = self.groups.get_mut(&tenant) else { continue };
            if others_waiting && group.running >= cap && passed < self.turns.len() + 1 {
                // Its turn goes to the next tenant; it keeps its place after them.
                self.turns.push_back(tenant);
                passed += 1;
                continue;
            }
            let Some(id) = group.ready.pop_front() else {
                group.queued = false;
                continue;
            };
            group.running += 1;
            if group.ready.is_empty() {
                group.queued = false;
            } else {
                self.turns.push_back(tenant);
            }
            let e = self.tasks.get_mut(&id)?;
            e.state = State::Running;
            e.woken = false;
            return e.task.take().map(|t| (id, t));
        }
        None
    }

    /// Returns a stepped task; whether a thread should be woken for it.
    fn put_back(&mut self, id: TaskId, task: Box<dyn Task>, step: Step) -> bool {
        let Some(e) = self.tasks.get_mut(&id) else { return false };
        e.task = Some(task);
        let group = e.group.clone();
        let woken = std::mem::take(&mut e.woken);
        if let Some(g) = self.groups.get_mut(&group) {
            g.running = g.running.saturating_sub(1);
        }
        match step {
            Step::Sleep(at) if !woken => {
                e.state = State::Sleeping;
                e.sleep_seq += 1;
                if let Some(at) = at {
                    let seq = e.sleep_seq;
                    self.timers.push(Reverse((at, id, seq)));
                }
                // A tenant held back by the cap may run now.
                !self.turns.is_empty()
            }
            _ => {
                self.make_ready(id);
                true
            }
        }
    }

    fn remove(&mut self, id: TaskId) {
        let Some(e) = self.tasks.remove(&id) else { return };
        if let Some(g) = self.groups.get_mut(&e.group) {
            g.running = g.running.saturating_sub(1);
            g.members.retain(|&m| m != id);
            g.ready.retain(|&m| m != id);
            if g.members.is_empty() {
                self.groups.remove(&e.group);
                self.turns.retain(|t| t != &e.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter {
        left: usize,
        log: Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    }

    impl Task for Counter {
        fn step(&mut self) -> Step {
            self.log.lock().unwrap().push(self.name);
            self.left -= 1;
            if self.left == 0 { Step::Done } else { Step::Again }
        }
        fn panicked(&mut self, _: String) {}
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn ready_tenants_take_turns_whatever_their_backlog() {
        let pool = Pool::new(1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        // Hold the only thread while both tenants queue up, so the order is the scheduler's.
        let gate = Arc::new(Mutex::new(()));
        struct Gate(Arc<Mutex<()>>);
        impl Task for Gate {
            fn step(&mut self) -> Step {
                drop(self.0.lock().unwrap());
                Step::Done
            }
            fn panicked(&mut self, _: String) {}
        }
        let held = gate.lock().unwrap();
        pool.spawn(&tenant("gate"), Box::new(Gate(gate.clone())));
        std::thread::sleep(Duration::from_millis(50));
        pool.spawn(&tenant("busy"), Box::new(Counter { left: 5, log: log.clone(), name: "busy" }));
        pool.spawn(&tenant("busy"), Box::new(Counter { left: 5, log: log.clone(), name: "busy" }));
        pool.spawn(
            &tenant("small"),
            Box::new(Counter { left: 2, log: log.clone(), name: "small" }),
        );
        drop(held);
        pool.wait_until(|| pool.tasks() == 0);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 12);
        // The small tenant's two steps come within the first four, not after the busy ten.
        let small: Vec<usize> =
            log.iter().enumerate().filter(|(_, n)| **n == "small").map(|(i, _)| i).collect();
        assert_eq!(small, vec![1, 3], "{log:?}");
        pool.close();
    }

    struct Sleeper {
        woken: Arc<AtomicUsize>,
        slept: bool,
    }

    impl Task for Sleeper {
        fn step(&mut self) -> Step {
            if !self.slept {
                self.slept = true;
                return Step::Sleep(None);
            }
            self.woken.fetch_add(1, Ordering::SeqCst);
            Step::Done
        }
        fn panicked(&mut self, _: String) {}
    }

    #[test]
    fn a_task_sleeping_until_woken_runs_when_its_tenant_is_woken_and_not_before() {
        let pool = Pool::new(2).unwrap();
        let woken = Arc::new(AtomicUsize::new(0));
        pool.spawn(&tenant("a"), Box::new(Sleeper { woken: woken.clone(), slept: false }));
        pool.spawn(&tenant("b"), Box::new(Sleeper { woken: woken.clone(), slept: false }));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(woken.load(Ordering::SeqCst), 0);
        pool.wake(&tenant("a"), None);
        pool.wait_until(|| pool.tasks() == 1);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        let stop = Arc::new(AtomicBool::new(false));
        pool.watch_stop(stop.clone());
        stop.store(true, Ordering::Relaxed);
        pool.wait_until(|| pool.tasks() == 0);
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        pool.close();
    }

    struct Timed {
        at: Instant,
        ran_at: Arc<Mutex<Option<Instant>>>,
        slept: bool,
    }

    impl Task for Timed {
        fn step(&mut self) -> Step {
            if !self.slept {
                self.slept = true;
                return Step::Sleep(Some(self.at));
            }
            *self.ran_at.lock().unwrap() = Some(Instant::now());
            Step::Done
        }
        fn panicked(&mut self, _: String) {}
    }

    #[test]
    fn a_sleeping_task_runs_again_at_its_time_and_a_panic_ends_only_that_task() {
        let pool = Pool::new(1).unwrap();
        let at = Instant::now() + Duration::from_millis(150);
        let ran_at = Arc::new(Mutex::new(None));
        pool.spawn(&tenant("a"), Box::new(Timed { at, ran_at: ran_at.clone(), slept: false }));
        struct Panics(Arc<Mutex<Option<String>>>);
        impl Task for Panics {
            fn step(&mut self) -> Step {
                panic!("boom")
            }
            fn panicked(&mut self, message: String) {
                *self.0.lock().unwrap() = Some(message);
            }
        }
        let why = Arc::new(Mutex::new(None));
        pool.spawn(&tenant("b"), Box::new(Panics(why.clone())));
        pool.wait_until(|| pool.tasks() == 0);
        assert!(ran_at.lock().unwrap().is_some_and(|r| r >= at));
        assert_eq!(why.lock().unwrap().as_deref(), Some("boom"));
        pool.close();
    }
}
