//! Sessionizing: group events by key into sessions that close after a gap of inactivity.
//!
//! Built for sensors whose clocks disagree and whose records arrive late:
//!
//! - an event joins a session of the same key when its time is within `gap + skew` of the
//!   session's span (so a sensor whose clock is 30 s off still lands in the right session);
//! - an event may carry a *reach* (a flow record that covers a connection of some duration and
//!   is stamped at its start or its end): it matches sessions within that reach too;
//! - a session never spans more than `max_span`, or the widest reach of its events when that is
//!   longer (a flow record saying its connection lasted hours); past it, the same key starts a
//!   new session (a 5-tuple reused long after is a different session);
//! - a session closes when the watermark (the host's processing-time clock) passes its last
//!   activity plus `gap + skew`: a session seen by only one sensor does not wait forever;
//! - a closed session is kept for `reopen` more: a late event that belongs to it reopens it and
//!   it is published again with the next revision of the same id. An event that matches an
//!   open session and a published one as closely joins the open one;
//! - a published session that still awaits a record (a rule's call, see
//!   [`Sessionizer::set_awaiting`]: a connection whose flow record its sensor writes when the
//!   connection ends, hours later for a long one) is kept, encoded, for [`Awaiting::ms`] more,
//!   within a memory budget, so that the record joins its story instead of opening another.
//!
//! A published session is kept encoded (postcard) beside the few times that matching and
//! scheduling need, and decoded only when a late event joins it ([`Sessionizer::find`] decodes
//! a copy). Published sessions are most of what a live shard keeps (10 of its 11.5 minutes by
//! default): encoded, `network-session` holds a third less memory at steady state, and a
//! snapshot copies their bytes instead of encoding them again (half the time).
//!
//! Story ids are derived from the key and the event that opened the session, so the same input
//! gives the same ids across restarts and replays. The whole state serialises with
//! [`Sessionizer::snapshot`] and comes back with [`Sessionizer::restore`].
//!
//! [`Sessionizer::advance`] visits only the keys whose next deadline has come, found in a
//! min-heap of (due time, key), not every session kept. A live shard keeps each session for
//! `gap + skew + reopen` (11.5 minutes by default) of one-second buckets, so a scan of all of
//! them per bucket would cost each event hundreds of session visits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};
use sha1::{Digest, Sha1};

use crate::model::{Error, Story, TimestampMs};

/// Timeouts and tolerances of a [`Sessionizer`], in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Inactivity that ends a session. Default 60 000 (one minute).
    pub gap_ms: i64,
    /// Longest span of one session; a later event starts a new one. Default 3 600 000 (1 h).
    pub max_span_ms: i64,
    /// How far sensor clocks may disagree. Default 30 000.
    pub skew_ms: i64,
    /// How long a published session is kept so that a late event publishes a new revision
    /// instead of a new story. Default 600 000 (10 min).
    pub reopen_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            gap_ms: 60_000,
            max_span_ms: 3_600_000,
            skew_ms: 30_000,
            reopen_ms: 600_000,
        }
    }
}

impl SessionConfig {
    /// Checks that every value is usable; the error says which is not.
    pub fn validate(&self) -> Result<(), Error> {
        let fields =
            [("gap_ms", self.gap_ms), ("max_span_ms", self.max_span_ms), ("skew_ms", self.skew_ms)];
        for (name, v) in fields {
            if v < 0 {
                return Err(Error::InvalidConfig(format!("{name} is {v}; it must be >= 0")));
            }
        }
        if self.reopen_ms < 0 {
            return Err(Error::InvalidConfig(format!(
                "reopen_ms is {}; it must be >= 0",
                self.reopen_ms
            )));
        }
        Ok(())
    }
}

/// One session: its events and the data a rule accumulates for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session<D> {
    /// Deterministic story id.
    pub id: String,
    /// The key the session was grouped by.
    pub key: String,
    /// Earliest event time.
    pub first_seen: TimestampMs,
    /// Latest event time.
    pub last_seen: TimestampMs,
    /// Ids of the events, in the order they were added.
    pub event_ids: Vec<String>,
    /// What the rule accumulates (endpoints, names, ...).
    pub data: D,
    /// The revision the next publication will carry.
    revision: u32,
    /// Watermark when the last event was added: the processing-time side of the timeout.
    touched: TimestampMs,
    /// Events were added since the last publication.
    dirty: bool,
    /// How far around an event's time it may match, widest seen (flow durations).
    reach_ms: i64,
}

impl<D> Session<D> {
    /// The revision the next publication of this session carries (0 before the first).
    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// A story for this session with the given kind and no fields; the rule adds its fields.
    pub fn story(&self, kind: &str) -> Story {
        Story {
            id: self.id.clone(),
            revision: self.revision,
            kind: kind.to_string(),
            event_ids: self.event_ids.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            fields: crate::model::Fields::new(),
        }
    }

    fn times(&self) -> Times {
        Times {
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            touched: self.touched,
            reach_ms: self.reach_ms,
        }
    }

    /// When the session next needs a visit from `advance`: its deadline while it has unpublished
    /// events, else the end of its reopen window, when it is forgotten.
    fn due(&self, cfg: &SessionConfig) -> TimestampMs {
        let deadline = self.times().deadline(cfg);
        if self.dirty { deadline } else { deadline.saturating_add(cfg.reopen_ms) }
    }
}

/// A session's times: whether an event matches it, how near, and when it closes. A published
/// session keeps them beside its encoded bytes, so that it is decoded only when an event joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    first_seen: TimestampMs,
    last_seen: TimestampMs,
    /// Watermark when the last event was added.
    touched: TimestampMs,
    /// Widest reach of its events.
    reach_ms: i64,
}

impl Times {
    // Saturating arithmetic throughout: event times come from sensors and may be absurd.
    /// Whether an event at `time` (± `reach`) joins this session when clocks may disagree by
    /// `skew` (the configured skew, or less for an event whose clock is known).
    fn matches(&self, time: TimestampMs, reach: i64, skew: i64, cfg: &SessionConfig) -> bool {
        let reach = reach.max(self.reach_ms);
        let slack = cfg.gap_ms.saturating_add(skew).saturating_add(reach);
        let within = time >= self.first_seen.saturating_sub(slack)
            && time <= self.last_seen.saturating_add(slack);
        let span = self.last_seen.max(time).saturating_sub(self.first_seen.min(time));
        // A record that covers a longer connection than `max_span` lets its session span it.
        within && span <= cfg.max_span_ms.max(reach).saturating_add(skew)
    }

    fn distance(&self, time: TimestampMs) -> i64 {
        if time < self.first_seen {
            self.first_seen.saturating_sub(time)
        } else {
            time.saturating_sub(self.last_seen).max(0)
        }
    }

    /// When the session closes: its last activity plus gap and skew. Last activity is the later
    /// of its last event time and the watermark it was last touched at, except that an event
    /// stamped in the future (a fast clock) is believed only up to `skew`. A reach past
    /// `max_span` waits no longer than `max_span` does: a record covering hours is written when
    /// its connection ends, and what comes after the close revises the story.
    fn deadline(&self, cfg: &SessionConfig) -> TimestampMs {
        let activity =
            self.last_seen.max(self.touched).min(self.touched.saturating_add(cfg.skew_ms));
        activity
            .saturating_add(cfg.gap_ms)
            .saturating_add(cfg.skew_ms)
            .saturating_add(self.reach_ms.min(cfg.max_span_ms))
    }
}

/// A published session kept only for late events: its postcard encoding, about a sixth of the
/// memory the decoded session holds, and copied as it is into snapshots. An event that joins
/// it decodes it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frozen {
    times: Times,
    bytes: Box<[u8]>,
    /// It awaits a late record: kept for [`Awaiting::ms`] past its reopen window, and counted
    /// in the sessionizer's awaiting budget while it is kept.
    awaits: bool,
}

impl Frozen {
    fn freeze<D: Serialize>(session: &Session<D>) -> Frozen {
        thread_local! {
            // Encoded into first, then copied out in one allocation of the exact size.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let bytes = SCRATCH.with_borrow_mut(|scratch| {
            if scratch.is_empty() {
                scratch.resize(4096, 0);
            }
            loop {
                match postcard::to_slice(session, scratch) {
                    Ok(bytes) => return Box::from(&*bytes),
                    Err(postcard::Error::SerializeBufferFull) => {
                        let n = scratch.len() * 2;
                        scratch.resize(n, 0);
                    }
                    // Plain data cannot fail to serialise; were it to, the session would not
                    // decode again and a late event would open a new one.
                    Err(_) => return Box::default(),
                }
            }
        });
        Frozen { times: session.times(), bytes, awaits: false }
    }

    fn thaw<D: DeserializeOwned>(&self) -> Option<Session<D>> {
        postcard::from_bytes(&self.bytes).ok()
    }

    /// When it is forgotten: the end of its reopen window, or `await_ms` later when it awaits
    /// a late record.
    fn due(&self, cfg: &SessionConfig, await_ms: i64) -> TimestampMs {
        let kept = if self.awaits { cfg.reopen_ms.saturating_add(await_ms) } else { cfg.reopen_ms };
        self.times.deadline(cfg).saturating_add(kept)
    }

    /// What it counts against the awaiting budget when it awaits (else nothing), for a key of
    /// `key_len` bytes: its bytes, the key (held for it alone once its key has no other
    /// session), and an estimate of the map's, the schedule's and the index's entries.
    fn awaiting_cost(&self, key_len: usize) -> usize {
        if self.awaits { self.bytes.len() + key_len + AWAITING_OVERHEAD } else { 0 }
    }
}

