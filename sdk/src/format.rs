//! The public event format: one JSON object per line (JSONL).
//!
//! ```text
//! {"id": "fw-000123", "source": "fw-paris-01", "kind": "flow", "time": "2026-11-24T13:00:00.123Z",
//!  "route": "optional routing key", "attributes": {"k": "v"}, "payload": {...}}
//! ```
//!
//! `source`, `kind` and `time` are required; `time` is RFC 3339 or integer epoch milliseconds;
//! `id` is optional (the reader generates one when absent); `payload` is any JSON value and is
//! kept as its exact JSON text. The host's `ingest` and `plugin test` commands and the SDK's
//! [`crate::testing`] harness all read this format through this module.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{Bucket, Event, TimestampMs};

/// Where to read about the format in an error message.
const FORMAT_HINT: &str = "one JSON object per line; see README \"Event format\"";

/// An event as read from one line, before the host assigns shard and insert time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputEvent {
    /// The `id` field, if given.
    pub id: Option<String>,
    /// The `source` field.
    pub source: String,
    /// The `kind` field.
    pub kind: String,
    /// The `time` field in epoch milliseconds.
    pub time: TimestampMs,
    /// The `route` field: an explicit routing key.
    pub route: Option<String>,
    /// The `attributes` object, as string pairs in the order given.
    pub attributes: Vec<(String, String)>,
    /// The exact JSON text of `payload`; empty when absent.
    pub payload: Vec<u8>,
}

impl InputEvent {
    /// Turns this into an [`Event`], using `fallback_id` when the line had no `id`.
    pub fn into_event(
        self,
        fallback_id: impl FnOnce() -> String,
        insert_time: TimestampMs,
    ) -> Event {
        Event {
            id: self.id.unwrap_or_else(fallback_id),
            source: self.source,
            kind: self.kind,
            event_time: self.time,
            insert_time,
            attributes: self.attributes,
            payload: self.payload,
        }
    }
}

/// A line that is not a valid event. Display names the line and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} ({FORMAT_HINT})", self.line, self.reason)
    }
}

impl std::error::Error for FormatError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(default, borrow)]
    route: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    attributes: Option<&'a RawValue>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// Parses one line of the event format. `line_no` is 1-based and only used in errors.
pub fn parse_line(line: &str, line_no: usize) -> Result<InputEvent, FormatError> {
    let err = |reason: String| FormatError { line: line_no, reason };
    let raw: Line<'_> = serde_json::from_str(line).map_err(|e| err(describe_json_error(&e)))?;
    let source = required_text(raw.source, "source").map_err(err)?;
    let kind = required_text(raw.kind, "kind").map_err(err)?;
    let time = match raw.time {
        None => return Err(err("missing field \"time\"".into())),
        Some(t) => parse_time(t.get()).map_err(err)?,
    };
    let id = match raw.id {
        Some(id) if id.is_empty() => return Err(err("field \"id\" is empty".into())),
        Some(id) if id.len() > MAX_ID_BYTES => {
            return Err(err(format!("field \"id\" is longer than {MAX_ID_BYTES} bytes")));
        }
        other => other.map(|s| s.into_owned()),
    };
    let attributes = match raw.attributes {
        None => Vec::new(),
        Some(a) => parse_attributes(a.get()).map_err(err)?,
    };
    let payload = raw.payload.map(|p| p.get().as_bytes().to_vec()).unwrap_or_default();
    Ok(InputEvent {
        id,
        source,
        kind,
        time,
        route: raw.route.map(|r| r.into_owned()),
        attributes,
        payload,
    })
}

/// Longest accepted event id, in bytes (ids are keys in the store and in every story).
pub const MAX_ID_BYTES: usize = 256;

fn required_text(v: Option<std::borrow::Cow<'_, str>>, name: &str) -> Result<String, String> {
    match v {
        None => Err(format!("missing field \"{name}\"")),
        Some(s) if s.trim().is_empty() => Err(format!("field \"{name}\" is empty")),
        Some(s) => Ok(s.into_owned()),
    }
}

fn describe_json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json appends " at line 1 column N"; the column is useful, the line is always 1.
    let msg = msg.replace(" at line 1 column ", " at column ");
    if msg.starts_with("unknown field") {
        format!("{msg}; the known fields are id, source, kind, time, route, attributes, payload")
    } else if msg.contains("invalid type") && msg.contains("expected struct Line") {
        "not a JSON object".to_string()
    } else {
        msg
    }
}

