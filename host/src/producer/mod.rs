//! The producer: validates event lines, picks each event's shard and insert-time bucket, and
//! writes them in durable batches.
//!
//! Lines are read in one of the input formats of [`format`] (storyline's own JSONL unless
//! [`Producer::format`] says otherwise): Zeek and Suricata records become events with an ECS
//! payload, header lines are skipped.
//!
//! Shard choice keeps a story on one shard: the event's explicit `route` key, else the key the
//! tenant's plugin computes (`route` export, e.g. the client address of a network session), else
//! the event id. The key is hashed with FNV-1a, which is stable across builds and platforms, so
//! every producer maps a key to the same shard.
//!
//! The insert time is taken when a batch is written, not when a line is read: a batch that
//! waited does not land in a bucket a worker may already have passed.

use std::io::{BufRead, Read};

use storyline_sdk::format::{FormatError, InputEvent};

use crate::model::{BucketStart, ShardId, TenantId, TimestampMs};
use crate::store::{Layout, NewEvent, Store, StoreError};

pub mod format;
mod router;
pub use format::{Adapter, Format};
pub use router::{MAX_FAILURES, ROUTE_DEADLINE, Router};

/// Default events per durable batch: one fdatasync (~1 ms) per thousand events.
pub const DEFAULT_BATCH: usize = 1000;

/// Stable 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of a routing key.
pub fn shard_of(key: &str, shards: u32) -> ShardId {
    ShardId((fnv1a(key.as_bytes()) % u64::from(shards.max(1))) as u32)
}

/// The bucket that contains `time`.
pub fn bucket_of(time: TimestampMs, bucket_ms: i64) -> BucketStart {
    BucketStart(time.div_euclid(bucket_ms.max(1)) * bucket_ms.max(1))
}

/// What an ingest run did.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Events written durably.
    pub accepted: u64,
    /// Lines refused, with line number and reason (the first 100 are kept).
    pub rejected: Vec<FormatError>,
    /// Total refused lines.
    pub rejected_count: u64,
    /// Batches written.
    pub batches: u64,
    /// The plugin version that computed routing keys and where it came from; `None`: events
    /// were routed by their `route` field, else by id.
    pub routed_by: Option<String>,
    /// Batches whose `route` call failed (each was routed by event id instead).
    pub route_failures: u64,
    /// The format the lines were read in: its hint ends each rejected line's message.
    pub format: Format,
}

impl IngestReport {
    /// The kept rejected lines as the user reads them: `line N: reason (hint)`, with the hint of
    /// the format the input was read in.
    pub fn rejected_messages(&self) -> impl Iterator<Item = String> + '_ {
        self.rejected.iter().map(|e| self.format.describe(e))
    }
}

/// Called with the number of events durable so far, after each batch.
pub type OnDurable = Box<dyn FnMut(u64) + Send>;

/// Writes events of one tenant. One batch is written while the next is being read and
/// validated; [`Producer::flush`] waits until everything pushed is durable.
pub struct Producer<'s, S: Store + Clone> {
    store: &'s S,
    /// The batch being written, with its size.
    in_flight: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, u64)>,
    tenant: TenantId,
    layout: Layout,
    /// The tenant's plugin, asked for routing keys; `None` routes by event id.
    router: Option<Router>,
    /// Batches whose `route` call failed so far.
    route_failures: u64,
    batch_size: usize,
    /// Prefix of generated event ids: unique per producer run.
    id_prefix: String,
    /// Events generated ids so far.
    generated: u64,
    /// Validated events waiting for the next batch.
    pending: Vec<(InputEvent, Option<ShardId>)>,
    /// Where a clock reading comes from (tests control time).
    clock: fn() -> TimestampMs,
    /// Told after each durable batch.
    on_durable: Option<OnDurable>,
    /// Turns input lines into events; holds what the format carries between lines.
    adapter: Adapter,
}