/// Bytes counted per awaiting session beside its encoding and key: its times and box (40), its
/// key's map entry and `Keyed` (~100), schedule entry (24), and a rule's index entries.
const AWAITING_OVERHEAD: usize = 200;

/// How long, and within how much memory, published sessions that await a late record are kept
/// after their reopen window (see [`Sessionizer::set_awaiting`]). The default keeps none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Awaiting {
    /// How long past its reopen window such a session is kept, ms. Default 0: none is.
    pub ms: i64,
    /// Most memory the kept sessions may hold, bytes (their encoding, key, and an estimate of
    /// the bookkeeping). A session published while the budget is spent is kept for its reopen
    /// window only, as any other. Default 0.
    pub max_bytes: usize,
}

/// Sessions by key; a key has more than one session when its tuple was reused. A hash map with a
/// fixed hasher: looking a key up is one hash instead of a dozen comparisons of keys that share
/// long prefixes (community ids all start alike). Its order is never observed: stories leave
/// sorted by id and snapshots list keys in a fixed order. Keys are shared with the schedule, so a
/// scheduled key costs no copy of it.
type Sessions<D> = HashMap<Arc<str>, Keyed<D>, FxBuildHasher>;

/// The sessions of one key and when `advance` visits them next.
#[derive(Debug, Clone)]
struct Keyed<D> {
    /// The key, shared with the map and the schedule.
    key: Arc<str>,
    /// Sessions with events not yet published (usually one; more when the key's tuple was
    /// reused), and published ones a rule looked into with `find_mut` since their last visit.
    open: Vec<Session<D>>,
    /// Published sessions kept for late events, in the order they were published.
    frozen: Vec<Frozen>,
    /// The time of this key's live entry in the schedule: never later than the earliest due
    /// time of its sessions. Other entries of the key in the heap are stale.
    scheduled: TimestampMs,
}

/// Which session of a key an event at a time joins.
enum Pick {
    Open(usize),
    Frozen(usize),
}

impl<D> Keyed<D> {
    fn new(key: Arc<str>) -> Self {
        Keyed { key, open: Vec::new(), frozen: Vec::new(), scheduled: TimestampMs::MAX }
    }

    /// The session an event at `time` (± `reach`) joins: the nearest that matches, an open one
    /// when an open and a published one are as near.
    fn pick(&self, time: TimestampMs, reach: i64, skew: i64, cfg: &SessionConfig) -> Option<Pick> {
        let open = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, s)| s.times().matches(time, reach, skew, cfg))
            .map(|(i, s)| (s.times().distance(time), i))
            .min_by_key(|&(d, _)| d);
        let frozen = self
            .frozen
            .iter()
            .enumerate()
            .filter(|(_, f)| f.times.matches(time, reach, skew, cfg))
            .map(|(i, f)| (f.times.distance(time), i))
            .min_by_key(|&(d, _)| d);
        match (open, frozen) {
            (Some((d, i)), Some((e, _))) if d <= e => Some(Pick::Open(i)),
            (Some((_, i)), None) => Some(Pick::Open(i)),
            (_, Some((_, j))) => Some(Pick::Frozen(j)),
            (None, None) => None,
        }
    }

    /// The session an event at `time` joins, open, by index; `None` when none takes it.
    ///
    /// Candidates are the sessions it matches that `accept` takes (published ones are decoded
    /// to ask). One candidate takes it. Several are bridged by it: as session windows do, they
    /// become one, whatever order their events came in. The nearest survives (then the one
    /// published most, the earliest, the smallest id) and takes in every other that
    /// [`Mergeable::can_merge`] allows; each merged one that was published leaves a
    /// [`Tombstone`] in `merged`, so that its last revision says where its events went.
    /// Awaiting sessions decoded give their cost back into `freed`.
    fn take(
        &mut self,
        at: (TimestampMs, i64, i64),
        cfg: &SessionConfig,
        accept: &dyn Fn(&D) -> bool,
        (merged, freed): (&mut Vec<Tombstone>, &mut usize),
    ) -> Option<usize>
    where
        D: Default + DeserializeOwned + Mergeable,
    {
        let (time, reach, skew) = at;
        // Published sessions it matches are decoded and held open (until they are next due,
        // as `find_mut` does), so that every candidate is an open one.
        let mut j = 0;
        while j < self.frozen.len() {
            if self.frozen[j].times.matches(time, reach, skew, cfg)
                && let Some(s) = self.frozen[j].thaw::<D>()
            {
                *freed += self.frozen.remove(j).awaiting_cost(self.key.len());
                self.push_open(s);
                continue;
            }
            j += 1;
        }
        let takes = |s: &Session<D>| s.times().matches(time, reach, skew, cfg) && accept(&s.data);
        // Nearly always one candidate or none: find it without collecting.
        let mut found = (0..self.open.len()).filter(|&i| takes(&self.open[i]));
        let first = found.next()?;
        if found.next().is_none() {
            return Some(first);
        }
        let mut candidates: Vec<usize> =
            (first..self.open.len()).filter(|&i| takes(&self.open[i])).collect();
        let rank = |s: &Session<D>| {
            (s.times().distance(time), Reverse(s.revision), s.first_seen, s.id.clone())
        };
        candidates.sort_by_key(|&i| rank(&self.open[i]));
        let survivor = candidates[0];
        let mut absorbed: Vec<usize> = Vec::new();
        for &i in &candidates[1..] {
            if self.open[survivor].data.can_merge(&self.open[i].data) {
                absorbed.push(i);
                // Merged now, so that the next candidate is checked against the whole.
                // The absorbed session is removed below.
                let other = std::mem::take(&mut self.open[i].data);
                let (first, last, touched, reach_ms) = {
                    let o = &self.open[i];
                    (o.first_seen, o.last_seen, o.touched, o.reach_ms)
                };
                let ids = std::mem::take(&mut self.open[i].event_ids);
                let (sid, srev) = (self.open[i].id.clone(), self.open[i].revision);
                let s = &mut self.open[survivor];
                if srev > 0 {
                    merged.push(Tombstone {
                        id: sid,
                        revision: srev,
                        first_seen: first,
                        last_seen: last,
                        into: s.id.clone(),
                    });
                }
                s.first_seen = s.first_seen.min(first);
                s.last_seen = s.last_seen.max(last);
                s.touched = s.touched.max(touched);
                s.reach_ms = s.reach_ms.max(reach_ms);
                s.event_ids.extend(ids);
                s.data.merge_from(other);
                s.dirty = true;
            }
        }
        // Remove the absorbed sessions, highest index first; the survivor's index moves down
        // by those before it.
        absorbed.sort_unstable();
        let mut index = survivor;
        for &i in absorbed.iter().rev() {
            self.open.remove(i);
            if i < survivor {
                index -= 1;
            }
        }
        Some(index)
    }

    /// Adds an open session, in room for exactly one more (a vector's first growth would make
    /// room for four decoded sessions, kilobytes kept for ten minutes); its index.
    fn push_open(&mut self, session: Session<D>) -> usize {
        self.open.reserve_exact(1);
        self.open.push(session);
        self.open.len() - 1
    }

    /// The earliest due time of its sessions; `None` when it has none left.
    fn due(&self, cfg: &SessionConfig, await_ms: i64) -> Option<TimestampMs> {
        let open = self.open.iter().map(|s| s.due(cfg));
        open.chain(self.frozen.iter().map(|f| f.due(cfg, await_ms))).min()
    }

    /// What its awaiting sessions count against the budget.
    fn awaiting_cost(&self) -> usize {
        self.frozen.iter().map(|f| f.awaiting_cost(self.key.len())).sum()
    }
}

/// A session [`Sessionizer::find`] found: borrowed while open, decoded when published.
#[derive(Debug)]
pub enum Found<'a, D> {
    /// A session with events not yet published.
    Open(&'a Session<D>),
    /// A published session kept for late events, decoded for the caller.
    Published(Box<Session<D>>),
}

impl<D> std::ops::Deref for Found<'_, D> {
    type Target = Session<D>;
    fn deref(&self) -> &Session<D> {
        match self {
            Found::Open(s) => s,
            Found::Published(s) => s,
        }
    }
}

/// Groups events into sessions by key. `D` is the per-session data of the rule.
#[derive(Debug, Clone)]
pub struct Sessionizer<D> {
    config: SessionConfig,
    sessions: Sessions<D>,
    /// Published sessions merged into others since the last `advance`: their last revisions.
    merged: Vec<Tombstone>,
    /// (due time, key), earliest first: when `advance` must look at a key. Rebuilt from the
    /// sessions on restore and on a change of configuration, never serialised.
    schedule: BinaryHeap<Reverse<(TimestampMs, Arc<str>)>>,
    /// How long and within how much memory awaiting sessions are kept; a rule's setting, not
    /// serialised (none are kept until the rule sets it again after a restore).
    awaiting: Awaiting,
    /// Whether a session being published awaits a late record (the rule's, with `awaiting`).
    awaits: fn(&D) -> bool,
    /// What the awaiting sessions kept count against `awaiting.max_bytes` (recomputed on
    /// restore).
    awaiting_bytes: usize,
}

