//! The values a correlator receives and returns: the Rust side of `wit/v0.1.0`.
//!
//! These types mirror the WIT records one to one, so that moving between them costs no copy of
//! a payload. They are the same natively (tests, benchmarks) and inside a Wasm component.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;

/// One event from one sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique within the tenant; stories list their events by this id.
    pub id: String,
    /// The sensor that reported it, e.g. `fw-paris-01`.
    pub source: String,
    /// What it describes, e.g. `flow`, `dns`, `http`, `tls`, `process`.
    pub kind: String,
    /// When it happened, by the sensor's (possibly skewed) clock.
    pub event_time: TimestampMs,
    /// When the host accepted it, by the host's clock.
    pub insert_time: TimestampMs,
    /// Producer-given key/value attributes.
    pub attributes: Vec<(String, String)>,
    /// The sensor's record, usually JSON with Elastic Common Schema fields; empty when absent.
    pub payload: Vec<u8>,
}

impl Event {
    /// The value of attribute `key`, if present.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The events of one time bucket of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The tenant the events belong to.
    pub tenant: String,
    /// The shard the events were routed to.
    pub shard: u32,
    /// Start of the bucket (inclusive).
    pub start: TimestampMs,
    /// End of the bucket (exclusive).
    pub end: TimestampMs,
    /// Processing-time clock for this bucket; sessions idle longer than their timeout before it
    /// may close. Derived from the bucket, so replays see the same value.
    pub watermark: TimestampMs,
    /// The events, in event-id order; possibly none.
    pub events: Vec<Event>,
}

/// A group of events that tells one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Story {
    /// Deterministic id: the same input yields the same id across crashes and replays.
    pub id: String,
    /// 0 on first publication, +1 each time the same story is published again after growing.
    pub revision: u32,
    /// What kind of story, e.g. `network-session`.
    pub kind: String,
    /// Every event in the story.
    pub event_ids: Vec<String>,
    /// Earliest event time.
    pub first_seen: TimestampMs,
    /// Latest event time.
    pub last_seen: TimestampMs,
    /// Enriched fields (endpoints, names, sensors...), one JSON object.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Why a correlator refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The configuration given to `init` is unusable; the text says what to fix.
    InvalidConfig(String),
    /// The state given to `restore` cannot be read by this version.
    InvalidState(String),
    /// The bucket could not be processed.
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid plugin configuration: {m}"),
            Error::InvalidState(m) => write!(f, "invalid plugin state: {m}"),
            Error::Failed(m) => write!(f, "processing failed: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}
