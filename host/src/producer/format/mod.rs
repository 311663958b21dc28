//! Input formats: what `storyline ingest --format` reads, turned into the events the producer
//! writes.
//!
//! Each format is one file and one [`Format`] variant; [`Adapter`] holds what a format must
//! remember between the lines of one input (the Zeek TSV header) and turns each line into an
//! [`InputEvent`], or into nothing for header and comment lines.
//!
//! - [`storyline`]: the project's own JSONL (README "Event format"), read by the SDK.
//! - [`zeek`]: Zeek logs, JSON or TSV, any log type.
//! - [`suricata`]: Suricata EVE JSON.
//! - [`ecs`]: Elastic Common Schema documents as Elastic Agent and Filebeat write them.
//!
//! Zeek and Suricata records become an ECS payload (the fields network rules read, see
//! `storyline_sdk::ecs::EcsEvent`, written by [`doc`]) with the sensor's own record kept whole
//! beside them under `zeek` or `suricata`, so that nothing the sensor said is lost.
//!
//! What this is not: a schema converter for every field of every log. Fields the rules do not
//! read stay where the sensor put them, in the kept record.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use storyline_sdk::format::{FormatError, InputEvent};

mod doc;
mod ecs;
mod storyline;
mod suricata;
mod zeek;

/// The input formats of `storyline ingest --format`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// storyline's own JSONL: one event per line with source, kind, time and payload.
    #[default]
    Storyline,
    /// Zeek logs, JSON or TSV (any log type: conn, dns, http, ssl, files, notice, ...).
    Zeek,
    /// Suricata EVE JSON (flow, alert, dns, http, tls, fileinfo, ...).
    Suricata,
    /// ECS JSON documents as Elastic Agent or Filebeat write them.
    Ecs,
}

impl Format {
    /// Every format, in the order the help lists them.
    pub const ALL: [Format; 4] = [Format::Storyline, Format::Zeek, Format::Suricata, Format::Ecs];

    /// The name `--format` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Storyline => "storyline",
            Format::Zeek => "zeek",
            Format::Suricata => "suricata",
            Format::Ecs => "ecs",
        }
    }

    /// What a line of this format looks like and where to read more: the end of every
    /// rejected line's message.
    pub const fn hint(self) -> &'static str {
        match self {
            // The SDK's own hint, so that the default format reads exactly as before.
            Format::Storyline => "one JSON object per line; see README \"Event format\"",
            Format::Zeek => {
                "Zeek JSON (one record per line) or TSV under #fields and #types headers; \
                 see README \"Input formats\""
            }
            Format::Suricata => {
                "Suricata EVE JSON, one record per line; see README \"Input formats\""
            }
            Format::Ecs => {
                "one ECS JSON document per line with \"@timestamp\"; see README \"Input formats\""
            }
        }
    }

    /// A rejected line as the user reads it: `line N: reason (hint)`, with this format's hint.
    /// The SDK's `FormatError` prints the storyline format's hint whatever the input was, and
    /// its fields are public API that cannot grow one; so the host adds the hint when it
    /// reports, and for the storyline format the text is exactly the SDK's.
    pub fn describe(self, error: &FormatError) -> String {
        match self {
            Format::Storyline => error.to_string(),
            other => format!("line {}: {} ({})", error.line, error.reason, other.hint()),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            format!("unknown input format \"{s}\"; the formats are {}", names.join(", "))
        })
    }
}

/// Reads the lines of one input in one format. Holds what the format carries from line to
/// line (a Zeek TSV header), so one adapter serves one input, in order.
#[derive(Debug, Default)]
pub struct Adapter {
    /// What the command line says about the whole input.
    given: Given,
    /// The format's reader and its state.
    reader: Reader,
}

/// What the command line says about an input, beside its lines.
#[derive(Debug, Default, Clone)]
struct Given {
    /// `--source`: the sensor name every event gets, whatever its record says.
    source: Option<String>,
    /// The input file's name, which names a Zeek log's type when its records do not
    /// (`conn.09:00:00-10:00:00.log` is a `conn` log).
    file_name: Option<String>,
}