/// No session awaits anything: the default of [`Sessionizer::set_awaiting`].
fn awaits_nothing<D>(_: &D) -> bool {
    false
}

/// Marks the snapshot layout with published sessions as bytes. It stands where the first layout
/// has `gap_ms`, which is never negative, so a snapshot of either layout is read.
const LAYOUT_FROZEN: i64 = -2;

/// [`LAYOUT_FROZEN`] followed by merges not yet told (see [`Tombstone`]).
const LAYOUT_MERGES: i64 = -3;

/// [`LAYOUT_MERGES`] with a flag per published session: whether it awaits a late record.
/// Written only when one does, so that a state without any reads with older versions.
const LAYOUT_AWAITING: i64 = -4;

/// What session data must do when an event bridges two sessions of a key and they become one:
/// take in the other's data. `()` for rules that keep nothing per session.
pub trait Mergeable {
    /// Adds `other`'s data to this one's. The result must not depend on which of the two was
    /// `self` (sets, minima and maxima do not), so that stories do not depend on arrival order.
    fn merge_from(&mut self, other: Self);

    /// Whether the two sessions may be one at all: a rule that knows they are not (two flow
    /// records of one sensor are two connections) says no, and an event between them joins
    /// the nearer. Default: yes.
    fn can_merge(&self, _other: &Self) -> bool {
        true
    }
}

impl Mergeable for () {
    fn merge_from(&mut self, _other: Self) {}
}

/// The other's values after this one's.
impl<T> Mergeable for Vec<T> {
    fn merge_from(&mut self, other: Self) {
        self.extend(other);
    }
}

/// The union.
impl<T: Ord> Mergeable for std::collections::BTreeSet<T> {
    fn merge_from(&mut self, other: Self) {
        self.extend(other);
    }
}

/// Every entry; a key both hold merges its values.
impl<K: Ord, V: Mergeable> Mergeable for std::collections::BTreeMap<K, V> {
    fn merge_from(&mut self, other: Self) {
        for (k, v) in other {
            match self.entry(k) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge_from(v),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
    }
}

/// What either holds, merged when both do.
impl<T: Mergeable> Mergeable for Option<T> {
    fn merge_from(&mut self, other: Self) {
        match (self.as_mut(), other) {
            (Some(mine), Some(theirs)) => mine.merge_from(theirs),
            (None, theirs) => *self = theirs,
            (Some(_), None) => {}
        }
    }
}

/// A published session that a bridging event merged into another: its last revision lists no
/// events and names, in `fields.merged_into`, the story that holds them now. A consumer keeping
/// each story's latest revision thus sees every event once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The merged story's id.
    pub id: String,
    /// Its last revision.
    pub revision: u32,
    /// Its times when it was merged.
    pub first_seen: TimestampMs,
    /// See `first_seen`.
    pub last_seen: TimestampMs,
    /// The story its events went to.
    pub into: String,
}

/// The kind of a merged story's last revision.
pub const MERGED_KIND: &str = "merged";

impl Tombstone {
    /// The last revision of the merged story.
    pub fn story(&self) -> Story {
        Story {
            id: self.id.clone(),
            revision: self.revision,
            kind: MERGED_KIND.to_string(),
            event_ids: Vec::new(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            fields: crate::model::Fields::builder().field("merged_into", &self.into).finish(),
        }
    }
}

/// Snapshots hold the sessions as a map in a fixed order (key hash, then key), so that equal
/// states give equal bytes (the host skips rewriting an unchanged snapshot) whatever order the
/// keys were added in. Layout: the marker [`LAYOUT_FROZEN`], the configuration, then per key its
/// open sessions and its published ones (their times, then their encoded bytes as they are).
impl<D: Serialize> Serialize for Sessionizer<D> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        /// Published sessions; with their `awaits` flags in [`LAYOUT_AWAITING`].
        struct FrozenOut<'a>(&'a [Frozen], bool);
        impl Serialize for FrozenOut<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if self.1 {
                    return serializer.collect_seq(self.0.iter().map(|f| {
                        let t = f.times;
                        let bytes = Bytes(&f.bytes);
                        (t.first_seen, t.last_seen, t.touched, t.reach_ms, f.awaits, bytes)
                    }));
                }
                serializer.collect_seq(self.0.iter().map(|f| {
                    let t = f.times;
                    (t.first_seen, t.last_seen, t.touched, t.reach_ms, Bytes(&f.bytes))
                }))
            }
        }
        struct Sorted<'a, D>(Vec<(&'a str, &'a Keyed<D>)>, bool);
        impl<D: Serialize> Serialize for Sorted<'_, D> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let flags = self.1;
                serializer.collect_map(
                    self.0.iter().map(|(k, v)| (k, (&v.open, FrozenOut(&v.frozen, flags)))),
                )
            }
        }
        // Ordered by the key's hash, then the key: as canonical as the key order, without a
        // string comparison for nearly every pair (community ids share their first bytes).
        let hasher = FxBuildHasher;
        let mut sorted: Vec<_> =
            self.sessions.iter().map(|(k, v)| (hasher.hash_one(k), &**k, v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let sorted: Vec<_> = sorted.into_iter().map(|(_, k, v)| (k, v)).collect();
        // Merges are told at the next `advance`, which a rule calls before its state is
        // snapshotted: the layout without them is the usual one, and older readers read it.
        // So is a state without awaiting sessions.
        let awaiting = self.awaiting_bytes > 0;
        if awaiting {
            let mut s = serializer.serialize_tuple(4)?;
            s.serialize_element(&LAYOUT_AWAITING)?;
            s.serialize_element(&self.config)?;
            s.serialize_element(&Sorted(sorted, true))?;
            s.serialize_element(&self.merged)?;
            s.end()
        } else if self.merged.is_empty() {
            let mut s = serializer.serialize_tuple(3)?;
            s.serialize_element(&LAYOUT_FROZEN)?;
            s.serialize_element(&self.config)?;
            s.serialize_element(&Sorted(sorted, false))?;
            s.end()
        } else {
            let mut s = serializer.serialize_tuple(4)?;
            s.serialize_element(&LAYOUT_MERGES)?;
            s.serialize_element(&self.config)?;
            s.serialize_element(&Sorted(sorted, false))?;
            s.serialize_element(&self.merged)?;
            s.end()
        }
    }
}

/// Reads both layouts: the current one, and the first (configuration, then every session of
/// every key decoded), whose published sessions are frozen as they are read.
impl<'de, D: Deserialize<'de> + Serialize> Deserialize<'de> for Sessionizer<D> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        use serde::de::{Error as _, SeqAccess, Visitor};

        struct Blob(Box<[u8]>);
        impl<'de> Deserialize<'de> for Blob {
            fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Blob;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("the bytes of a published session")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                        Ok(Blob(v.into()))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                        let mut v = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            v.push(b);
                        }
                        Ok(Blob(v.into_boxed_slice()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
        type FrozenIn = (i64, i64, i64, i64, Blob);
        type KeyedIn<D> = (Vec<Session<D>>, Vec<FrozenIn>);
        type AwaitingIn = (i64, i64, i64, i64, bool, Blob);
        type KeyedAwaitingIn<D> = (Vec<Session<D>>, Vec<AwaitingIn>);

        struct Layouts<D>(std::marker::PhantomData<D>);
        impl<'de, D: Deserialize<'de> + Serialize> Visitor<'de> for Layouts<D> {
            type Value = Sessionizer<D>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a session state")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let missing =
                    |what: &str| A::Error::custom(format!("the state ends before {what}"));
                let first: i64 = seq.next_element()?.ok_or_else(|| missing("its configuration"))?;
                let mut sessions = Sessions::default();
                let mut merged = Vec::new();
                let config = if first == LAYOUT_AWAITING {
                    let config: SessionConfig =
                        seq.next_element()?.ok_or_else(|| missing("its configuration"))?;
                    let stored: HashMap<String, KeyedAwaitingIn<D>, FxBuildHasher> =
                        seq.next_element()?.ok_or_else(|| missing("its sessions"))?;
                    for (k, (open, frozen)) in stored {
                        let key: Arc<str> = Arc::from(k);
                        let mut keyed = Keyed::new(Arc::clone(&key));
                        keyed.open = open;
                        keyed.frozen = frozen
                            .into_iter()
                            .map(
                                |(
                                    first_seen,
                                    last_seen,
                                    touched,
                                    reach_ms,
                                    awaits,
                                    Blob(bytes),
                                )| {
                                    let times = Times { first_seen, last_seen, touched, reach_ms };
                                    Frozen { times, bytes, awaits }
                                },
                            )
                            .collect();
                        sessions.insert(key, keyed);
                    }
                    merged = seq.next_element()?.ok_or_else(|| missing("its merges"))?;
                    config
                } else if first == LAYOUT_FROZEN || first == LAYOUT_MERGES {
                    let config: SessionConfig =
                        seq.next_element()?.ok_or_else(|| missing("its configuration"))?;
                    let stored: HashMap<String, KeyedIn<D>, FxBuildHasher> =
                        seq.next_element()?.ok_or_else(|| missing("its sessions"))?;
                    for (k, (open, frozen)) in stored {
                        let key: Arc<str> = Arc::from(k);
                        let mut keyed = Keyed::new(Arc::clone(&key));
                        keyed.open = open;
                        keyed.frozen = frozen
                            .into_iter()
                            .map(|(first_seen, last_seen, touched, reach_ms, Blob(bytes))| Frozen {
                                times: Times { first_seen, last_seen, touched, reach_ms },
                                bytes,
                                awaits: false,
                            })
                            .collect();
                        sessions.insert(key, keyed);
                    }
                    if first == LAYOUT_MERGES {
                        merged = seq.next_element()?.ok_or_else(|| missing("its merges"))?;
                    }
                    config
                } else {
                    let mut next = |what| seq.next_element::<i64>()?.ok_or_else(|| missing(what));
                    let (max_span_ms, skew_ms, reopen_ms) =
                        (next("max_span_ms")?, next("skew_ms")?, next("reopen_ms")?);
                    let stored: HashMap<String, Vec<Session<D>>, FxBuildHasher> =
                        seq.next_element()?.ok_or_else(|| missing("its sessions"))?;
                    for (k, list) in stored {
                        let key: Arc<str> = Arc::from(k);
                        let mut keyed = Keyed::new(Arc::clone(&key));
                        for s in list {
                            if s.dirty {
                                keyed.open.push(s);
                            } else {
                                keyed.frozen.push(Frozen::freeze(&s));
                            }
                        }
                        sessions.insert(key, keyed);
                    }
                    SessionConfig { gap_ms: first, max_span_ms, skew_ms, reopen_ms }
                };
                let mut s = Sessionizer {
                    config,
                    sessions,
                    merged,
                    schedule: BinaryHeap::new(),
                    awaiting: Awaiting::default(),
                    awaits: awaits_nothing::<D>,
                    awaiting_bytes: 0,
                };
                s.awaiting_bytes = s.sessions.values().map(Keyed::awaiting_cost).sum();
                s.reschedule();
                Ok(s)
            }
        }
        // Five elements at most: the first layout's four numbers of the configuration and its
        // sessions; the current ones read three or four.
        deserializer.deserialize_tuple(5, Layouts(std::marker::PhantomData))
    }
}