/// Parses the `time` field: an RFC 3339 string or integer epoch milliseconds.
pub fn parse_time(raw_json: &str) -> Result<TimestampMs, String> {
    // Try the form the text starts like: a failed attempt builds an error message, per line.
    if !raw_json.starts_with('"')
        && let Ok(ms) = serde_json::from_str::<i64>(raw_json)
    {
        return Ok(ms);
    }
    match serde_json::from_str::<&str>(raw_json) {
        Ok(s) => parse_rfc3339(s),
        Err(_) => Err(format!(
            "field \"time\" is {raw_json}, expected an RFC 3339 string such as \
             \"2026-11-24T13:00:00.123Z\" or integer epoch milliseconds"
        )),
    }
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<TimestampMs, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "field \"time\" is \"{s}\", not an RFC 3339 timestamp ({e}); \
                 expected e.g. \"2026-11-24T13:00:00.123Z\" or epoch milliseconds"
            )
        })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as TimestampMs)
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision.
pub fn format_rfc3339(ms: TimestampMs) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Outside the representable calendar (year ±9999): print the raw number.
        Err(_) => ms.to_string(),
    }
}

fn parse_attributes(raw_json: &str) -> Result<Vec<(String, String)>, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw_json).map_err(|_| {
            "field \"attributes\" must be an object of strings, e.g. {\"site\": \"paris\"}"
                .to_string()
        })?;
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(format!(
                "attribute \"{k}\" is {other}; attribute values must be strings, numbers or booleans"
            )),
        })
        .collect()
}

/// Reads a whole JSONL text. Blank lines are skipped. Every line is checked; all errors are
/// returned (not only the first) so that a user can fix a file in one pass.
pub fn parse_jsonl(text: &str) -> Result<Vec<InputEvent>, Vec<FormatError>> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, i + 1) {
            Ok(e) => events.push(e),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(events) } else { Err(errors) }
}

/// The bucket of `time`: the last of `buckets` if it is that one, else a new one pushed (events
/// come in time order, so an earlier bucket is never needed again).
fn last_bucket<'b>(
    buckets: &'b mut Vec<Bucket>,
    (tenant, shard): (&str, u32),
    time: TimestampMs,
    bucket_ms: i64,
) -> &'b mut Bucket {
    let start = time.div_euclid(bucket_ms) * bucket_ms;
    if buckets.last().is_none_or(|b| b.start != start) {
        buckets.push(Bucket {
            tenant: tenant.to_string(),
            shard,
            start,
            end: start + bucket_ms,
            watermark: start + bucket_ms,
            events: Vec::new(),
        });
    }
    let last = buckets.len() - 1;
    &mut buckets[last]
}

/// Cuts events into buckets as `storyline run` hands them over: in the order given (the order
/// they arrive), each inserted at the latest event time seen so far (a producer whose clock
/// keeps up with its sensors), in insert-time buckets of `bucket_ms`, each bucket's events in
/// id order, its end as the watermark. An event that comes after later ones keeps its own time
/// but lands in the current bucket: a record minutes late stays minutes late. Events without
/// an id get `<id_prefix>-<line>`.
pub fn buckets_by_arrival(
    tenant: &str,
    shard: u32,
    events: Vec<InputEvent>,
    bucket_ms: i64,
    id_prefix: &str,
) -> Vec<Bucket> {
    let bucket_ms = bucket_ms.max(1);
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut clock = TimestampMs::MIN;
    for (i, e) in events.into_iter().enumerate() {
        clock = clock.max(e.time);
        let bucket = last_bucket(&mut buckets, (tenant, shard), clock, bucket_ms);
        bucket.events.push(e.into_event(|| format!("{id_prefix}-{}", i + 1), clock));
    }
    for b in &mut buckets {
        b.events.sort_by(|a, b| a.id.cmp(&b.id));
    }
    buckets
}

