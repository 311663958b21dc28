//! The embedded store's events: an append-only log of segment files, with the index of
//! partitions kept in memory.
//!
//! Events are written once, read once by the worker of their shard (again only on a replay),
//! and never updated, so a log suits them better than the LSM tree that holds the store's
//! small, rewritten records: no memtable, no flush, no compaction, and a read is one `pread`
//! per record from the page cache.
//!
//! A segment `<dir>/<n>.log` (n = 1, 2, ...; a new one past [`SEGMENT_BYTES`]) is a sequence of
//! records, one per `(shard, bucket)` of an appended batch:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 4     | body length, little-endian                                         |
//! | 4     | shard                                                              |
//! | 8     | bucket start                                                       |
//! | 4     | events in the body                                                 |
//! | 8     | XXH3-64 of the 20 bytes above and of the body                      |
//! | len   | body: the events, each a 4-byte length and the encoded event       |
//!
//! An append writes all its records with one `write` and one `fdatasync` before it returns:
//! an acknowledged batch survives kill -9. A write cut short (a crash, a full disk) leaves a
//! partial record at the end of the last segment; opening the log checks the records of the
//! last segment and cuts the file before the first one that is incomplete or fails its hash.
//! Such a record was never acknowledged. A failed append is cut off at once, so later
//! appends never follow garbage.
//!
//! The index maps `(shard, bucket)` to its records and event count. It is rebuilt when the log
//! is opened: a sealed segment's records are listed in its `<n>.idx` file, written when it was
//! sealed (a checksummed list of record headers and offsets), so that opening reads kilobytes,
//! not the log; a segment without a valid one (sealed by an older version, or a crash before it
//! was written) is scanned, and the last segment always is.
//!
//! Retention drops whole segments, oldest first, once their last write is older than the
//! cut-off ([`EventLog::expire`]), as a TTL counts from the write; the segment being written is
//! never dropped. A segment's last write is its file's modification time.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use xxhash_rust::xxh3::Xxh3;

/// A segment is sealed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 28;

/// An index file entry: shard, bucket, offset, body length, count.
const ENTRY: usize = 28;

/// Postcard output appended to a Vec in place (postcard's own `Extend` flavour goes through
/// the generic `Extend` trait, a call per byte pushed).
struct Tail<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Tail<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Why the log failed. The message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing a segment failed.
    #[error("event log {path}: {what}: {source}")]
    Io {
        /// The segment or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A segment's content is not what was written.
    #[error(
        "event log {path}: {what} at byte {offset}; the file was changed or damaged outside storyline (restore it from a backup, or move it away to drop its events)"
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
        /// Where.
        offset: u64,
    },
    /// An earlier append failed and could not be cut off; nothing more is written.
    #[error(
        "event log {path}: an earlier write failed and its partial record could not be removed; restart storyline (opening the log removes it)"
    )]
    Poisoned {
        /// The segment.
        path: PathBuf,
    },
}

/// Where a record is: its segment's number, offset, body length and event count.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    count: u32,
}

/// One `(shard, bucket)`: its records in write order and how many events they hold.
#[derive(Debug, Default)]
struct Partition {
    records: Vec<Loc>,
    events: u64,
}

/// A record to append: one partition's events of a batch.
#[derive(Debug)]
pub struct Record {
    shard: u32,
    bucket: i64,
    count: u32,
    body: Vec<u8>,
}

impl Record {
    /// An empty record for `(shard, bucket)`.
    pub fn new(shard: u32, bucket: i64) -> Self {
        Record { shard, bucket, count: 0, body: Vec::new() }
    }

    /// Its shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Its bucket.
    pub fn bucket(&self) -> i64 {
        self.bucket
    }

    /// Events in it.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Moves it to another bucket of its shard.
    pub fn move_to(&mut self, bucket: i64) {
        self.bucket = bucket;
    }

    /// Whether this is the record of `(shard, bucket)`.
    pub fn is(&self, shard: u32, bucket: i64) -> bool {
        self.shard == shard && self.bucket == bucket
    }

    /// Adds an event, encoded with postcard.
    pub fn push<T: serde::Serialize>(&mut self, event: &T) {
        let at = self.body.len();
        self.body.extend_from_slice(&[0; 4]);
        // Plain data into a Vec: postcard cannot fail here; should it, the event is empty and
        // fails to decode when read, naming the record.
        if postcard::serialize_with_flavor(event, Tail(&mut self.body)).is_err() {
            self.body.truncate(at + 4);
        }
        let len = (self.body.len() - at - 4) as u32;
        if let Some(slot) = self.body.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
        self.count += 1;
    }
}