impl<D> Sessionizer<D> {
    /// An empty sessionizer.
    pub fn new(config: SessionConfig) -> Self {
        Sessionizer {
            config,
            sessions: Sessions::default(),
            merged: Vec::new(),
            schedule: BinaryHeap::new(),
            awaiting: Awaiting::default(),
            awaits: awaits_nothing::<D>,
            awaiting_bytes: 0,
        }
    }

    /// Keeps published sessions that `awaits` says still await a record for `awaiting.ms` past
    /// their reopen window, within `awaiting.max_bytes`: a connection whose flow record its
    /// sensor writes when the connection ends (hours later for a long one) then gets that
    /// record in its story, as a next revision, instead of a story of its own. The record
    /// joins as any late event does: it must match the session by time (its reach counts).
    ///
    /// `awaits` is asked when a session is published. Sessions published while the budget is
    /// spent are kept for their reopen window only. Not part of snapshots: set it again after
    /// [`Sessionizer::restore`] (until then the awaiting sessions restored are kept for their
    /// reopen window only).
    pub fn set_awaiting(&mut self, awaiting: Awaiting, awaits: fn(&D) -> bool) {
        self.awaits = awaits;
        if awaiting != self.awaiting {
            self.awaiting = awaiting;
            self.reschedule();
        }
    }

    /// What the awaiting sessions kept count against [`Awaiting::max_bytes`], bytes.
    pub fn awaiting_bytes(&self) -> usize {
        self.awaiting_bytes
    }

    /// Schedules every key anew, at the earliest due time of its sessions.
    fn reschedule(&mut self) {
        let cfg = self.config;
        let await_ms = self.awaiting.ms;
        let mut entries = Vec::with_capacity(self.sessions.len());
        for (key, keyed) in &mut self.sessions {
            keyed.scheduled = keyed.due(&cfg, await_ms).unwrap_or(TimestampMs::MAX);
            entries.push(Reverse((keyed.scheduled, key.clone())));
        }
        self.schedule = BinaryHeap::from(entries);
    }

    /// The configuration in use.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Sessions kept (open, or published and kept for late events).
    pub fn len(&self) -> usize {
        self.sessions.values().map(|k| k.open.len() + k.frozen.len()).sum()
    }

    /// No session is kept.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every open session (with events not yet published), in no particular order. Published
    /// sessions kept for late events are held encoded: [`Sessionizer::find`] decodes one.
    pub fn iter(&self) -> impl Iterator<Item = &Session<D>> {
        self.sessions.values().flat_map(|k| &k.open)
    }

