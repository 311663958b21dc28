//! One tenant's instance of a plugin and the calls into it, each under the tenant's limits.

use std::sync::Arc;

use std::collections::HashSet;

use serde_json::value::RawValue;
use wasmtime::component::{ComponentType, Func, Instance, Lower};
use wasmtime::{Store, Trap};

// The record and variant types of 0.1.0 serve every version: calls are type-checked by
// structure, and later versions kept `story` and `error` as they were.
use super::bindings::v0_1_0::storyline::correlator::types as wit;
use super::error::{BucketRef, CallError, Failure, GuestError};
use super::sandbox::HostState;
use super::{Abi, EPOCH_TICK, Limits, Plugin, PluginInfo};
use crate::model::{Bucket, BucketStart, Event, ShardId, Story, TenantId};

/// Longest story id, kind or event id a plugin may return, in bytes.
const MAX_ID_BYTES: usize = storyline_sdk::format::MAX_ID_BYTES;

/// Bytes of guest stderr quoted in a trap report.
const STDERR_TAIL: usize = 2048;

/// A plugin instantiated for one tenant: its own store, memory, clocks and limits.
pub struct PluginInstance {
    /// The tenant this instance serves; it never sees another tenant's events.
    tenant: TenantId,
    /// The plugin it runs.
    info: Arc<PluginInfo>,
    /// Limits applied to every call.
    limits: Limits,
    /// The wasmtime store: the guest's memory and the host state.
    store: Store<HostState>,
    /// How events are handed to this plugin's version.
    abi: Abi,
    /// The guest's exports.
    exports: Exports,
    /// Packed events of the last call, kept for its capacity.
    packed: Vec<u8>,
    /// Set after a trap or limit: the guest's state is undefined, only re-creation helps.
    poisoned: bool,
    /// Bytes of guest stderr already reported.
    stderr_seen: usize,
    /// Latest watermark given to `process`: what the guest's clocks show in other calls.
    watermark: i64,
    /// Advances the epoch while a call runs (the deadline).
    ticker: Arc<super::Ticker>,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("tenant", &self.tenant)
            .field("plugin", &self.info.label())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Creates an instance for `tenant` and calls `init(config)` in it.
    pub fn instantiate(
        &self,
        tenant: &TenantId,
        config: &str,
        limits: Limits,
    ) -> Result<PluginInstance, CallError> {
        let budget = {
            let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            budgets.entry(tenant.clone()).or_default().clone()
        };
        let state =
            HostState::new(tenant, &self.info.label(), limits.memory_bytes, budget, limits.log);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(&limits));
        let fail = |failure| CallError {
            tenant: tenant.clone(),
            plugin: self.info.label(),
            call: "instantiate",
            bucket: None,
            failure,
        };
        let version = &self.info.manifest.version;
        let ticking = self.ticker.enter();
        let instantiated = self.compiled.pre.instantiate(&mut store).and_then(|instance| {
            let mut func = |name| export_func(&mut store, &instance, version, name);
            Ok(Exports {
                init: func("init")?,
                process: func("process")?,
                drain: func("drain")?,
                route: func("route")?,
                snapshot: func("snapshot")?,
                restore: func("restore")?,
            })
        });
        drop(ticking);
        let exports = match instantiated {
            Ok(b) => b,
            Err(e) => {
                let limit_hit = store.data().limiter.hit;
                return Err(fail(classify(e, limit_hit, &limits, String::new())));
            }
        };
        let mut instance = PluginInstance {
            tenant: tenant.clone(),
            info: self.info.clone(),
            limits,
            store,
            abi: self.compiled.abi,
            exports,
            packed: Vec::new(),
            poisoned: false,
            stderr_seen: 0,
            watermark: 0,
            ticker: self.ticker.clone(),
        };
        let init = instance.exports.init;
        instance
            .call("init", None, |store| {
                let typed = init.typed::<(&str,), (Result<(), wit::Error>,)>(&*store)?;
                typed.call(store, (config,)).map(|(r,)| r)
            })?
            .map_err(|e| instance.error("init", None, Failure::Guest(guest_error(e))))?;
        Ok(instance)
    }
}