/// One variant per format: adding a format is a file and a variant here and in [`Format`];
/// the compiler then lists the matches left to extend.
#[derive(Debug, Default)]
enum Reader {
    #[default]
    Storyline,
    /// Boxed: a TSV header is large beside the other variants, and there is one per input.
    Zeek(Box<zeek::Reader>),
    Suricata,
    Ecs,
}

impl Adapter {
    /// An adapter for `format`, with no `--source` and no file name.
    pub fn new(format: Format) -> Self {
        let reader = match format {
            Format::Storyline => Reader::Storyline,
            Format::Zeek => Reader::Zeek(Box::default()),
            Format::Suricata => Reader::Suricata,
            Format::Ecs => Reader::Ecs,
        };
        Adapter { given: Given::default(), reader }
    }

    /// Names the sensor of every event (`--source`). Default: what each record says (Zeek's
    /// `_node_name`, Suricata's `host`, ECS's `observer.name`...), else the format's name.
    /// The storyline format ignores it: each of its lines names its source.
    pub fn source(mut self, name: impl Into<String>) -> Self {
        self.given.source = Some(name.into());
        self
    }

    /// The name of the file the input comes from (a path is cut to its last part). Default:
    /// none. Zeek names a log's type in its records (`_path`, `#path`) or in its file name;
    /// this is the second.
    pub fn file_name(mut self, name: &str) -> Self {
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        self.given.file_name = Some(name.to_string());
        self
    }

    /// The format read.
    pub fn format(&self) -> Format {
        match self.reader {
            Reader::Storyline => Format::Storyline,
            Reader::Zeek(_) => Format::Zeek,
            Reader::Suricata => Format::Suricata,
            Reader::Ecs => Format::Ecs,
        }
    }

    /// Reads line `line_no` (1-based, used in errors) of the input: an event, or `None` for a
    /// line that is not one (blank, a header, a comment). Lines must come in order: a Zeek TSV
    /// header applies to the lines after it.
    pub fn parse(&mut self, line: &str, line_no: usize) -> Result<Option<InputEvent>, FormatError> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        let fail = |reason: String| FormatError { line: line_no, reason };
        match &mut self.reader {
            Reader::Storyline => storyline::parse(line, line_no).map(Some),
            Reader::Zeek(reader) => reader.parse(line, line_no, &self.given).map_err(fail),
            Reader::Suricata => suricata::parse(line, &self.given).map(Some).map_err(fail),
            Reader::Ecs => ecs::parse(line, &self.given).map(Some).map_err(fail),
        }
    }
}

/// Parses a line that must be one JSON object. The error says where the JSON breaks.
fn json_object(line: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".to_string()),
        // serde_json appends " at line 1 column N"; the column helps, the line is always 1.
        Err(e) => {
            Err(format!("not JSON: {}", e.to_string().replace(" at line 1 column ", " at column ")))
        }
    }
}

/// The text at `path` in a JSON object: nested (`{"event": {"kind": ..}}`, as Filebeat writes
/// ECS) or under the dotted name itself (`{"event.kind": ..}`, as ECS loggers write it).
fn text_at<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a str> {
    let found = object.get(path).or_else(|| {
        let mut parts = path.split('.');
        let mut at = object.get(parts.next()?)?;
        for part in parts {
            at = at.as_object()?.get(part)?;
        }
        Some(at)
    })?;
    found.as_str().filter(|s| !s.trim().is_empty())
}

/// Nanoseconds per millisecond.
const NS_PER_MS: i64 = 1_000_000;