struct Segment {
    number: u64,
    path: PathBuf,
    file: Arc<File>,
    /// When it was last written, epoch ms.
    written_ms: i64,
}

struct Inner {
    /// Oldest first; the last one is written to.
    segments: std::collections::VecDeque<Segment>,
    /// Bytes in the last segment (where the next record goes).
    tail: u64,
    index: BTreeMap<(u32, i64), Partition>,
    /// Records of the segment being written, for its index file when it is sealed.
    current: Vec<(u32, i64, Loc)>,
    poisoned: bool,
}

/// The log of one tenant. Appends are serialised; reads run beside them.
pub struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io { path: path.to_path_buf(), what, source }
}

fn header(shard: u32, bucket: i64, count: u32, body: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    h[4..8].copy_from_slice(&shard.to_le_bytes());
    h[8..16].copy_from_slice(&bucket.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    let mut hash = Xxh3::new();
    hash.update(&h[..20]);
    hash.update(body);
    h[20..28].copy_from_slice(&hash.digest().to_le_bytes());
    h
}

/// The fields of a record header: body length, shard, bucket, count, hash.
fn parse_header(h: &[u8; HEADER]) -> (u32, u32, i64, u32, u64) {
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[8..16]);
    let bucket = i64::from_le_bytes(b);
    b.copy_from_slice(&h[20..28]);
    (u32_at(0), u32_at(4), bucket, u32_at(16), u64::from_le_bytes(b))
}

fn hash_ok(h: &[u8; HEADER], body: &[u8]) -> bool {
    let (_, shard, bucket, count, _) = parse_header(h);
    header(shard, bucket, count, body) == *h
}