fn deadline_ticks(limits: &Limits) -> u64 {
    (limits.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}

impl PluginInstance {
    /// The tenant served.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The plugin run.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Guest log records forwarded to the host's log and dropped by the caps, so far.
    pub fn log_counts(&self) -> (u64, u64) {
        self.store.data().log.totals
    }

    /// Bytes of linear memory the guest holds (what counts against the tenant's memory limit).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.used()
    }

    /// True after a trap or a limit: every further call fails with [`Failure::Poisoned`].
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Correlates one bucket. Every event id in the returned stories must be in the bucket or
    /// accepted by `known_event` (events of earlier buckets); the stories are checked against
    /// the contract before they are returned.
    pub fn process(
        &mut self,
        bucket: &Bucket,
        known_event: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Story>, CallError> {
        let header = BucketHeader {
            tenant: &bucket.tenant,
            shard: bucket.shard,
            start: bucket.start,
            end: bucket.end,
            watermark: bucket.watermark,
        };
        let events: Vec<EventView<'_>> = bucket.events.iter().map(EventView::from).collect();
        self.process_events(header, &events, known_event)
    }

    /// [`Self::process`] of a bucket whose events are borrowed from wherever the host holds
    /// them: they are lowered straight into the guest.
    pub fn process_events(
        &mut self,
        header: BucketHeader<'_>,
        events: &[EventView<'_>],
        known_event: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Story>, CallError> {
        let at = Some(BucketRef { shard: ShardId(header.shard), start: BucketStart(header.start) });
        self.watermark = header.watermark;
        let func = self.exports.process;
        let out = match self.abi {
            Abi::V0_1 => {
                let arg = BucketArg {
                    tenant: header.tenant,
                    shard: header.shard,
                    start: header.start,
                    end: header.end,
                    watermark: header.watermark,
                    events,
                };
                self.call("process", at, |store| {
                    let typed = func.typed::<(BucketArg<'_>,), (ProcessResult,)>(&*store)?;
                    typed.call(store, (arg,)).map(|(r,)| r)
                })?
            }
            Abi::V0_2 => {
                let packed = pack(std::mem::take(&mut self.packed), events);
                let arg = PackedBucketArg {
                    tenant: header.tenant,
                    shard: header.shard,
                    start: header.start,
                    end: header.end,
                    watermark: header.watermark,
                    events: &packed,
                };
                let out = self.call("process", at, |store| {
                    let typed = func.typed::<(PackedBucketArg<'_>,), (ProcessResult,)>(&*store)?;
                    typed.call(store, (arg,)).map(|(r,)| r)
                });
                self.keep_packed(packed);
                out?
            }
        };
        let stories = out.map_err(|e| self.error("process", at, Failure::Guest(guest_error(e))))?;
        // Most stories close buckets after their events arrived: ask the caller first and build
        // the set of this bucket's ids only if some id is not known to it.
        let bucket_ids: std::cell::OnceCell<HashSet<&str>> = std::cell::OnceCell::new();
        let known = |id: &str| {
            known_event(id)
                || bucket_ids.get_or_init(|| events.iter().map(|e| e.id).collect()).contains(id)
        };
        self.check_output(stories, &known).map_err(|f| self.error("process", at, f))
    }

    /// Closes every open session and returns its story (the input is over).
    pub fn drain(&mut self, known_event: &dyn Fn(&str) -> bool) -> Result<Vec<Story>, CallError> {
        let drain = self.exports.drain;
        let out = self.call("drain", None, |store| {
            let typed = drain.typed::<(), (ProcessResult,)>(&*store)?;
            typed.call(store, ()).map(|(r,)| r)
        })?;
        let stories = out.map_err(|e| self.error("drain", None, Failure::Guest(guest_error(e))))?;
        self.check_output(stories, known_event).map_err(|f| self.error("drain", None, f))
    }

    /// The routing key the plugin computes for an event, if any. The event is lowered into the
    /// guest from the borrowed parts, without a copy on the host.
    pub fn route(&mut self, event: EventView<'_>) -> Result<Option<String>, CallError> {
        Ok(self.route_all(&[event])?.pop().flatten())
    }

    /// The routing keys of many events, in order: one call for all of them where the plugin's
    /// version allows it (0.2.0), one call per event otherwise.
    pub fn route_all(
        &mut self,
        events: &[EventView<'_>],
    ) -> Result<Vec<Option<String>>, CallError> {
        let func = self.exports.route;
        let keys = match self.abi {
            Abi::V0_1 => {
                let mut keys = Vec::with_capacity(events.len());
                for &event in events {
                    keys.push(self.call("route", None, |store| {
                        let typed = func.typed::<(EventView<'_>,), (Option<String>,)>(&*store)?;
                        typed.call(store, (event,)).map(|(r,)| r)
                    })?);
                }
                keys
            }
            Abi::V0_2 => {
                let mut keys = Vec::with_capacity(events.len());
                for chunk in chunks_of_bytes(events, ROUTE_CHUNK_BYTES) {
                    let packed = pack(std::mem::take(&mut self.packed), chunk);
                    let got = self.call("route", None, |store| {
                        let typed = func.typed::<(&[u8],), (Vec<Option<String>>,)>(&*store)?;
                        typed.call(store, (&packed,)).map(|(r,)| r)
                    });
                    self.keep_packed(packed);
                    keys.extend(got?);
                }
                keys
            }
        };
        let malformed = |reason: String| self.error("route", None, Failure::Malformed { reason });
        if keys.len() != events.len() {
            return Err(malformed(format!(
                "{} routing keys for {} events; route must return one per event",
                keys.len(),
                events.len()
            )));
        }
        if let Some(k) = keys.iter().flatten().find(|k| k.len() > MAX_ID_BYTES) {
            return Err(malformed(format!(
                "routing key of {} bytes; the limit is {MAX_ID_BYTES}",
                k.len()
            )));
        }
        Ok(keys)
    }

    /// The plugin's state, to be checkpointed with the offset.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, CallError> {
        let snapshot = self.exports.snapshot;
        let state = self.call("snapshot", None, |store| {
            let typed = snapshot.typed::<(), (Vec<u8>,)>(&*store)?;
            typed.call(store, ()).map(|(r,)| r)
        })?;
        if state.len() > self.limits.state_bytes {
            let failure =
                Failure::StateTooLarge { bytes: state.len(), limit: self.limits.state_bytes };
            return Err(self.error("snapshot", None, failure));
        }
        Ok(state)
    }

    /// Replaces the plugin's state with a snapshot.
    pub fn restore(&mut self, state: &[u8]) -> Result<(), CallError> {
        let restore = self.exports.restore;
        self.call("restore", None, |store| {
            let typed = restore.typed::<(&[u8],), (Result<(), wit::Error>,)>(&*store)?;
            typed.call(store, (state,)).map(|(r,)| r)
        })?
        .map_err(|e| self.error("restore", None, Failure::Guest(guest_error(e))))
    }

    /// Keeps the buffer of the last packed call for the next one, unless it is far larger than
    /// what calls use (one huge bucket must not pin its size for the instance's life).
    fn keep_packed(&mut self, packed: Vec<u8>) {
        if packed.capacity() <= (packed.len() * 4).max(KEPT_PACKED_BYTES) {
            self.packed = packed;
        }
    }

    fn error(&self, call: &'static str, bucket: Option<BucketRef>, failure: Failure) -> CallError {
        crate::metrics::telemetry().plugin_failure(&self.tenant, call, failure.kind());
        CallError { tenant: self.tenant.clone(), plugin: self.info.label(), call, bucket, failure }
    }

    /// Runs one export under the deadline, memory limit and log caps.
    fn call<R>(
        &mut self,
        call: &'static str,
        bucket: Option<BucketRef>,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            return Err(self.error(call, bucket, Failure::Poisoned));
        }
        self.store.set_epoch_deadline(deadline_ticks(&self.limits));
        let data = self.store.data_mut();
        data.set_clock(self.watermark);
        data.limiter.hit = false;
        data.log.reset();
        let ticking = self.ticker.enter();
        let started = std::time::Instant::now();
        let result = f(&mut self.store);
        crate::metrics::telemetry().plugin_call(call, started.elapsed());
        drop(ticking);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                self.poisoned = true;
                let limit_hit = self.store.data().limiter.hit;
                let stderr = self.new_stderr();
                // The instance is unusable: drop its memories now (not when the instance is
                // dropped), so that their bytes go back to the tenant's budget at once.
                let emptied = Store::new(self.store.engine(), self.store.data().emptied());
                drop(std::mem::replace(&mut self.store, emptied));
                Err(self.error(call, bucket, classify(e, limit_hit, &self.limits, stderr)))
            }
        }
    }

    /// What the guest wrote to stderr since the last report, at most the last STDERR_TAIL bytes.
    fn new_stderr(&mut self) -> String {
        let all = self.store.data().stderr.contents();
        let new = &all[self.stderr_seen.min(all.len())..];
        self.stderr_seen = all.len();
        let tail = &new[new.len().saturating_sub(STDERR_TAIL)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// Checks stories against the contract and converts them.
    fn check_output(
        &self,
        stories: Vec<wit::Story>,
        known_event: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Story>, Failure> {
        let bytes: usize = stories
            .iter()
            .map(|s| {
                s.id.len()
                    + s.kind.len()
                    + s.fields.len()
                    + s.event_ids.iter().map(String::len).sum::<usize>()
                    + 24
            })
            .sum();
        if bytes > self.limits.output_bytes {
            return Err(Failure::OutputTooLarge { bytes, limit: self.limits.output_bytes });
        }
        let malformed = |reason: String| Failure::Malformed { reason };
        let mut out = Vec::with_capacity(stories.len());
        for s in stories {
            if s.id.is_empty() || s.id.len() > MAX_ID_BYTES {
                return Err(malformed(format!(
                    "a story id is {} bytes; ids must be 1 to {MAX_ID_BYTES} bytes",
                    s.id.len()
                )));
            }
            if s.kind.is_empty() || s.kind.len() > MAX_ID_BYTES {
                return Err(malformed(format!("story {} has an empty or oversized kind", s.id)));
            }
            // Only the last revision of a story merged into another lists no events (see
            // `storyline_sdk::session::Tombstone`).
            if s.event_ids.is_empty() && s.kind != storyline_sdk::session::MERGED_KIND {
                return Err(malformed(format!(
                    "story {} lists no events (only a story of kind \"{}\" may)",
                    s.id,
                    storyline_sdk::session::MERGED_KIND
                )));
            }
            if let Some(unknown) = s.event_ids.iter().find(|id| !known_event(id)) {
                return Err(malformed(format!(
                    "story {} lists event \"{unknown}\", which was never given to the plugin",
                    s.id
                )));
            }
            if s.first_seen > s.last_seen {
                return Err(malformed(format!("story {} has first_seen after last_seen", s.id)));
            }
            let is_object = s.fields.trim_start().starts_with('{');
            let fields = match RawValue::from_string(s.fields) {
                Ok(raw) if is_object => raw,
                Ok(_) | Err(_) => {
                    return Err(malformed(format!("story {}: fields is not a JSON object", s.id)));
                }
            };
            out.push(Story {
                id: s.id,
                revision: s.revision,
                kind: s.kind,
                event_ids: s.event_ids,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                fields,
            });
        }
        Ok(out)
    }
}

/// What `process` returns, as the generated bindings type it.
type ProcessResult = Result<Vec<wit::Story>, wit::Error>;

/// The guest's exports, looked up once per instance.
#[derive(Debug, Clone, Copy)]
struct Exports {
    init: Func,
    process: Func,
    drain: Func,
    route: Func,
    snapshot: Func,
    restore: Func,
}

/// Packed events a single `route` call takes at most (about; one event may exceed it): a
/// batch of large payloads is routed in several calls rather than in one that needs the guest
/// to hold it all.
const ROUTE_CHUNK_BYTES: usize = 8 << 20;

/// A packed buffer kept between calls whatever its use.
const KEPT_PACKED_BYTES: usize = 16 << 20;

/// `events` in runs whose parts add up to about `limit` bytes (at least one event each).
fn chunks_of_bytes<'e, 'a>(
    events: &'e [EventView<'a>],
    limit: usize,
) -> impl Iterator<Item = &'e [EventView<'a>]> {
    let mut rest = events;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|e| {
                bytes += e.id.len() + e.source.len() + e.kind.len() + e.payload.len() + 64;
                bytes += e.attributes.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
                bytes <= limit
            })
            .count()
            .max(1);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Events packed for a 0.2.0 plugin, into `buf`'s memory.
fn pack(buf: Vec<u8>, events: &[EventView<'_>]) -> Vec<u8> {
    let mut w = storyline_sdk::packed::Writer::new(buf);
    for e in events {
        w.push(storyline_sdk::packed::EventRef {
            id: e.id,
            source: e.source,
            kind: e.kind,
            event_time: e.event_time,
            insert_time: e.insert_time,
            attributes: e.attributes,
            payload: e.payload,
        });
    }
    w.finish()
}

/// The WIT 0.2.0 `bucket`, its events packed.
#[derive(ComponentType, Lower)]
#[component(record)]
struct PackedBucketArg<'a> {
    tenant: &'a str,
    shard: u32,
    start: i64,
    end: i64,
    watermark: i64,
    events: &'a [u8],
}

/// Everything of the WIT `bucket` but its events.
#[derive(Debug, Clone, Copy)]
pub struct BucketHeader<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Shard.
    pub shard: u32,
    /// Start, epoch ms.
    pub start: i64,
    /// End (exclusive), epoch ms.
    pub end: i64,
    /// Watermark: no event of an earlier insert time is still to come.
    pub watermark: i64,
}

/// The WIT `bucket`, borrowing from the host's bucket: lowered straight into guest memory.
#[derive(ComponentType, Lower)]
#[component(record)]
struct BucketArg<'a> {
    tenant: &'a str,
    shard: u32,
    start: i64,
    end: i64,
    watermark: i64,
    events: &'a [EventView<'a>],
}

/// The WIT `event`, borrowing its parts from wherever the host holds them.
#[derive(Debug, Clone, Copy, ComponentType, Lower)]
#[component(record)]
pub struct EventView<'a> {
    /// Event id.
    pub id: &'a str,
    /// Sensor that reported it.
    pub source: &'a str,
    /// Event kind.
    pub kind: &'a str,
    /// Event time, epoch ms.
    #[component(name = "event-time")]
    pub event_time: i64,
    /// Insert time, epoch ms (0 before it is written).
    #[component(name = "insert-time")]
    pub insert_time: i64,
    /// Attributes.
    pub attributes: &'a [(String, String)],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl EventView<'_> {
    /// The event, owned.
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id.to_string(),
            source: self.source.to_string(),
            kind: self.kind.to_string(),
            event_time: self.event_time,
            insert_time: self.insert_time,
            attributes: self.attributes.to_vec(),
            payload: self.payload.to_vec(),
        }
    }
}