impl<S: Store + Clone> std::fmt::Debug for Producer<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tenant", &self.tenant)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// The host's clock in epoch milliseconds.
pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<'s, S: Store + Clone> Producer<'s, S> {
    /// A producer for `tenant` with `layout`, routing with `router` when given.
    pub fn new(store: &'s S, tenant: TenantId, layout: Layout, router: Option<Router>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Producer {
            store,
            in_flight: None,
            tenant,
            layout,
            router,
            route_failures: 0,
            batch_size: DEFAULT_BATCH,
            id_prefix: format!("ev-{:x}{:04x}", nanos as u64, std::process::id() & 0xffff),
            generated: 0,
            pending: Vec::new(),
            clock: now_ms,
            on_durable: None,
            adapter: Adapter::default(),
        }
    }

    /// Reads lines with `adapter` (default: storyline's own JSONL, README "Event format"). One
    /// adapter per input: it remembers headers from line to line.
    pub fn format(mut self, adapter: Adapter) -> Self {
        self.adapter = adapter;
        self
    }

    /// Events per durable batch (default 1000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Calls `f` with the count of durable events after each batch.
    pub fn on_durable(mut self, f: OnDurable) -> Self {
        self.on_durable = Some(f);
        self
    }

    /// Uses another clock (tests).
    pub fn clock(mut self, clock: fn() -> TimestampMs) -> Self {
        self.clock = clock;
        self
    }

    /// Shards for the pending events that have none yet: the explicit routing key of an event
    /// decides first, then the key the tenant's plugin computes (one call for the batch, on a
    /// blocking thread: see [`Router`]), then the event id.
    async fn route_pending(&mut self) {
        let shards = self.layout.shards;
        let unrouted: Vec<usize> =
            (0..self.pending.len()).filter(|&i| self.pending[i].1.is_none()).collect();
        if unrouted.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        if let Some(mut router) = self.router.take().filter(|r| !r.given_up()) {
            // The events travel to the blocking thread and back: nothing is copied, and
            // nothing is lost whatever the rule does (the router catches panics).
            let pending = std::mem::take(&mut self.pending);
            let which = unrouted.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let routed = router.keys_blocking(&pending, &which);
                (router, pending, routed)
            })
            .await;
            match joined {
                Ok((router, pending, routed)) => {
                    self.pending = pending;
                    self.router = Some(router);
                    if routed.failure.is_some() {
                        self.route_failures += 1;
                    }
                    keys = routed.keys;
                }
                // Only a runtime shutting down cancels a blocking task; the producer's own
                // future is then being dropped too, and none of these events was acknowledged.
                Err(e) => tracing::error!("routing task lost: {e}"),
            }
        }
        let mut keys = keys.into_iter();
        for i in unrouted {
            let Some((e, shard)) = self.pending.get_mut(i) else { break };
            *shard = Some(match keys.next().flatten() {
                Some(key) => shard_of(&key, shards),
                None => shard_of(e.id.as_deref().unwrap_or_default(), shards),
            });
        }
    }

    /// Validates one line; a valid event joins the current batch, which is written when full.
    /// A line that is not an event (a header, a comment) is skipped.
    pub async fn push_line(
        &mut self,
        line: &str,
        line_no: usize,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        match self.adapter.parse(line, line_no) {
            Ok(None) => {}
            Ok(Some(mut e)) => {
                if e.id.is_none() {
                    self.generated += 1;
                    e.id = Some(format!("{}-{}", self.id_prefix, self.generated));
                }
                // Routed with the rest of the batch when it is written.
                let shard = e.route.as_deref().map(|key| shard_of(key, self.layout.shards));
                self.pending.push((e, shard));
                if self.pending.len() >= self.batch_size {
                    self.send(report).await?;
                }
            }
            Err(err) => self.reject(report, err.line, err.reason),
        }
        Ok(())
    }

    /// Writes the pending batch and waits until every batch is durable. Each batch is written
    /// atomically: all of it or none of it.
    pub async fn flush(&mut self, report: &mut IngestReport) -> Result<(), StoreError> {
        self.send(report).await?;
        self.settle(report).await
    }

    /// Waits for the batch being written, if any, and counts it.
    async fn settle(&mut self, report: &mut IngestReport) -> Result<(), StoreError> {
        let Some((task, n)) = self.in_flight.take() else { return Ok(()) };
        task.await.map_err(|e| StoreError::Backend {
            backend: "producer",
            message: format!("the write task failed: {e}"),
        })??;
        report.accepted += n;
        report.batches += 1;
        if let Some(f) = &mut self.on_durable {
            f(report.accepted);
        }
        Ok(())
    }

    /// Starts writing the pending batch once the previous one is durable.
    async fn send(&mut self, report: &mut IngestReport) -> Result<(), StoreError> {
        // While the previous batch is still being written.
        self.route_pending().await;
        self.settle(report).await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        // Insert time is read when the batch is handed to the store, after the previous batch
        // finished: a batch never lands in a bucket older than the moment it is written.
        let insert_time = (self.clock)();
        let bucket = bucket_of(insert_time, self.layout.bucket_ms);
        let events: Vec<NewEvent> = self
            .pending
            .drain(..)
            .map(|(e, shard)| NewEvent {
                // Every pending event was routed above.
                shard: shard.unwrap_or(ShardId(0)),
                bucket,
                event: e.into_event(String::new, insert_time),
            })
            .collect();
        let n = events.len() as u64;
        let (store, tenant, layout) = (self.store.clone(), self.tenant.clone(), self.layout);
        let task = tokio::spawn(async move { store.append(&tenant, layout, &events).await });
        self.in_flight = Some((task, n));
        Ok(())
    }

    /// Reads a stream to its end, in the adapter's format, then flushes. A line that is not
    /// UTF-8 is rejected like a malformed one; a read error ends the input (what was read is
    /// still written).
    ///
    /// A thread reads while this task validates and writes. A stream that goes quiet (a pipe
    /// fed by a live source) does not leave its last events waiting for a full batch: when no
    /// line has come for [`IDLE_FLUSH`], or as soon as no batch is being written, what is
    /// pending is written, and counted as durable once it is.
    pub async fn ingest(
        &mut self,
        reader: impl Read + Send + 'static,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport { format: self.adapter.format(), ..IngestReport::default() };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Line>>(8);
        let reading = std::thread::Builder::new()
            .name("ingest-read".into())
            .spawn(move || read_lines(reader, &tx))
            .map_err(|e| StoreError::Backend {
                backend: "producer",
                message: format!("cannot start the reading thread: {e}"),
            })?;
        loop {
            let chunk = if self.pending.is_empty() && self.in_flight.is_none() {
                rx.recv().await
            } else {
                match tokio::time::timeout(IDLE_FLUSH, rx.recv()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        // Quiet input: write what is pending (after the batch in flight), and
                        // count what became durable.
                        self.flush(&mut report).await?;
                        continue;
                    }
                }
            };
            let Some(chunk) = chunk else { break };
            for (line_no, line) in chunk {
                match line {
                    Ok(text) => self.push_line(&text, line_no, &mut report).await?,
                    Err(reason) => self.reject(&mut report, line_no, reason),
                }
            }
            let writing = self.in_flight.as_ref().is_some_and(|(task, _)| !task.is_finished());
            if rx.is_empty() && !writing && !self.pending.is_empty() {
                // Nothing more read yet and the store is idle: write now rather than wait.
                self.send(&mut report).await?;
            }
        }
        // The thread ends with the input: the channel closed because it returned.
        let _ = reading.join();
        self.flush(&mut report).await?;
        report.routed_by = self.router.as_ref().map(Router::describe);
        report.route_failures = self.route_failures;
        Ok(report)
    }

    fn reject(&self, report: &mut IngestReport, line: usize, reason: String) {
        // Reports made by callers of `push_line` start as storyline's.
        report.format = self.adapter.format();
        report.rejected_count += 1;
        if report.rejected.len() < 100 {
            report.rejected.push(FormatError { line, reason });
        }
    }
}