/// Cuts events into buckets of `bucket_ms` by event time, as a batch run over a file does.
///
/// Events without an id get `<prefix>-<line index>`. Each bucket's watermark is its end; the
/// insert time of each event is set to its bucket's end. Empty buckets between non-empty ones
/// are not produced (watermarks jump, which sessions handle like any idle period).
pub fn buckets_by_event_time(
    tenant: &str,
    shard: u32,
    events: Vec<InputEvent>,
    bucket_ms: i64,
    id_prefix: &str,
) -> Vec<Bucket> {
    let bucket_ms = bucket_ms.max(1);
    let mut events: Vec<(usize, InputEvent)> = events.into_iter().enumerate().collect();
    events.sort_by_key(|(i, e)| (e.time, *i));
    let mut buckets: Vec<Bucket> = Vec::new();
    for (i, e) in events {
        let bucket = last_bucket(&mut buckets, (tenant, shard), e.time, bucket_ms);
        let end = bucket.end;
        bucket.events.push(e.into_event(|| format!("{id_prefix}-{}", i + 1), end));
    }
    for b in &mut buckets {
        b.events.sort_by(|a, b| a.id.cmp(&b.id));
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line_is_parsed() {
        let e = parse_line(
            r#"{"id":"fw-1","source":"fw-paris-01","kind":"flow","time":"2026-11-24T13:00:00.123Z","route":"r1","attributes":{"site":"paris","n":3},"payload":{"a":[1,2]}}"#,
            1,
        )
        .unwrap();
        assert_eq!(e.id.as_deref(), Some("fw-1"));
        assert_eq!(e.time, 1_795_525_200_123);
        assert_eq!(e.route.as_deref(), Some("r1"));
        assert_eq!(e.attributes, vec![("n".into(), "3".into()), ("site".into(), "paris".into())]);
        assert_eq!(e.payload, br#"{"a":[1,2]}"#);
    }

    #[test]
    fn epoch_millis_and_offsets_are_accepted() {
        let a = parse_line(r#"{"source":"s","kind":"k","time":1795525200123}"#, 1).unwrap();
        let b =
            parse_line(r#"{"source":"s","kind":"k","time":"2026-11-24T14:00:00.123+01:00"}"#, 1)
                .unwrap();
        assert_eq!(a.time, b.time);
        assert_eq!(a.id, None);
        assert!(a.payload.is_empty());
    }

    #[test]
    fn missing_time_names_the_line_and_field() {
        let err = parse_line(r#"{"source":"s","kind":"k"}"#, 17).unwrap_err();
        assert_eq!(err.line, 17);
        assert_eq!(
            err.to_string(),
            "line 17: missing field \"time\" (one JSON object per line; see README \"Event format\")"
        );
    }

    #[test]
    fn bad_values_are_explained() {
        let cases = [
            (r#"{"source":"s","kind":"k","time":"yesterday"}"#, "not an RFC 3339 timestamp"),
            (r#"{"source":"s","kind":"k","time":true}"#, "expected an RFC 3339 string"),
            (r#"{"source":"","kind":"k","time":1}"#, "field \"source\" is empty"),
            (r#"{"source":"s","kind":"k","time":1,"colour":1}"#, "unknown field `colour`"),
            (r#"{"source":"s","kind":"k","time":1,"attributes":{"a":[1]}}"#, "attribute \"a\""),
            (r#"[1,2]"#, "invalid type"),
            (r#"{"source":"s","kind":"k","time":1"#, "EOF"),
        ];
        for (line, want) in cases {
            let err = parse_line(line, 3).unwrap_err();
            assert!(err.reason.contains(want), "{line}: got {err}");
        }
    }

    #[test]
    fn jsonl_reports_every_bad_line() {
        let text = "{\"source\":\"s\",\"kind\":\"k\",\"time\":1}\n\nnot json\n{\"kind\":\"k\",\"time\":1}\n";
        let errors = parse_jsonl(text).unwrap_err();
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn buckets_follow_event_time_and_generate_ids() {
        let text = "{\"source\":\"s\",\"kind\":\"k\",\"time\":2500}\n{\"id\":\"b\",\"source\":\"s\",\"kind\":\"k\",\"time\":100}\n{\"id\":\"a\",\"source\":\"s\",\"kind\":\"k\",\"time\":900}\n";
        let buckets = buckets_by_event_time("t", 0, parse_jsonl(text).unwrap(), 1000, "f");
        assert_eq!(buckets.len(), 2);
        assert_eq!((buckets[0].start, buckets[0].end, buckets[0].watermark), (0, 1000, 1000));
        let ids: Vec<_> = buckets[0].events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(buckets[1].events[0].id, "f-1");
        assert_eq!(buckets[1].start, 2000);
    }

    #[test]
    fn rfc3339_round_trips() {
        let ms = parse_rfc3339("2026-11-24T13:00:00.123Z").unwrap();
        assert_eq!(format_rfc3339(ms), "2026-11-24T13:00:00.123Z");
    }

    #[test]
    fn arrival_buckets_keep_the_order_given_and_a_late_event_its_own_time() {
        let text = r#"{"id":"a","source":"s","kind":"k","time":1000}
{"id":"c","source":"s","kind":"k","time":2500}
{"id":"b","source":"s","kind":"k","time":1200}
{"id":"d","source":"s","kind":"k","time":4100}"#;
        let events = parse_jsonl(text).unwrap();
        let buckets = buckets_by_arrival("t", 0, events, 1000, "e");
        // Each bucket's start, with its events' (id, event time, insert time).
        type Cut<'a> = Vec<(i64, Vec<(&'a str, i64, i64)>)>;
        let cut: Cut<'_> = buckets
            .iter()
            .map(|b| {
                let ids = b.events.iter().map(|e| (e.id.as_str(), e.event_time, e.insert_time));
                (b.start, ids.collect())
            })
            .collect();
        assert_eq!(
            cut,
            [
                (1000, vec![("a", 1000, 1000)]),
                // b arrives after c: it lands in c's bucket, in id order, with its own time.
                (2000, vec![("b", 1200, 2500), ("c", 2500, 2500)]),
                (4000, vec![("d", 4100, 4100)]),
            ]
        );
    }
}