impl<'a> From<&'a Event> for EventView<'a> {
    fn from(e: &'a Event) -> Self {
        EventView {
            id: &e.id,
            source: &e.source,
            kind: &e.kind,
            event_time: e.event_time,
            insert_time: e.insert_time,
            attributes: &e.attributes,
            payload: &e.payload,
        }
    }
}

/// An export of an instance called with the borrowed argument types above, checked against
/// them at every call (a cheap comparison of type descriptions).
fn export_func(
    store: &mut Store<HostState>,
    instance: &Instance,
    version: &str,
    name: &str,
) -> wasmtime::Result<Func> {
    let iface = format!("{}{}", super::EXPORT_PREFIX, version);
    let missing = || wasmtime::format_err!("the component does not export {iface}#{name}");
    let iface_index = instance.get_export_index(&mut *store, None, &iface).ok_or_else(missing)?;
    let func_index =
        instance.get_export_index(&mut *store, Some(&iface_index), name).ok_or_else(missing)?;
    instance.get_func(&mut *store, func_index).ok_or_else(missing)
}

fn guest_error(e: wit::Error) -> GuestError {
    match e {
        wit::Error::InvalidConfig(m) => GuestError::InvalidConfig(m),
        wit::Error::InvalidState(m) => GuestError::InvalidState(m),
        wit::Error::Failed(m) => GuestError::Failed(m),
    }
}