impl EventLog {
    /// Opens (or creates) the log in `dir`, removing a partial record a crash left at its end.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// As [`EventLog::open`], with segments sealed past `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, LogError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir, "cannot create the directory"))?;
            // The new directory's name must survive a power loss too.
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io(parent, "cannot sync the directory"))?;
            }
        }
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir, "cannot list the directory"))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut inner = Inner {
            segments: Default::default(),
            tail: 0,
            index: BTreeMap::new(),
            current: Vec::new(),
            poisoned: false,
        };
        for (i, &n) in numbers.iter().enumerate() {
            let path = dir.join(format!("{n}.log"));
            let last = i + 1 == numbers.len();
            let file = OpenOptions::new()
                .read(true)
                .write(last)
                .open(&path)
                .map_err(io(&path, "cannot open the segment"))?;
            let listed = !last && read_index(&dir.join(format!("{n}.idx")), n, &mut inner.index);
            let end = if listed {
                0
            } else {
                let mut records = Vec::new();
                let end = scan(&file, &path, n, last, &mut records)?;
                if last {
                    inner.current = records.clone();
                } else {
                    // Sealed by an older version, or its index file was lost: write it now.
                    write_index(dir, n, &records);
                }
                for (shard, bucket, loc) in records {
                    let p = inner.index.entry((shard, bucket)).or_default();
                    p.records.push(loc);
                    p.events += u64::from(loc.count);
                }
                end
            };
            let written_ms = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(i64::MAX, |d| d.as_millis() as i64);
            if last {
                let size = file.metadata().map_err(io(&path, "cannot read its size"))?.len();
                if end < size {
                    tracing::warn!(
                        segment = %path.display(),
                        bytes = size - end,
                        "event log: removed the end of a write that was cut short (never acknowledged)"
                    );
                    file.set_len(end).map_err(io(&path, "cannot cut the partial record"))?;
                    file.sync_all().map_err(io(&path, "cannot sync the segment"))?;
                }
                inner.tail = end;
            }
            inner.segments.push_back(Segment { number: n, path, file: Arc::new(file), written_ms });
        }
        Ok(EventLog { dir: dir.to_path_buf(), segment_bytes, inner: Mutex::new(inner) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_segment(&self, inner: &mut Inner, n: u64) -> Result<(), LogError> {
        if n > 1 {
            write_index(&self.dir, n - 1, &inner.current);
        }
        inner.current.clear();
        let path = self.dir.join(format!("{n}.log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path, "cannot create the segment"))?;
        // The new name must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "cannot sync the directory"))?;
        inner.segments.push_back(Segment {
            number: n,
            path,
            file: Arc::new(file),
            written_ms: i64::MAX,
        });
        inner.tail = 0;
        Ok(())
    }

    /// Appends records durably at `now_ms`: when this returns `Ok`, they survive a crash. All
    /// of them or none become visible.
    pub fn append(&self, records: &[Record], now_ms: i64) -> Result<(), LogError> {
        let size: usize = records.iter().map(|r| HEADER + r.body.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let mut placed: Vec<(u32, i64, u64, u32, u64)> = Vec::with_capacity(records.len());
        for r in records.iter().filter(|r| !r.is_empty()) {
            let at = buf.len() as u64;
            buf.extend_from_slice(&header(r.shard, r.bucket, r.count, &r.body));
            buf.extend_from_slice(&r.body);
            placed.push((r.shard, r.bucket, at, r.body.len() as u32, u64::from(r.count)));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let (number, tail) = match inner.segments.back() {
            Some(s) => (s.number, inner.tail),
            None => (0, 0),
        };
        if inner.poisoned {
            return Err(LogError::Poisoned { path: self.dir.join(format!("{number}.log")) });
        }
        if number == 0 || (tail > 0 && tail + buf.len() as u64 > self.segment_bytes) {
            self.start_segment(&mut inner, number + 1)?;
        }
        let Some(current) = inner.segments.back_mut() else {
            return Err(LogError::Poisoned { path: self.dir.clone() });
        };
        current.written_ms = now_ms;
        let (segment, file, path) = (current.number, current.file.clone(), current.path.clone());
        let start = inner.tail;
        let written = file
            .write_all_at(&buf, start)
            .and_then(|()| file.sync_data())
            .map_err(io(&path, "cannot write events"));
        if let Err(e) = written {
            // Cut the partial write off, so that the next append does not follow it.
            if file.set_len(start).and_then(|()| file.sync_all()).is_err() {
                inner.poisoned = true;
            }
            return Err(e);
        }
        inner.tail = start + buf.len() as u64;
        for (shard, bucket, at, len, count) in placed {
            let loc = Loc { segment, offset: start + at, len, count: count as u32 };
            let p = inner.index.entry((shard, bucket)).or_default();
            p.records.push(loc);
            p.events += count;
            inner.current.push((shard, bucket, loc));
        }
        Ok(())
    }

    /// Drops the oldest segments last written before `cutoff_ms` (never the one being written)
    /// and forgets their records. Returns the events dropped.
    pub fn expire(&self, cutoff_ms: i64) -> u64 {
        let mut inner = self.lock();
        let mut dropped = Vec::new();
        while inner.segments.len() > 1
            && inner.segments.front().is_some_and(|s| s.written_ms < cutoff_ms)
        {
            let Some(s) = inner.segments.front() else { break };
            // Readers holding the file keep reading it; the name goes now.
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(segment = %s.path.display(), "event log: cannot remove an expired segment ({e}); it is kept");
                break;
            }
            let _ = std::fs::remove_file(s.path.with_extension("idx"));
            dropped.push(s.number);
            inner.segments.pop_front();
        }
        let Some(&last) = dropped.last() else { return 0 };
        let mut events = 0;
        inner.index.retain(|_, p| {
            p.records.retain(|l| {
                let keep = l.segment > last;
                if !keep {
                    events += u64::from(l.count);
                    p.events -= u64::from(l.count);
                }
                keep
            });
            !p.records.is_empty()
        });
        tracing::info!(
            segments = dropped.len(),
            events,
            "event log: dropped segments past the retention"
        );
        events
    }

    /// Hands every event of a partition to `each`, in the order written (an event written
    /// twice comes twice). `each` returns `false` for an event it cannot decode.
    pub fn read(
        &self,
        shard: u32,
        bucket: i64,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), LogError> {
        let records: Vec<(Loc, Arc<File>, PathBuf)> = {
            let inner = self.lock();
            match inner.index.get(&(shard, bucket)) {
                None => return Ok(()),
                Some(p) => p
                    .records
                    .iter()
                    .filter_map(|l| {
                        let first = inner.segments.front()?.number;
                        let s = inner
                            .segments
                            .get(usize::try_from(l.segment.checked_sub(first)?).ok()?)?;
                        Some((*l, s.file.clone(), s.path.clone()))
                    })
                    .collect(),
            }
        };
        let mut buf = Vec::new();
        for (loc, file, path) in records {
            let corrupt = |what| LogError::Corrupt { path: path.clone(), what, offset: loc.offset };
            buf.resize(HEADER + loc.len as usize, 0);
            file.read_exact_at(&mut buf, loc.offset).map_err(io(&path, "cannot read events"))?;
            let (h, mut body) = buf.split_at(HEADER);
            let h: &[u8; HEADER] = h.try_into().map_err(|_| corrupt("a record is short"))?;
            if !hash_ok(h, body) {
                return Err(corrupt("a record fails its hash"));
            }
            while !body.is_empty() {
                let (len, rest) =
                    body.split_at_checked(4).ok_or_else(|| corrupt("a record is short"))?;
                let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
                let (event, rest) =
                    rest.split_at_checked(len).ok_or_else(|| corrupt("a record is short"))?;
                if !each(event) {
                    return Err(corrupt("an event does not decode"));
                }
                body = rest;
            }
        }
        Ok(())
    }

    /// The first non-empty bucket of `shard` at or after `from`.
    pub fn next_bucket(&self, shard: u32, from: i64) -> Option<i64> {
        self.lock().index.range((shard, from)..=(shard, i64::MAX)).next().map(|((_, b), _)| *b)
    }

    /// Events written to partition `(shard, bucket)`, and their encoded bytes.
    pub fn partition_size(&self, shard: u32, bucket: i64) -> (u64, u64) {
        self.lock()
            .index
            .get(&(shard, bucket))
            .map_or((0, 0), |p| (p.events, p.records.iter().map(|l| u64::from(l.len)).sum()))
    }

    /// Events written to `shard` in buckets at or after `from`.
    pub fn events_from(&self, shard: u32, from: i64) -> u64 {
        self.lock().index.range((shard, from)..=(shard, i64::MAX)).map(|(_, p)| p.events).sum()
    }
}

/// Writes the index file of sealed segment `n`: its records, then an XXH3 of them. Written
/// aside and renamed into place; a failure only costs a scan at the next opening.
fn write_index(dir: &Path, n: u64, records: &[(u32, i64, Loc)]) {
    let mut buf = Vec::with_capacity(records.len() * ENTRY + 8);
    for (shard, bucket, loc) in records {
        buf.extend_from_slice(&shard.to_le_bytes());
        buf.extend_from_slice(&bucket.to_le_bytes());
        buf.extend_from_slice(&loc.offset.to_le_bytes());
        buf.extend_from_slice(&loc.len.to_le_bytes());
        buf.extend_from_slice(&loc.count.to_le_bytes());
    }
    let hash = xxhash_rust::xxh3::xxh3_64(&buf);
    buf.extend_from_slice(&hash.to_le_bytes());
    let (tmp, path) = (dir.join(format!("{n}.idx.tmp")), dir.join(format!("{n}.idx")));
    let written = std::fs::write(&tmp, &buf)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(index = %path.display(), "event log: cannot write a segment's index ({e}); the segment will be scanned when the store is opened");
    }
}

/// Loads the index file of sealed segment `n` into `index`; `false` (and nothing loaded) when
/// it is missing or not intact.
fn read_index(path: &Path, n: u64, index: &mut BTreeMap<(u32, i64), Partition>) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let Some((body, hash)) = bytes.split_last_chunk::<8>() else { return false };
    if body.len() % ENTRY != 0 || xxhash_rust::xxh3::xxh3_64(body) != u64::from_le_bytes(*hash) {
        tracing::warn!(index = %path.display(), "event log: a segment's index is damaged; scanning the segment instead");
        return false;
    }
    for e in body.chunks_exact(ENTRY) {
        let u32_at = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let loc = Loc { segment: n, offset: u64_at(12), len: u32_at(20), count: u32_at(24) };
        let p = index.entry((u32_at(0), u64_at(4) as i64)).or_default();
        p.records.push(loc);
        p.events += u64::from(loc.count);
    }
    true
}

/// Reads the record headers of a segment into `records`; returns where the valid records end.
/// The last segment's records are checked whole (a crash may have
/// cut its end); a sealed segment must be complete.
fn scan(
    file: &File,
    path: &Path,
    segment: u64,
    last: bool,
    records: &mut Vec<(u32, i64, Loc)>,
) -> Result<u64, LogError> {
    let size = file.metadata().map_err(io(path, "cannot read its size"))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(0)).map_err(io(path, "cannot read the segment"))?;
    let mut offset = 0u64;
    let mut body = Vec::new();
    loop {
        if offset == size {
            return Ok(offset);
        }
        let mut h = [0u8; HEADER];
        let mut valid = size - offset >= HEADER as u64;
        if valid {
            reader.read_exact(&mut h).map_err(io(path, "cannot read the segment"))?;
        }
        let (len, shard, bucket, count, _) = parse_header(&h);
        valid = valid && offset + (HEADER as u64) + u64::from(len) <= size;
        if valid && last {
            body.resize(len as usize, 0);
            reader.read_exact(&mut body).map_err(io(path, "cannot read the segment"))?;
            valid = hash_ok(&h, &body);
        } else if valid {
            reader.seek_relative(i64::from(len)).map_err(io(path, "cannot read the segment"))?;
        }
        if !valid {
            if last {
                return Ok(offset);
            }
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                what: "a sealed segment ends in an incomplete record",
                offset,
            });
        }
        records.push((shard, bucket, Loc { segment, offset, len, count }));
        offset += HEADER as u64 + u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("storyline-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rec(shard: u32, bucket: i64, events: &[(&str, &[u8])]) -> Record {
        let mut r = Record::new(shard, bucket);
        for e in events {
            r.push(e);
        }
        r
    }

    fn read(log: &EventLog, shard: u32, bucket: i64) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        log.read(shard, bucket, |bytes| {
            let (id, v): (&str, &[u8]) = postcard::from_bytes(bytes).unwrap();
            out.push((id.to_string(), v.to_vec()));
            true
        })
        .unwrap();
        out
    }

    fn ids(v: &[(String, Vec<u8>)]) -> Vec<&str> {
        v.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn appended_records_read_back_by_partition_and_survive_reopening() {
        let d = dir("roundtrip");
        let log = EventLog::open(&d).unwrap();
        log.append(&[rec(0, 1000, &[("b", b"B"), ("a", b"A")]), rec(1, 1000, &[("c", b"C")])], 0)
            .unwrap();
        log.append(&[rec(0, 1000, &[("d", b"D")]), rec(0, 3000, &[("e", b"E")])], 0).unwrap();
        for log in [log, EventLog::open(&d).unwrap()] {
            let got = read(&log, 0, 1000);
            assert_eq!(ids(&got), ["b", "a", "d"]);
            assert_eq!(got[0].1, b"B");
            assert_eq!(ids(&read(&log, 1, 1000)), ["c"]);
            assert!(read(&log, 2, 1000).is_empty());
            assert_eq!(log.next_bucket(0, 1001), Some(3000));
            assert_eq!(log.next_bucket(0, i64::MIN), Some(1000));
            assert_eq!(log.next_bucket(1, 1001), None);
            assert_eq!(log.events_from(0, i64::MIN), 4);
            assert_eq!(log.events_from(0, 1001), 1);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_write_cut_short_is_removed_and_appends_go_on() {
        let d = dir("torn");
        let log = EventLog::open(&d).unwrap();
        log.append(&[rec(0, 0, &[("a", b"A")])], 0).unwrap();
        drop(log);
        // A crash in the middle of the next record: its header and half its body.
        let seg = d.join("1.log");
        let whole = std::fs::read(&seg).unwrap();
        let r = rec(0, 0, &[("b", b"B")]);
        let mut torn = header(0, 0, 1, &r.body).to_vec();
        torn.extend_from_slice(&r.body[..r.body.len() / 2]);
        std::fs::write(&seg, [whole.clone(), torn].concat()).unwrap();
        let log = EventLog::open(&d).unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole.len() as u64);
        assert_eq!(ids(&read(&log, 0, 0)), ["a"]);
        log.append(&[rec(0, 0, &[("c", b"C")])], 0).unwrap();
        drop(log);
        // Garbage that looks like a complete record but fails its hash is cut off too.
        let mut bad = header(0, 0, 1, b"xyz").to_vec();
        bad.extend_from_slice(b"xyw");
        let before = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, [before.clone(), bad].concat()).unwrap();
        let log = EventLog::open(&d).unwrap();
        assert_eq!(ids(&read(&log, 0, 0)), ["a", "c"]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), before.len() as u64);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn segments_roll_and_partitions_span_them() {
        let d = dir("roll");
        let log = EventLog::open_with(&d, 200).unwrap();
        let payload = [7u8; 100];
        for i in 0..10 {
            let id = format!("e{i}");
            log.append(&[rec(0, 0, &[(&id, &payload)]), rec(1, i, &[(&id, &payload)])], 0).unwrap();
        }
        let segments = std::fs::read_dir(&d).unwrap().count();
        assert!(segments >= 5, "{segments} segments");
        drop(log);
        let log = EventLog::open_with(&d, 200).unwrap();
        let got = read(&log, 0, 0);
        assert_eq!(got.len(), 10);
        assert_eq!(got[9].0, "e9");
        assert_eq!(log.events_from(1, 0), 10);
        assert_eq!(log.next_bucket(1, 5), Some(5));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn retention_drops_old_segments_whole_and_never_the_current_one() {
        let d = dir("expire");
        let log = EventLog::open_with(&d, 200).unwrap();
        let payload = [7u8; 100];
        // Buckets 0..10 of shard 0 written at 0, 1000, ... ms, one per segment (each record
        // fills a segment).
        for b in 0..10 {
            log.append(&[rec(0, b, &[("e", &payload)])], b * 1000).unwrap();
        }
        assert_eq!(log.events_from(0, i64::MIN), 10);
        assert_eq!(log.expire(5000), 5);
        assert_eq!(log.next_bucket(0, i64::MIN), Some(5));
        assert_eq!(log.events_from(0, i64::MIN), 5);
        assert!(read(&log, 0, 4).is_empty());
        assert_eq!(read(&log, 0, 5).len(), 1);
        let logs = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "log")
                .count()
        };
        assert_eq!(logs(&d), 5);
        // Everything is past the cut-off, but the segment being written stays.
        assert_eq!(log.expire(100_000), 4);
        assert_eq!(log.next_bucket(0, i64::MIN), Some(9));
        drop(log);
        // Reopened, a segment's last write is its modification time (now): nothing expires
        // before it.
        let log = EventLog::open_with(&d, 200).unwrap();
        assert_eq!(log.expire(1000), 0);
        assert_eq!(log.next_bucket(0, i64::MIN), Some(9));
        log.append(&[rec(0, 10, &[("f", &payload)])], 0).unwrap();
        assert_eq!(log.events_from(0, i64::MIN), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sealed_segments_open_from_their_index_files() {
        let d = dir("idx");
        let log = EventLog::open_with(&d, 200).unwrap();
        let payload = [7u8; 100];
        for b in 0..6 {
            log.append(&[rec(0, b, &[("e", &payload)]), rec(1, b, &[("f", &payload)])], 0).unwrap();
        }
        drop(log);
        assert!(d.join("1.idx").exists());
        // Opening does not read a sealed segment that has an index: garbage in its record
        // headers goes unnoticed until a read of that record.
        let seg = d.join("1.log");
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&seg, &bytes).unwrap();
        let log = EventLog::open_with(&d, 200).unwrap();
        assert_eq!(log.events_from(0, i64::MIN), 6);
        assert_eq!(log.events_from(1, i64::MIN), 6);
        assert!(log.read(0, 0, |_| true).is_err());
        assert_eq!(read(&log, 0, 5).len(), 1);
        drop(log);
        // Without a valid index file the segment is scanned (and here found damaged).
        std::fs::write(d.join("1.idx"), b"not an index").unwrap();
        let err = EventLog::open_with(&d, 200).unwrap_err().to_string();
        assert!(err.contains("1.log") && err.contains("incomplete record"), "{err}");
        // A lost index is written again by the scan.
        std::fs::remove_file(d.join("2.idx")).unwrap();
        std::fs::remove_file(d.join("1.log")).unwrap();
        std::fs::remove_file(d.join("1.idx")).unwrap();
        let log = EventLog::open_with(&d, 200).unwrap();
        assert!(d.join("2.idx").exists());
        assert_eq!(read(&log, 1, 5).len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_record_is_reported_not_returned() {
        let d = dir("damaged");
        let log = EventLog::open(&d).unwrap();
        log.append(&[rec(0, 0, &[("a", b"AAAA")])], 0).unwrap();
        // Flip a byte of the body behind the log's back.
        let seg = d.join("1.log");
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&bytes, 0)
            .unwrap();
        let err = log.read(0, 0, |_| true).unwrap_err().to_string();
        assert!(err.contains("fails its hash") && err.contains("1.log"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