/// Parses a timestamp as sensors write it, into epoch nanoseconds: `2018-03-24T17:15:20.865716Z`
/// (Zeek), `2020-02-29T00:00:04.000257+0000` (Suricata: an offset without a colon, which
/// RFC 3339 does not allow, so the SDK's parser refuses it), `...+02:00`, `...+02`. A zone is
/// required: a time without one means a different instant on every sensor. Up to nanoseconds
/// are kept (flow durations are often under a millisecond).
fn parse_timestamp_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |n, &d| d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0')))
    };
    let year = digits(0, 4)?;
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            // Digits past nanoseconds are read and dropped.
            if at - start < 9 {
                nanos = nanos * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        nanos *= 10i64.pow(9u32.saturating_sub((at - start) as u32));
    }
    let offset_secs = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2] => (two(*h1, *h2)?, 0),
                [h1, h2, m1, m2] | [h1, h2, b':', m1, m2] => (two(*h1, *h2)?, two(*m1, *m2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn two(a: u8, b: u8) -> Option<i64> {
    (a.is_ascii_digit() && b.is_ascii_digit())
        .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A timestamp field into epoch milliseconds, or a reason naming the field.
fn timestamp_ms(field: &str, text: &str, example: &str) -> Result<i64, String> {
    parse_timestamp_ns(text).map(|ns| ns.div_euclid(NS_PER_MS)).ok_or_else(|| {
        format!("field \"{field}\" is \"{text}\", not a time with a zone such as \"{example}\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_every_sensor_agree_with_rfc3339() {
        let sdk = |s: &str| storyline_sdk::format::parse_rfc3339(s).unwrap();
        let ms = |s: &str| parse_timestamp_ns(s).unwrap().div_euclid(NS_PER_MS);
        // Zeek's ISO form, Suricata's offset without a colon, offsets either side of UTC.
        assert_eq!(ms("2018-03-24T17:15:20.865716Z"), sdk("2018-03-24T17:15:20.865716Z"));
        assert_eq!(ms("2020-02-29T00:00:04.000257+0000"), sdk("2020-02-29T00:00:04.000257+00:00"));
        assert_eq!(ms("2021-06-06T15:59:46.457984+0200"), sdk("2021-06-06T15:59:46.457984+02:00"));
        assert_eq!(ms("1969-12-31T23:59:59.5-05:30"), sdk("1969-12-31T23:59:59.5-05:30"));
        assert_eq!(ms("2024-04-19T09:00:04+02"), sdk("2024-04-19T09:00:04+02:00"));
        assert_eq!(parse_timestamp_ns("1970-01-01T00:00:00.000000123Z"), Some(123));
    }

    #[test]
    fn timestamps_without_a_zone_or_with_impossible_dates_are_refused() {
        for bad in [
            "2020-02-29T00:00:04.000257",
            "2021-02-29T00:00:00Z",
            "2020-13-01T00:00:00Z",
            "2020-02-29T24:00:00Z",
            "2020-02-29T00:00:00.Z",
            "2020-02-29T00:00:00+2",
            "2020-02-29",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_timestamp_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_rejected_line_ends_with_its_formats_hint() {
        let err = FormatError { line: 4, reason: "missing field \"ts\"".into() };
        assert_eq!(Format::Storyline.describe(&err), err.to_string());
        assert_eq!(
            Format::Suricata.describe(&err),
            "line 4: missing field \"ts\" (Suricata EVE JSON, one record per line; see README \"Input formats\")"
        );
    }

    #[test]
    fn formats_are_named_as_the_command_line_takes_them() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
            assert_eq!(Adapter::new(f).format(), f);
        }
        let err = "eve".parse::<Format>().unwrap_err();
        assert_eq!(
            err,
            "unknown input format \"eve\"; the formats are storyline, zeek, suricata, ecs"
        );
    }

    #[test]
    fn blank_lines_are_not_events_in_any_format() {
        for f in Format::ALL {
            assert_eq!(Adapter::new(f).parse("  \t", 1), Ok(None), "{f}");
        }
    }

    #[test]
    fn the_file_name_is_cut_to_its_last_part() {
        let a = Adapter::new(Format::Zeek)
            .file_name("/var/log/zeek/2024-04-19/conn.09:00:00-10:00:00.log");
        assert_eq!(a.given.file_name.as_deref(), Some("conn.09:00:00-10:00:00.log"));
    }
}