/// Tells a deadline, a memory limit and any other trap apart.
fn classify(e: wasmtime::Error, limit_hit: bool, limits: &Limits, stderr: String) -> Failure {
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout { limit: limits.call_timeout };
    }
    if limit_hit {
        return Failure::MemoryLimit { limit: limits.memory_bytes };
    }
    let trap = e.downcast_ref::<Trap>().map(|t| t.to_string());
    let message = match trap {
        Some(t) => t,
        None => format!("{e:#}"),
    };
    Failure::Trap { message, stderr }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_batches_are_cut_by_bytes_and_never_lose_or_reorder_an_event() {
        let payloads: Vec<Vec<u8>> =
            [10, 500, 10, 10, 2000, 10].iter().map(|&n| vec![b'x'; n]).collect();
        let events: Vec<EventView<'_>> = payloads
            .iter()
            .map(|p| EventView {
                id: "e",
                source: "s",
                kind: "k",
                event_time: 0,
                insert_time: 0,
                attributes: &[],
                payload: p,
            })
            .collect();
        let sizes: Vec<usize> = chunks_of_bytes(&events, 700).map(<[_]>::len).collect();
        // 10+500 fit, then 10+10, then the 2000-byte event alone (over the limit by itself).
        assert_eq!(sizes, [2, 2, 1, 1]);
        let all: Vec<usize> = chunks_of_bytes(&events, 1 << 20).map(<[_]>::len).collect();
        assert_eq!(all, [6]);
        assert_eq!(chunks_of_bytes(&[], 100).count(), 0);
    }
}
