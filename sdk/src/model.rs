//! The values a correlator receives and returns: the Rust side of `wit/v0.2.0`.
//!
//! These types mirror the WIT records one to one, so that moving between them costs no copy of
//! a payload. They are the same natively (tests, benchmarks) and inside a Wasm component.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;

/// One event from one sensor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub fields: Fields,
}

/// The enriched fields of a story: the text of one JSON object, as the story leaves the plugin.
///
/// Write them with [`Fields::builder`], which serialises each value straight into the text
/// (no `serde_json::Value` tree is built and dropped per publication), or convert a
/// `serde_json::Map`. Read them back with [`Fields::get`] or [`Fields::to_map`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(String);

impl Default for Fields {
    fn default() -> Self {
        Fields("{}".to_string())
    }
}

impl Fields {
    /// No fields: `{}`.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Starts writing an object field by field.
    pub fn builder() -> FieldsBuilder {
        FieldsBuilder { text: b"{".to_vec() }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The fields as a map (empty if the text were not an object, which the builder and the
    /// conversions never produce).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The value of field `key`; `Null` when absent.
    pub fn get(&self, key: &str) -> serde_json::Value {
        self.to_map().remove(key).unwrap_or(serde_json::Value::Null)
    }

    /// Sets field `key` (reads and rewrites the whole text: for occasional use).
    pub fn insert(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        let mut map = self.to_map();
        map.insert(key.to_string(), value.into());
        *self = Fields::from(map);
    }
}

impl From<serde_json::Map<String, serde_json::Value>> for Fields {
    fn from(map: serde_json::Map<String, serde_json::Value>) -> Self {
        // A map of JSON values always serialises.
        Fields(serde_json::to_string(&map).unwrap_or_else(|_| "{}".into()))
    }
}

/// Writes a [`Fields`] object; see [`Fields::builder`]. Each key should be given once.
#[derive(Debug)]
pub struct FieldsBuilder {
    text: Vec<u8>,
}

impl FieldsBuilder {
    /// Adds field `key` with `value` serialised as JSON. A value that cannot be serialised as
    /// JSON (a map with non-text keys) is written as `null`.
    pub fn field<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Self {
        if self.text.len() > 1 {
            self.text.push(b',');
        }
        // Writing into a Vec fails only for values JSON cannot represent.
        let _ = serde_json::to_writer(&mut self.text, key);
        self.text.push(b':');
        let start = self.text.len();
        if serde_json::to_writer(&mut self.text, value).is_err() {
            self.text.truncate(start);
            self.text.extend_from_slice(b"null");
        }
        self
    }

    /// The object.
    pub fn finish(&mut self) -> Fields {
        let mut text = std::mem::take(&mut self.text);
        if text.is_empty() {
            text.push(b'{');
        }
        text.push(b'}');
        // serde_json writes UTF-8 only.
        Fields(String::from_utf8(text).unwrap_or_else(|_| "{}".into()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_builder_writes_one_json_object() {
        let set: std::collections::BTreeSet<String> = ["b".into(), "a\"q".into()].into();
        let fields = Fields::builder()
            .field("n", &7)
            .field("none", &Option::<u8>::None)
            .field("set", &set)
            .field("text", "x\ny")
            .finish();
        assert_eq!(fields.as_str(), r#"{"n":7,"none":null,"set":["a\"q","b"],"text":"x\ny"}"#);
        assert_eq!(fields.get("set"), json!(["a\"q", "b"]));
        assert_eq!(fields.get("absent"), serde_json::Value::Null);
        assert_eq!(Fields::builder().finish(), Fields::new());
        // A value JSON cannot hold (a map with non-text keys) is written as null.
        let odd: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let f = Fields::builder().field("odd", &odd).field("after", &1).finish();
        assert_eq!(f.to_map(), json!({"odd": null, "after": 1}).as_object().unwrap().clone());
    }

    #[test]
    fn fields_convert_from_a_map_and_take_inserts() {
        let mut f = Fields::from(json!({"a": 1}).as_object().unwrap().clone());
        f.insert("b", "two");
        assert_eq!(f.as_str(), r#"{"a":1,"b":"two"}"#);
    }
}