/// How long pending events wait for more input before they are written anyway.
pub const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

/// A line read, numbered from 1: its text, or why it cannot be read.
type Line = (usize, Result<String, String>);

/// Lines handed over per chunk at most.
const CHUNK_LINES: usize = 256;

/// Reads `reader` line by line into chunks sent on `tx`. A chunk leaves when it is full or
/// when the lines read so far are all the input holds for now (the next read may wait), so
/// that a slow source's lines are not held back.
fn read_lines(reader: impl Read, tx: &tokio::sync::mpsc::Sender<Vec<Line>>) {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
    let mut chunk: Vec<Line> = Vec::with_capacity(CHUNK_LINES);
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                chunk.push((line_no, Err(format!("unreadable, input ends here: {e}"))));
                break;
            }
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let line = match std::str::from_utf8(text) {
            Ok(line) => Ok(line.to_string()),
            Err(e) => Err(format!("not UTF-8: {e}")),
        };
        chunk.push((line_no, line));
        if chunk.len() >= CHUNK_LINES || reader.buffer().is_empty() {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LINES));
            if tx.blocking_send(full).is_err() {
                // The producer stopped (a store error): nothing more to hand over.
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_standard_function() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[tokio::test]
    async fn lines_that_are_not_utf8_are_rejected_and_the_others_written() {
        let dir = std::env::temp_dir().join(format!("storyline-utf8-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = crate::store::embedded::EmbeddedStore::new(&dir);
        let tenant = TenantId::new("acme").unwrap();
        let mut p = Producer::new(&store, tenant, Layout::default(), None);
        let input: &[u8] = b"{\"source\":\"s\",\"kind\":\"k\",\"time\":1}\r\n\xff\xfe\n\n{\"source\":\"s\",\"kind\":\"k\",\"time\":2}";
        let report = p.ingest(input).await.unwrap();
        assert_eq!((report.accepted, report.rejected_count), (2, 1));
        assert_eq!(report.rejected[0].line, 2);
        assert!(
            report.rejected[0].reason.starts_with("not UTF-8"),
            "{}",
            report.rejected[0].reason
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Input that arrives in pieces and waits in between, like a pipe from a live source.
    struct Trickle(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.1.is_empty() {
                // Blocks until the next piece; the sender gone is the end of the input.
                match self.0.recv() {
                    Ok(piece) => self.1 = piece,
                    Err(_) => return Ok(0),
                }
            }
            let n = out.len().min(self.1.len());
            out[..n].copy_from_slice(&self.1[..n]);
            self.1.drain(..n);
            Ok(n)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_of_a_quiet_stream_are_written_without_waiting_for_a_full_batch() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = std::env::temp_dir().join(format!("storyline-trickle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = crate::store::embedded::EmbeddedStore::new(&dir);
        let tenant = TenantId::new("acme").unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&durable);
        // Batches of 1,000: three events alone would never fill one.
        let mut p = Producer::new(&store, tenant.clone(), Layout::default(), None)
            .on_durable(Box::new(move |n| seen.store(n, Ordering::SeqCst)));
        let (tx, rx) = std::sync::mpsc::channel();
        let line = |t: i64| format!("{{\"source\":\"s\",\"kind\":\"k\",\"time\":{t}}}\n");
        let feeder = {
            let durable = Arc::clone(&durable);
            std::thread::spawn(move || {
                tx.send(format!("{}{}", line(1), line(2)).into_bytes()).unwrap();
                tx.send(line(3).into_bytes()).unwrap();
                // The input stays open: the three must become durable meanwhile.
                let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while durable.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < give_up {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let while_open = durable.load(Ordering::SeqCst);
                tx.send(line(4).into_bytes()).unwrap();
                while_open
            })
        };
        let report = p.ingest(Trickle(rx, Vec::new())).await.unwrap();
        assert_eq!(feeder.join().unwrap(), 3, "events written while the input was still open");
        assert_eq!((report.accepted, report.rejected_count), (4, 0));
        let mut stored = 0;
        for shard in 0..Layout::default().shards {
            let mut after = None;
            while let Some(b) = store.next_bucket(&tenant, ShardId(shard), after).await.unwrap() {
                stored += store.read_bucket(&tenant, ShardId(shard), b).await.unwrap().len();
                after = Some(b);
            }
        }
        assert_eq!(stored, 4);
        drop(p);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn buckets_floor_towards_minus_infinity() {
        assert_eq!(bucket_of(1999, 1000), BucketStart(1000));
        assert_eq!(bucket_of(-1, 1000), BucketStart(-1000));
        assert_eq!(shard_of("k", 1), ShardId(0));
    }
}