    /// Whether any session is kept for `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.sessions.contains_key(key)
    }

    /// The session of `key` that an event at `time` (± `reach_ms`) would join, if any, without
    /// changing anything: a published one is decoded into a copy.
    pub fn find(&self, key: &str, time: TimestampMs, reach_ms: i64) -> Option<Found<'_, D>>
    where
        D: DeserializeOwned,
    {
        let keyed = self.sessions.get(key)?;
        match keyed.pick(time, reach_ms, self.config.skew_ms, &self.config)? {
            Pick::Open(i) => Some(Found::Open(&keyed.open[i])),
            Pick::Frozen(j) => keyed.frozen[j].thaw().map(|s| Found::Published(Box::new(s))),
        }
    }

    /// [`Sessionizer::find`] for changing the session's data. A published session is decoded
    /// and held open, still published, until it is next due. To add an event, use
    /// [`Sessionizer::add`].
    pub fn find_mut(
        &mut self,
        key: &str,
        time: TimestampMs,
        reach_ms: i64,
    ) -> Option<&mut Session<D>>
    where
        D: DeserializeOwned,
    {
        let cfg = self.config;
        let keyed = self.sessions.get_mut(key)?;
        let index = match keyed.pick(time, reach_ms, cfg.skew_ms, &cfg)? {
            Pick::Open(i) => i,
            Pick::Frozen(j) => {
                let session = keyed.frozen[j].thaw()?;
                self.awaiting_bytes -= keyed.frozen.remove(j).awaiting_cost(keyed.key.len());
                keyed.push_open(session)
            }
        };
        keyed.open.get_mut(index)
    }

    /// Adds event `event_id` at `time` to the session of `key` it belongs to, or opens one.
    ///
    /// `reach_ms` widens the match for records that cover a duration (0 for point events).
    /// `watermark` is the current bucket's watermark. Returns the session so that the rule
    /// can merge the event's data into [`Session::data`]. A session that was already
    /// published is reopened and will be published again with the next revision.
    ///
    /// The session's times are the sessionizer's: a rule that changed `first_seen` or
    /// `last_seen` through the returned reference would move its deadline without the schedule
    /// knowing (a session is never published before its deadline, but could be after it).
    pub fn add(
        &mut self,
        key: &str,
        event_id: &str,
        time: TimestampMs,
        reach_ms: i64,
        watermark: TimestampMs,
    ) -> &mut Session<D>
    where
        D: Default + DeserializeOwned + Mergeable,
    {
        let skew = self.config.skew_ms;
        self.add_within(key, event_id, time, reach_ms, skew, watermark)
    }

    /// [`Sessionizer::add`] for an event whose clock may be off by `skew_ms` instead of the
    /// configured skew: less for a sensor whose clock a rule has learned (see
    /// [`crate::clocks`]), so that sessions of a reused tuple split on the gap alone. Sessions
    /// still close on the configured skew: a sensor whose clock is not known may still report.
    pub fn add_within(
        &mut self,
        key: &str,
        event_id: &str,
        time: TimestampMs,
        reach_ms: i64,
        skew_ms: i64,
        watermark: TimestampMs,
    ) -> &mut Session<D>
    where
        D: Default + DeserializeOwned + Mergeable,
    {
        self.add_where(key, event_id, (time, reach_ms, skew_ms), watermark, |_| true)
    }

    /// [`Sessionizer::add_within`] into a session that `accept` takes: a rule that knows an
    /// event cannot belong to a session (a sensor's second flow record for a tuple is another
    /// connection) keeps it out, and the event joins another session or opens one.
    /// `at` is the event's time, reach and skew.
    pub fn add_where(
        &mut self,
        key: &str,
        event_id: &str,
        (time, reach_ms, skew_ms): (TimestampMs, i64, i64),
        watermark: TimestampMs,
        accept: impl Fn(&D) -> bool,
    ) -> &mut Session<D>
    where
        D: Default + DeserializeOwned + Mergeable,
    {
        let cfg = self.config;
        let skew = skew_ms.clamp(0, cfg.skew_ms);
        // Look the key up before allocating it: most events join a key that exists.
        if !self.sessions.contains_key(key) {
            let key: Arc<str> = Arc::from(key);
            self.sessions.insert(Arc::clone(&key), Keyed::new(key));
        }
        let Some(keyed) = self.sessions.get_mut(key) else { unreachable!("inserted above") };
        // A late event for a published session opens it again.
        let mut freed = 0;
        let found =
            keyed.take((time, reach_ms, skew), &cfg, &accept, (&mut self.merged, &mut freed));
        self.awaiting_bytes -= freed;
        let index = found.unwrap_or_else(|| {
            keyed.push_open(Session {
                id: story_id(key, event_id),
                key: key.to_string(),
                first_seen: time,
                last_seen: time,
                event_ids: Vec::new(),
                data: D::default(),
                revision: 0,
                touched: watermark,
                dirty: true,
                reach_ms: 0,
            })
        });
        let session = &mut keyed.open[index];
        session.first_seen = session.first_seen.min(time);
        session.last_seen = session.last_seen.max(time);
        session.touched = session.touched.max(watermark);
        session.reach_ms = session.reach_ms.max(reach_ms.max(0));
        session.dirty = true;
        session.event_ids.push(event_id.to_string());
        // A session's due time only grows while it stays unpublished, so the key's entry
        // stands; a new session, or a published one reopened, may be due before it.
        let due = session.due(&cfg);
        if due < keyed.scheduled {
            keyed.scheduled = due;
            self.schedule.push(Reverse((due, Arc::clone(&keyed.key))));
        }
        session
    }

    /// Moves the session of key `from` that an event at `time` would join into the session of
    /// key `into` that an event at `into_time` would join, when both exist: a rule that filed
    /// records under a provisional key (records naming only the two addresses, before a
    /// connection of those addresses was seen) gathers them once it knows where they belong,
    /// so that the outcome does not depend on which came first. A published session moved
    /// this way leaves a [`Tombstone`]. Returns whether a session moved.
    pub fn absorb(
        &mut self,
        from: &str,
        time: TimestampMs,
        into: &str,
        into_time: TimestampMs,
    ) -> bool
    where
        D: Default + DeserializeOwned + Mergeable,
    {
        let cfg = self.config;
        if from == into || !self.sessions.contains_key(into) {
            return false;
        }
        let Some(keyed) = self.sessions.get_mut(from) else { return false };
        let moved = match keyed.pick(time, 0, cfg.skew_ms, &cfg) {
            Some(Pick::Open(i)) => keyed.open.remove(i),
            Some(Pick::Frozen(j)) => match keyed.frozen[j].thaw::<D>() {
                Some(s) => {
                    self.awaiting_bytes -= keyed.frozen.remove(j).awaiting_cost(keyed.key.len());
                    s
                }
                None => return false,
            },
            None => return false,
        };
        if keyed.open.is_empty() && keyed.frozen.is_empty() {
            self.sessions.remove(from);
        }
        let Some(target) = self.sessions.get_mut(into) else { return false };
        let index = match target.pick(into_time, 0, cfg.skew_ms, &cfg) {
            Some(Pick::Open(i)) => Some(i),
            Some(Pick::Frozen(j)) => {
                let frozen = target.frozen.remove(j);
                self.awaiting_bytes -= frozen.awaiting_cost(target.key.len());
                frozen.thaw::<D>().map(|s| target.push_open(s))
            }
            None => None,
        };
        let Some(index) = index.filter(|&i| target.open[i].data.can_merge(&moved.data)) else {
            // Nowhere to go after all: it stays where it was.
            let key: Arc<str> = Arc::from(from);
            let keyed = self.sessions.entry(Arc::clone(&key)).or_insert_with(|| Keyed::new(key));
            keyed.push_open(moved);
            self.reschedule_key(from);
            return false;
        };
        let s = &mut target.open[index];
        if moved.revision > 0 {
            self.merged.push(Tombstone {
                id: moved.id.clone(),
                revision: moved.revision,
                first_seen: moved.first_seen,
                last_seen: moved.last_seen,
                into: s.id.clone(),
            });
        }
        s.first_seen = s.first_seen.min(moved.first_seen);
        s.last_seen = s.last_seen.max(moved.last_seen);
        s.touched = s.touched.max(moved.touched);
        s.reach_ms = s.reach_ms.max(moved.reach_ms);
        s.event_ids.extend(moved.event_ids);
        s.data.merge_from(moved.data);
        s.dirty = true;
        self.reschedule_key(into);
        true
    }

    /// Schedules `key` at the earliest due time of its sessions, if that is earlier than its
    /// entry.
    fn reschedule_key(&mut self, key: &str) {
        let cfg = self.config;
        if let Some(keyed) = self.sessions.get_mut(key)
            && let Some(due) = keyed.due(&cfg, self.awaiting.ms)
            && due < keyed.scheduled
        {
            keyed.scheduled = due;
            self.schedule.push(Reverse((due, Arc::clone(&keyed.key))));
        }
    }

    /// Closes the sessions whose deadline the watermark has passed and returns their stories,
    /// built by `emit`, in story-id order. A published session is kept encoded for `reopen_ms`
    /// more (and [`Awaiting::ms`] more when it awaits a record), then forgotten.
    pub fn advance(
        &mut self,
        watermark: TimestampMs,
        mut emit: impl FnMut(&Session<D>) -> Story,
    ) -> Vec<Story>
    where
        D: Serialize,
    {
        let cfg = self.config;
        let (awaiting, awaits) = (self.awaiting, self.awaits);
        let awaiting_bytes = &mut self.awaiting_bytes;
        let mut out: Vec<Story> = self.merged.drain(..).map(|t| t.story()).collect();
        while let Some(Reverse((due, _))) = self.schedule.peek()
            && *due <= watermark
        {
            let Some(Reverse((due, key))) = self.schedule.pop() else { break };
            let Some(keyed) = self.sessions.get_mut(&key) else { continue };
            if keyed.scheduled != due {
                // Superseded by an earlier entry, already visited.
                continue;
            }
            let Keyed { open, frozen, key: shared, .. } = keyed;
            let key_len = shared.len();
            frozen.retain(|f| {
                let keep = watermark < f.due(&cfg, awaiting.ms);
                if !keep {
                    *awaiting_bytes -= f.awaiting_cost(key_len);
                }
                keep
            });
            open.retain_mut(|s| {
                let deadline = s.times().deadline(&cfg);
                if s.dirty && watermark >= deadline {
                    out.push(emit(s));
                    s.dirty = false;
                    s.revision += 1;
                }
                if s.dirty {
                    return true;
                }
                let mut f = Frozen::freeze(s);
                if awaiting.ms > 0 && awaits(&s.data) {
                    f.awaits = true;
                    let cost = f.awaiting_cost(key_len);
                    f.awaits = *awaiting_bytes + cost <= awaiting.max_bytes;
                    if f.awaits {
                        *awaiting_bytes += cost;
                    }
                }
                if watermark < f.due(&cfg, awaiting.ms) {
                    // Room for exactly one more: a key rarely keeps two published sessions.
                    frozen.reserve_exact(1);
                    frozen.push(f);
                } else {
                    *awaiting_bytes -= f.awaiting_cost(key_len);
                }
                false
            });
            if open.is_empty() {
                // The room of a decoded session is most of what a published key would hold.
                *open = Vec::new();
            }
            match keyed.due(&cfg, awaiting.ms) {
                Some(next) => {
                    keyed.scheduled = next;
                    self.schedule.push(Reverse((next, key)));
                }
                None => {
                    self.sessions.remove(&key);
                }
            }
        }
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Publishes every session that has unpublished events, in story-id order, and forgets all
    /// state: the input is over.
    pub fn drain(&mut self, mut emit: impl FnMut(&Session<D>) -> Story) -> Vec<Story> {
        let sessions = std::mem::take(&mut self.sessions);
        self.schedule.clear();
        self.awaiting_bytes = 0;
        let mut out: Vec<Story> = self.merged.drain(..).map(|t| t.story()).collect();
        out.extend(sessions.values().flat_map(|k| &k.open).filter(|s| s.dirty).map(&mut emit));
        out.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The whole state as bytes (compact binary).
    pub fn snapshot(&self) -> Vec<u8>
    where
        D: Serialize,
    {
        // Serialising plain data into a Vec cannot fail; an empty snapshot would only lose state
        // that `restore` then reports as invalid.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// State produced by [`Sessionizer::snapshot`], of this version or an earlier one. The
    /// configuration comes from the snapshot.
    pub fn restore(state: &[u8]) -> Result<Self, Error>
    where
        D: DeserializeOwned + Serialize,
    {
        postcard::from_bytes(state)
            .map_err(|e| Error::InvalidState(format!("session state is not readable: {e}")))
    }

    /// The same sessions with their data converted, and possibly their keys changed, by `f`
    /// (given each session's key and data, it returns the new key and data): how a rule whose
    /// per-session data or keying changed reads a snapshot of the earlier shape (restore it as
    /// `Sessionizer<Old>`, then convert). Ids, times, events and revisions are kept; sessions
    /// of keys that become one are kept side by side under it. Published sessions are decoded,
    /// converted and encoded again; one that no longer decodes is dropped (it could not take a
    /// late event anyway).
    pub fn convert<E>(self, mut f: impl FnMut(&str, D) -> (String, E)) -> Sessionizer<E>
    where
        D: DeserializeOwned,
        E: Serialize,
    {
        let mut map = |s: Session<D>| {
            let (key, data) = f(&s.key, s.data);
            Session {
                data,
                id: s.id,
                key,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                event_ids: s.event_ids,
                revision: s.revision,
                touched: s.touched,
                dirty: s.dirty,
                reach_ms: s.reach_ms,
            }
        };
        let mut sessions: Sessions<E> = Sessions::default();
        let keyed_for = |sessions: &mut Sessions<E>, key: &str| -> Arc<str> {
            if let Some((k, _)) = sessions.get_key_value(key) {
                return Arc::clone(k);
            }
            let key: Arc<str> = Arc::from(key);
            sessions.insert(Arc::clone(&key), Keyed::new(Arc::clone(&key)));
            key
        };
        for (_, keyed) in self.sessions {
            for session in keyed.open {
                let session = map(session);
                let key = keyed_for(&mut sessions, &session.key);
                if let Some(k) = sessions.get_mut(&key) {
                    k.open.push(session);
                }
            }
            for frozen in &keyed.frozen {
                let Some(session) = frozen.thaw::<D>().map(&mut map) else { continue };
                let key = keyed_for(&mut sessions, &session.key);
                if let Some(k) = sessions.get_mut(&key) {
                    k.frozen.push(Frozen { awaits: frozen.awaits, ..Frozen::freeze(&session) });
                }
            }
        }
        let mut out = Sessionizer {
            config: self.config,
            sessions,
            merged: self.merged,
            schedule: BinaryHeap::new(),
            awaiting: self.awaiting,
            awaits: awaits_nothing::<E>,
            awaiting_bytes: 0,
        };
        out.awaiting_bytes = out.sessions.values().map(Keyed::awaiting_cost).sum();
        out.reschedule();
        out
    }

    /// Replaces the configuration (e.g. after restoring a snapshot taken with other settings).
    pub fn set_config(&mut self, config: SessionConfig) {
        if config != self.config {
            self.config = config;
            self.reschedule();
        }
    }

    /// Replaces the configuration as [`Sessionizer::set_config`] does, except that every
    /// session kept keeps the gap it was opened with when the new `gap_ms` is shorter (its
    /// reach widens by the difference); sessions opened from now on take the new gap. For a
    /// rule whose sessionizer gap is a base beneath timeouts of its own, given as reach: a new
    /// base (its defaults changed in an upgrade) then splits no session under way.
    pub fn set_config_keeping_gaps(&mut self, config: SessionConfig)
    where
        D: Serialize + DeserializeOwned,
    {
        let shorter = self.config.gap_ms.saturating_sub(config.gap_ms);
        if shorter > 0 {
            for keyed in self.sessions.values_mut() {
                for s in &mut keyed.open {
                    s.reach_ms = s.reach_ms.saturating_add(shorter);
                }
                for f in &mut keyed.frozen {
                    if let Some(mut s) = f.thaw::<D>() {
                        s.reach_ms = s.reach_ms.saturating_add(shorter);
                        *f = Frozen { awaits: f.awaits, ..Frozen::freeze(&s) };
                    }
                }
            }
            // Encoded again: their sizes may have moved.
            self.awaiting_bytes = self.sessions.values().map(Keyed::awaiting_cost).sum();
        }
        self.set_config(config);
    }
}

/// The story id of a session of `key` opened by `event_id`: 32 hex digits of SHA-1.
pub fn story_id(key: &str, event_id: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(event_id.as_bytes());
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in &digest[..16] {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn cfg() -> SessionConfig {
        SessionConfig { gap_ms: 60 * S, max_span_ms: 600 * S, skew_ms: 30 * S, reopen_ms: 600 * S }
    }

    fn ids(stories: &[Story]) -> Vec<Vec<&str>> {
        stories.iter().map(|s| s.event_ids.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn events_within_gap_and_skew_join_one_session() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        // A sensor 25 s behind reports the same session "earlier".
        s.add("k", "b", 75 * S, 0, 101 * S);
        // A sensor 30 s ahead reports it later.
        s.add("k", "c", 130 * S, 0, 102 * S);
        assert_eq!(s.len(), 1);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["a", "b", "c"]]);
        assert_eq!((out[0].first_seen, out[0].last_seen), (75 * S, 130 * S));
    }

    #[test]
    fn a_gap_beyond_tolerance_starts_a_new_session_with_another_id() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        s.add("k", "b", 100 * S + 91 * S, 0, 191 * S);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["a"], vec!["b"]]);
        assert_ne!(out[0].id, out[1].id);
    }

    #[test]
    fn max_span_splits_a_long_running_key() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        for i in 0..20 {
            s.add("k", &format!("e{i:02}"), i * 50 * S, 0, i * 50 * S);
        }
        let out = s.drain(|x| x.story("t"));
        assert!(out.len() >= 2, "got {} sessions", out.len());
        for story in &out {
            assert!(story.last_seen - story.first_seen <= 630 * S);
        }
        assert_eq!(out.iter().map(|s| s.event_ids.len()).sum::<usize>(), 20);
    }

    #[test]
    fn sessions_close_when_the_watermark_passes_gap_plus_skew() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        assert!(s.advance(189 * S, |x| x.story("t")).is_empty());
        let out = s.advance(190 * S, |x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["a"]]);
        assert_eq!(out[0].revision, 0);
        // Published once only.
        assert!(s.advance(200 * S, |x| x.story("t")).is_empty());
    }

    #[test]
    fn an_old_event_arriving_late_still_gets_its_processing_time_timeout() {
        // Event time 8 minutes before the watermark: it must not close in the same bucket
        // before a partner arriving a little later can join it.
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "flow", 100 * S, 0, 580 * S);
        assert!(s.advance(581 * S, |x| x.story("t")).is_empty());
        s.add("k", "http", 101 * S, 0, 600 * S);
        let out = s.advance(700 * S, |x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["flow", "http"]]);
    }

    #[test]
    fn a_late_event_reopens_a_published_session_as_the_next_revision() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "dns", 100 * S, 0, 100 * S);
        s.add("k", "flow", 101 * S, 0, 101 * S);
        let first = s.advance(300 * S, |x| x.story("t"));
        // The HTTP log arrives 8 minutes later.
        s.add("k", "http", 102 * S, 0, 580 * S);
        let second = s.advance(700 * S, |x| x.story("t"));
        assert_eq!(first.len(), 1);
        assert_eq!(second.len(), 1);
        assert_eq!(first[0].id, second[0].id);
        assert_eq!((first[0].revision, second[0].revision), (0, 1));
        assert_eq!(ids(&second), vec![vec!["dns", "flow", "http"]]);
    }

    #[test]
    fn a_reopened_session_closes_at_its_new_deadline_not_at_the_end_of_its_reopen_window() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        assert_eq!(s.advance(190 * S, |x| x.story("t")).len(), 1);
        // Kept until 790 s for late events; one arrives at watermark 300 s.
        s.add("k", "late", 101 * S, 0, 300 * S);
        assert!(s.advance(389 * S, |x| x.story("t")).is_empty());
        let out = s.advance(390 * S, |x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["a", "late"]]);
        assert_eq!(out[0].revision, 1);
    }

    #[test]
    fn a_second_session_of_a_key_closes_on_its_own_deadline() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        assert_eq!(s.advance(190 * S, |x| x.story("t")).len(), 1);
        // Past max_span of the first session: a new one, while the first is kept until 790 s.
        s.add("k", "b", 800 * S, 0, 200 * S);
        assert!(s.advance(289 * S, |x| x.story("t")).is_empty());
        // Its event time is in the future of the watermark: believed only up to skew.
        let out = s.advance(320 * S, |x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["b"]]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_restored_state_closes_sessions_by_the_configuration_given_after() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        let mut r: Sessionizer<()> = Sessionizer::restore(&s.snapshot()).unwrap();
        assert!(r.advance(189 * S, |x| x.story("t")).is_empty());
        r.set_config(SessionConfig { gap_ms: 10 * S, ..cfg() });
        assert_eq!(ids(&r.advance(140 * S, |x| x.story("t"))), vec![vec!["a"]]);
    }

    /// Whatever the order of events and watermarks, after `advance(w)` no kept session is
    /// unpublished past its deadline nor published past its reopen window, as if every session
    /// had been looked at; and each event is published in the revision that follows its add.
    #[test]
    fn advance_visits_every_session_that_is_due_and_no_event_is_left_unpublished() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..20 {
            let config = SessionConfig {
                gap_ms: (1 + next(60)) as i64 * S,
                max_span_ms: (1 + next(600)) as i64 * S,
                skew_ms: next(30) as i64 * S,
                reopen_ms: next(600) as i64 * S,
            };
            // Some sessions await a late record, within a budget a few of them exceed.
            let awaiting =
                Awaiting { ms: next(1200) as i64 * S, max_bytes: next(4) as usize * 300 };
            let mut s: Sessionizer<()> = Sessionizer::new(config);
            s.set_awaiting(awaiting, |_| true);
            let mut watermark = 0;
            let mut added = Vec::new();
            let mut published = std::collections::HashSet::new();
            for i in 0..2_000 {
                watermark += next(3) as i64 * S;
                if next(4) == 0 {
                    for story in s.advance(watermark, |x| x.story("t")) {
                        published.extend(story.event_ids);
                    }
                    for keyed in s.sessions.values() {
                        for x in &keyed.open {
                            let deadline = x.times().deadline(&config);
                            assert!(
                                !(x.dirty && deadline <= watermark),
                                "round {round}: {} unpublished past its deadline",
                                x.id
                            );
                            assert!(x.dirty, "round {round}: {} published but not frozen", x.id);
                        }
                        for f in &keyed.frozen {
                            assert!(
                                watermark < f.due(&config, awaiting.ms),
                                "round {round}: a session kept past its reopen window"
                            );
                            let x: Session<()> = f.thaw().unwrap();
                            assert!(!x.dirty && x.times() == f.times, "round {round}: {}", x.id);
                        }
                    }
                    let counted: usize = s.sessions.values().map(Keyed::awaiting_cost).sum();
                    assert_eq!(s.awaiting_bytes, counted, "round {round}");
                    assert!(counted <= awaiting.max_bytes, "round {round}");
                    if round % 2 == 1 {
                        s = Sessionizer::restore(&s.snapshot()).unwrap();
                        s.set_awaiting(awaiting, |_| true);
                    }
                } else {
                    let key = format!("k{}", next(50));
                    let time = watermark + (next(240) as i64 - 120) * S;
                    let id = format!("e{i}");
                    s.add(&key, &id, time, next(3) as i64 * 20 * S, watermark);
                    added.push(id);
                }
            }
            for story in s.drain(|x| x.story("t")) {
                published.extend(story.event_ids);
            }
            assert!(added.iter().all(|id| published.contains(id)), "round {round}");
        }
    }

    #[test]
    fn a_session_is_forgotten_after_reopen_window() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        s.advance(190 * S, |x| x.story("t"));
        assert_eq!(s.len(), 1);
        s.advance(790 * S, |x| x.story("t"));
        assert!(s.is_empty());
        // Now the same key and time opens a new story (revision 0 again).
        s.add("k", "b", 100 * S, 0, 800 * S);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(out[0].revision, 0);
    }

    #[test]
    fn a_session_that_awaits_a_record_is_kept_past_its_reopen_window_within_its_budget() {
        const H: i64 = 3600 * S;
        let awaiting = Awaiting { ms: 6 * H, max_bytes: 1 << 20 };
        let empty = |d: &Vec<String>| d.is_empty();
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.set_awaiting(awaiting, empty);
        s.add("k", "tls", 100 * S, 0, 100 * S);
        s.add("j", "conn", 100 * S, 0, 100 * S).data.push("flow".into());
        let first = s.advance(190 * S, |x| x.story("t"));
        assert_eq!(first.len(), 2);
        let cost = s.awaiting_bytes();
        assert!(cost > 0);
        // Past the reopen window: only the session that awaits is kept, through a snapshot.
        s.advance(H, |x| x.story("t"));
        assert!(s.contains_key("k") && !s.contains_key("j"));
        let mut s: Sessionizer<Vec<String>> = Sessionizer::restore(&s.snapshot()).unwrap();
        s.set_awaiting(awaiting, empty);
        assert_eq!(s.awaiting_bytes(), cost);
        // The record written when the connection ended, stamped at its start, hours later.
        s.add("k", "late", 100 * S, 3 * H, 3 * H).data.push("flow".into());
        assert_eq!(s.awaiting_bytes(), 0);
        // Published once its reach, too, has passed.
        let out = s.advance(7 * H, |x| x.story("t"));
        let tls = first.iter().find(|x| x.event_ids == ["tls"]).unwrap();
        assert_eq!(ids(&out), [vec!["tls", "late"]]);
        assert_eq!((&out[0].id, out[0].revision), (&tls.id, 1));
        // Then kept for its reopen window only: it holds its record and no longer awaits.
        s.advance(7 * H + 600 * S, |x| x.story("t"));
        assert!(s.is_empty());

        // A spent budget keeps the next sessions for their reopen window only.
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.set_awaiting(Awaiting { max_bytes: cost * 3 / 2, ..awaiting }, empty);
        s.add("a", "a", 100 * S, 0, 100 * S);
        s.add("b", "b", 100 * S, 0, 100 * S);
        s.advance(190 * S, |x| x.story("t"));
        assert!((1..=cost).contains(&s.awaiting_bytes()));
        s.advance(H, |x| x.story("t"));
        assert_eq!(s.len(), 1, "one of two kept");
        s.advance(7 * H, |x| x.story("t"));
        assert!(s.is_empty() && s.awaiting_bytes() == 0);
    }

    #[test]
    fn reach_lets_an_end_stamped_flow_record_match() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "dns", 100 * S, 0, 100 * S);
        // A flow of 5 minutes, stamped at its end, written when the connection closed.
        s.add("k", "flow", 400 * S, 300 * S, 400 * S);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["dns", "flow"]]);
    }

    #[test]
    fn a_reach_past_max_span_spans_its_connection_and_delays_the_close_by_max_span_only() {
        const H: i64 = 3600 * S;
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        // Published sessions wait for their flow record past the reopen window.
        s.set_awaiting(Awaiting { ms: 6 * H, max_bytes: 1 << 20 }, |_: &()| true);
        // Records of one long connection 20 minutes apart (past gap and max_span): four stories.
        let mut first = Vec::new();
        for i in 0..4 {
            let t = i * 1200 * S;
            s.add("k", &format!("r{i}"), t, 0, t);
            first.extend(s.advance(t + 100 * S, |x| x.story("t")));
        }
        assert_eq!(ids(&first), [["r0"], ["r1"], ["r2"], ["r3"]]);
        // Its flow record, stamped at the start, reaching over the hour: one story of them all.
        s.add("k", "flow", 0, H, H + S);
        // Closed after gap + skew + max_span (not + the hour) from the record's arrival.
        let end = H + S + (60 + 30 + 600) * S;
        let merged = s.advance(end - 1, |x| x.story("t"));
        assert_eq!(merged.len(), 3, "r1, r2 and r3 say where their events went: {merged:?}");
        assert!(merged.iter().all(|x| x.kind == MERGED_KIND && x.event_ids.is_empty()));
        let out = s.advance(end, |x| x.story("t"));
        assert_eq!(ids(&out), [["r0", "r1", "r2", "r3", "flow"]]);
        assert_eq!((&out[0].id, out[0].revision), (&first[0].id, 1));
        // Past the record's reach, the key starts another session.
        s.add("k", "after", 2 * H + 200 * S, 0, 2 * H + 200 * S);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), [["after"]]);
    }

    #[test]
    fn a_shorter_gap_set_later_leaves_the_sessions_kept_their_own() {
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.set_awaiting(Awaiting { ms: 3600 * S, max_bytes: 1 << 20 }, |_| true);
        s.add("open", "a", 100 * S, 0, 100 * S);
        s.add("kept", "b", 100 * S, 0, 100 * S);
        s.advance(100 * S, |x| x.story("t"));
        // "kept" is published (its gap and skew passed), "open" has a new event.
        s.add("open", "c", 150 * S, 0, 150 * S);
        let first = s.advance(191 * S, |x| x.story("t"));
        assert_eq!(ids(&first), [["b"]]);
        let cost = s.awaiting_bytes();
        s.set_config_keeping_gaps(SessionConfig { gap_ms: 10 * S, ..cfg() });
        assert!(s.awaiting_bytes() >= cost);
        // Both still take an event 60 s after their last, as with the gap they were opened with.
        s.add("open", "d", 210 * S, 0, 210 * S);
        s.add("kept", "e", 160 * S, 0, 200 * S);
        let out = s.drain(|x| x.story("t"));
        let mut got: Vec<Vec<&str>> = ids(&out);
        got.sort();
        assert_eq!(got, [vec!["a", "c", "d"], vec!["b", "e"]]);
        // A session opened after the change has the shorter gap.
        s.add("new", "f", 1000 * S, 0, 1000 * S);
        s.add("new", "g", 1060 * S, 0, 1060 * S);
        assert_eq!(ids(&s.drain(|x| x.story("t"))), [["f"], ["g"]]);
    }

    #[test]
    fn absurd_event_times_do_not_overflow() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", i64::MAX, i64::MAX, 0);
        s.add("k", "b", i64::MIN, 0, 0);
        s.add("k", "c", 0, 0, i64::MAX);
        assert!(!s.advance(i64::MAX, |x| x.story("t")).is_empty());
    }

    #[test]
    fn snapshots_are_canonical_and_read_those_of_the_ordered_map_layout() {
        // Same sessions added in two orders: the same bytes.
        let mut a: Sessionizer<Vec<u8>> = Sessionizer::new(cfg());
        let mut b: Sessionizer<Vec<u8>> = Sessionizer::new(cfg());
        let keys: Vec<String> = (0..200).map(|i| format!("1:key{i:03}")).collect();
        for k in &keys {
            a.add(k, k, 100 * S, 0, 100 * S);
        }
        for k in keys.iter().rev() {
            b.add(k, k, 100 * S, 0, 100 * S);
        }
        assert_eq!(a.snapshot(), b.snapshot());
        // Half published and kept, half reopened by a late event.
        a.advance(190 * S, |x| x.story("t"));
        for k in keys.iter().step_by(2) {
            a.add(k, &format!("{k}-late"), 100 * S, 0, 200 * S);
        }
        // Snapshots of the first layout: every session decoded, in one list per key, keys in
        // order (a BTreeMap, as up to version 0.2).
        let lists: HashMap<&str, Vec<Session<Vec<u8>>>> = a
            .sessions
            .iter()
            .map(|(k, v)| {
                let frozen = v.frozen.iter().map(|f| f.thaw().unwrap());
                (&**k, frozen.chain(v.open.iter().cloned()).collect())
            })
            .collect();
        #[derive(Serialize)]
        struct Ordered<'a> {
            config: SessionConfig,
            sessions: std::collections::BTreeMap<&'a str, &'a Vec<Session<Vec<u8>>>>,
        }
        let old =
            Ordered { config: *a.config(), sessions: lists.iter().map(|(k, v)| (*k, v)).collect() };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let restored: Sessionizer<Vec<u8>> = Sessionizer::restore(&bytes).unwrap();
        assert_eq!(restored.len(), 200);
        assert!(keys.iter().all(|k| restored.contains_key(k)));
        assert_eq!(restored.snapshot(), a.snapshot());
    }

    #[test]
    fn a_published_session_is_kept_encoded_and_decoded_again_by_a_late_event() {
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S).data.push("x".into());
        assert_eq!(s.advance(190 * S, |x| x.story("t")).len(), 1);
        // Kept for late events, but not open: only its bytes and times are held.
        assert_eq!((s.len(), s.iter().count()), (1, 0));
        let keyed = &s.sessions["k"];
        assert_eq!((keyed.open.len(), keyed.frozen.len()), (0, 1));
        // Read without changing anything.
        let found = s.find("k", 101 * S, 0).unwrap();
        assert!(matches!(found, Found::Published(_)));
        assert_eq!((found.revision(), &found.data), (1, &vec!["x".to_string()]));
        assert_eq!(s.sessions["k"].frozen.len(), 1);
        // A late event opens it with what it held.
        s.add("k", "late", 101 * S, 0, 300 * S).data.push("y".into());
        assert_eq!(s.iter().count(), 1);
        let mut data = Vec::new();
        let out = s.advance(400 * S, |x| {
            data.push(x.data.join(","));
            x.story("t")
        });
        assert_eq!(ids(&out), vec![vec!["a", "late"]]);
        assert_eq!((out[0].revision, data), (1, vec!["x,y".to_string()]));
    }

    #[test]
    fn a_record_reaching_a_published_and_an_open_session_bridges_them() {
        let mut s: Sessionizer<()> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        s.advance(190 * S, |x| x.story("t"));
        // Beyond gap and skew of the first: a second session of the key, open.
        s.add("k", "b", 700 * S, 0, 200 * S);
        // A flow record reaching both: they are one session now, the published one's.
        s.add("k", "c", 400 * S, 300 * S, 210 * S);
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), vec![vec!["a", "b", "c"]]);
        assert_eq!(out[0].revision, 1, "the next revision of the story published");
    }

    #[test]
    fn find_mut_holds_a_published_session_open_until_it_is_next_due() {
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S);
        s.advance(190 * S, |x| x.story("t"));
        s.find_mut("k", 100 * S, 0).unwrap().data.push("seen".into());
        assert_eq!(s.iter().count(), 1);
        // Not republished: no event was added. Frozen again at its next visit, then forgotten.
        assert!(s.advance(789 * S, |x| x.story("t")).is_empty());
        assert!(s.advance(790 * S, |x| x.story("t")).is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn ids_are_deterministic_and_differ_by_key() {
        assert_eq!(story_id("k", "a"), story_id("k", "a"));
        assert_ne!(story_id("k", "a"), story_id("k2", "a"));
        assert_eq!(story_id("k", "a").len(), 32);
    }

    #[test]
    fn snapshot_round_trip_preserves_sessions_and_revisions() {
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.add("k", "a", 100 * S, 0, 100 * S).data.push("x".into());
        s.advance(200 * S, |x| x.story("t"));
        s.add("j", "b", 150 * S, 0, 200 * S).data.push("y".into());
        let bytes = s.snapshot();
        let mut r: Sessionizer<Vec<String>> = Sessionizer::restore(&bytes).unwrap();
        assert_eq!(r.iter().collect::<Vec<_>>(), s.iter().collect::<Vec<_>>());
        assert_eq!((r.len(), r.snapshot()), (2, bytes));
        r.add("k", "c", 101 * S, 0, 210 * S);
        let out = r.advance(400 * S, |x| x.story("t"));
        let k = out.iter().find(|x| x.event_ids.contains(&"a".to_string())).unwrap();
        assert_eq!(k.revision, 1);
        assert!(Sessionizer::<Vec<String>>::restore(b"\xff\xff garbage").is_err());
    }

    /// The latest revision of each story, tombstones left out: what a consumer holds.
    fn consumer_view(stories: &[Story]) -> Vec<Vec<String>> {
        let mut latest: std::collections::BTreeMap<&str, &Story> = Default::default();
        for s in stories {
            if latest.get(s.id.as_str()).is_none_or(|l| s.revision >= l.revision) {
                latest.insert(&s.id, s);
            }
        }
        let mut out: Vec<Vec<String>> = latest
            .values()
            .filter(|s| s.kind != MERGED_KIND)
            .map(|s| {
                let mut ids = s.event_ids.clone();
                ids.sort();
                ids
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn an_event_that_bridges_two_open_sessions_makes_them_one() {
        let cfg = SessionConfig { skew_ms: 0, ..cfg() };
        let mut s: Sessionizer<()> = Sessionizer::new(cfg);
        s.add("k", "a", 0, 0, 0);
        s.add("k", "c", 100 * S, 0, 0);
        assert_eq!(s.len(), 2, "100 s apart: two sessions");
        s.add("k", "b", 50 * S, 0, 0);
        assert_eq!(s.len(), 1, "b is within the gap of both");
        let out = s.drain(|x| x.story("t"));
        assert_eq!(ids(&out), [vec!["a", "c", "b"]]);
    }

    #[test]
    fn a_published_session_merged_into_another_says_so_in_its_last_revision() {
        let cfg = SessionConfig { skew_ms: 0, ..cfg() };
        let mut s: Sessionizer<()> = Sessionizer::new(cfg);
        s.add("k", "a", 0, 0, 0);
        s.add("k", "c", 100 * S, 0, 100 * S);
        let first = s.advance(170 * S, |x| x.story("t"));
        assert_eq!(ids(&first).len(), 2, "two stories published");
        // b is within the gap of both: they become a's story, and c's says where it went.
        s.add("k", "b", 50 * S, 0, 180 * S);
        let mut all = first.clone();
        all.extend(s.advance(180 * S, |x| x.story("t")));
        all.extend(s.drain(|x| x.story("t")));
        let tomb = all.iter().find(|x| x.kind == MERGED_KIND).expect("a tombstone");
        let survivor = all.iter().find(|x| x.kind == "t" && x.event_ids.len() == 3).unwrap();
        let c = first.iter().find(|x| x.event_ids == ["c"]).unwrap();
        assert_eq!((&tomb.id, tomb.revision), (&c.id, 1), "c's next revision is its last");
        assert!(tomb.event_ids.is_empty());
        assert_eq!(tomb.fields.get("merged_into"), serde_json::json!(survivor.id));
        let a = first.iter().find(|x| x.event_ids == ["a"]).unwrap();
        assert_eq!((&survivor.id, survivor.revision), (&a.id, 1));
        assert_eq!(consumer_view(&all), [vec!["a", "b", "c"]]);
    }

    #[test]
    fn any_order_of_arrival_across_buckets_gives_the_same_stories() {
        let cfg = SessionConfig {
            gap_ms: 60 * S,
            max_span_ms: 3600 * S,
            skew_ms: 5 * S,
            reopen_ms: 600 * S,
        };
        // Key k: 0..150 s is one session only through its middle events; 400..430 s another.
        // Key m: one session. An event bridges only once the events around it are there.
        let events: Vec<(&str, &str, i64)> = vec![
            ("k", "k0", 0),
            ("k", "k1", 50 * S),
            ("k", "k2", 110 * S),
            ("k", "k3", 150 * S),
            ("k", "k4", 400 * S),
            ("k", "k5", 430 * S),
            ("m", "m0", 10 * S),
            ("m", "m1", 60 * S),
            ("m", "m2", 115 * S),
        ];
        let want = {
            let mut w =
                vec![vec!["k0", "k1", "k2", "k3"], vec!["k4", "k5"], vec!["m0", "m1", "m2"]];
            w.sort();
            w
        };
        let mut rng = 0x5eed_u64;
        let mut next = || {
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^ (z >> 31)
        };
        for round in 0..300 {
            // Each event arrives in one of five buckets, 20 s apart, after every event time:
            // sessions are published between buckets and reopened or merged by later ones.
            let mut buckets: Vec<Vec<(&str, &str, i64)>> = vec![Vec::new(); 5];
            for e in &events {
                buckets[(next() % 5) as usize].push(*e);
            }
            let mut s: Sessionizer<()> = Sessionizer::new(cfg);
            let mut out = Vec::new();
            for (b, list) in buckets.iter_mut().enumerate() {
                list.sort_by_key(|e| e.1);
                let watermark = 500 * S + b as i64 * 20 * S;
                for (key, id, time) in list.iter() {
                    s.add(key, id, *time, 0, watermark);
                }
                out.extend(s.advance(watermark, |x| x.story("t")));
            }
            out.extend(s.drain(|x| x.story("t")));
            let got = consumer_view(&out);
            assert_eq!(got, want, "round {round}: {buckets:?}");
            // Every event is in exactly one story of the consumer's view.
            let n: usize = got.iter().map(Vec::len).sum();
            assert_eq!(n, events.len());
        }
    }

    #[test]
    fn a_session_filed_under_a_provisional_key_moves_into_the_one_it_belongs_to() {
        let mut s: Sessionizer<Vec<String>> = Sessionizer::new(cfg());
        s.add("pair", "file", 100 * S, 0, 100 * S).data.push("from pair".into());
        s.add("tuple", "conn", 101 * S, 0, 101 * S).data.push("from tuple".into());
        assert!(s.absorb("pair", 100 * S, "tuple", 101 * S));
        assert!(!s.contains_key("pair"));
        assert!(!s.absorb("pair", 100 * S, "tuple", 101 * S), "nothing left to move");
        let out = s.drain(|x| {
            let mut st = x.story("t");
            st.fields.insert("data", x.data.join(","));
            st
        });
        assert_eq!(ids(&out), [vec!["conn", "file"]]);
        assert_eq!(out[0].fields.get("data"), serde_json::json!("from tuple,from pair"));
    }
}
