//! Zeek logs, any log type, in either of Zeek's writers' formats:
//!
//! - JSON, one record per line (`LogAscii::use_json`, or the json-streaming-logs package):
//!   flat dotted names (`"id.orig_h"`), `ts` in epoch seconds or as an ISO 8601 text, the log
//!   type in `_path` when the writer adds it.
//! - TSV (Zeek's default): header lines `#separator \x09`, `#set_separator`, `#empty_field`,
//!   `#unset_field`, `#path`, `#open`, `#fields`, `#types`, then one record per line; a file
//!   may hold several blocks, each ended by `#close`. `-` is an unset field, `(empty)` an empty
//!   one; the separator inside a value is escaped (`\x09`), and so is a backslash (`\\`).
//!
//! The event's kind is the log type (`_path`, `#path`, else the file name: `conn.log` and
//! `conn.09:00:00-10:00:00.log` are `conn`); its source is `--source`, else `_node_name` or
//! `_system_name`, else `zeek`. The payload holds the ECS fields rules read, and the whole
//! record under `zeek` (a TSV record as JSON of its typed values, unset fields left out), so
//! that `zeek.uid` links the logs of one connection.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use storyline_sdk::format::InputEvent;

use super::doc::{self, Doc, Text};
use super::{Given, json_object, timestamp_ms};

/// What the Zeek reader remembers between lines: the TSV block being read.
#[derive(Debug, Default)]
pub(super) struct Reader {
    /// Separators, log type and columns of the current TSV block.
    header: Header,
}

/// One TSV block's header.
#[derive(Debug)]
struct Header {
    /// Between values (`#separator`, a tab unless said otherwise).
    separator: String,
    /// Between the items of a set or vector (`#set_separator`).
    set_separator: String,
    /// An empty string, set or vector (`#empty_field`).
    empty_field: String,
    /// A field with no value (`#unset_field`).
    unset_field: String,
    /// The log type (`#path`).
    path: Option<String>,
    /// Column names (`#fields`); empty before the first `#fields` and after `#close`.
    fields: Vec<String>,
    /// Column types (`#types`); empty when the block has none: values are then texts.
    types: Vec<Type>,
    /// The column of each field name.
    index: HashMap<String, usize>,
    /// The line of `#fields`, named when a data line does not match it.
    fields_line: usize,
}

impl Default for Header {
    fn default() -> Self {
        // Zeek's defaults, which its writer states in every header anyway.
        Header {
            separator: "\t".into(),
            set_separator: ",".into(),
            empty_field: "(empty)".into(),
            unset_field: "-".into(),
            path: None,
            fields: Vec::new(),
            types: Vec::new(),
            index: HashMap::new(),
            fields_line: 0,
        }
    }
}

/// A column type, as far as the JSON value it becomes goes.
#[derive(Debug, Clone, PartialEq)]
enum Type {
    /// `string`, `addr`, `subnet`, `enum`, `pattern` and anything unknown.
    Text,
    /// `count`, `port`.
    Count,
    /// `int`.
    Int,
    /// `time`, `interval`, `double`: seconds for the first two.
    Real,
    /// `bool`: `T` or `F`.
    Bool,
    /// `set[T]`, `vector[T]`.
    List(Box<Type>),
}

impl Type {
    fn of(name: &str) -> Type {
        let inner = name
            .strip_prefix("set[")
            .or_else(|| name.strip_prefix("vector["))
            .and_then(|rest| rest.strip_suffix(']'));
        if let Some(inner) = inner {
            return Type::List(Box::new(Type::of(inner)));
        }
        match name {
            "count" | "port" => Type::Count,
            "int" => Type::Int,
            "time" | "interval" | "double" => Type::Real,
            "bool" => Type::Bool,
            _ => Type::Text,
        }
    }
}

impl Reader {
    /// Reads one line: a header line gives nothing, a record gives an event.
    pub(super) fn parse(
        &mut self,
        line: &str,
        line_no: usize,
        given: &Given,
    ) -> Result<Option<InputEvent>, String> {
        if line.starts_with('#') {
            self.directive(line, line_no)?;
            return Ok(None);
        }
        if line.trim_start().starts_with('{') {
            let record = json_object(line)?;
            let line = line.trim();
            return event(&Record::Json(&record), None, given, |out| {
                // Already checked to be one JSON object: kept as it came.
                out.extend_from_slice(line.as_bytes());
                Ok(())
            })
            .map(Some);
        }
        self.tsv(line, given).map(Some)
    }

    /// A TSV header line.
    fn directive(&mut self, line: &str, line_no: usize) -> Result<(), String> {
        if let Some(rest) = line.strip_prefix("#separator") {
            // Written before any separator is known: `#separator`, a space, the escaped
            // separator. It starts a new block.
            let separator = unescape(rest.strip_prefix([' ', '\t']).unwrap_or(rest)).into_owned();
            if separator.is_empty() {
                return Err(
                    "#separator names no separator (Zeek writes \"#separator \\x09\")".into()
                );
            }
            self.header = Header { separator, ..Header::default() };
            return Ok(());
        }
        let h = &mut self.header;
        let (name, value) = line.split_once(h.separator.as_str()).unwrap_or((line, ""));
        match name {
            "#set_separator" => h.set_separator = unescape(value).into_owned(),
            "#empty_field" => h.empty_field = unescape(value).into_owned(),
            "#unset_field" => h.unset_field = unescape(value).into_owned(),
            "#path" => h.path = Some(value).filter(|p| !p.is_empty()).map(str::to_string),
            "#fields" => {
                h.fields = value.split(h.separator.as_str()).map(str::to_string).collect();
                h.index = h.fields.iter().enumerate().map(|(i, f)| (f.clone(), i)).collect();
                h.types.clear();
                h.fields_line = line_no;
            }
            "#types" => {
                let types: Vec<Type> = value.split(h.separator.as_str()).map(Type::of).collect();
                if types.len() != h.fields.len() {
                    h.types.clear();
                    return Err(format!(
                        "#types names {} types for the {} fields of #fields (line {}); the \
                         values of this block are read as texts",
                        types.len(),
                        h.fields.len(),
                        h.fields_line
                    ));
                }
                h.types = types;
            }
            "#close" => {
                h.fields.clear();
                h.index.clear();
                h.types.clear();
                h.path = None;
            }
            // `#open` and comments say nothing about the records.
            _ => {}
        }
        Ok(())
    }

    /// A TSV record under the current header.
    fn tsv(&self, line: &str, given: &Given) -> Result<InputEvent, String> {
        let h = &self.header;
        if h.fields.is_empty() {
            return Err(
                "a Zeek TSV record with no #fields header before it (a TSV log starts with its \
                 #separator, #fields and #types lines; a JSON log has one {...} record per line)"
                    .into(),
            );
        }
        let columns: Vec<&str> = line.split(h.separator.as_str()).collect();
        if columns.len() != h.fields.len() {
            return Err(format!(
                "{} values where the #fields header (line {}) names {}",
                columns.len(),
                h.fields_line,
                h.fields.len()
            ));
        }
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, text)| h.value(i, text))
            .collect::<Result<Vec<_>, _>>()?;
        event(&Record::Tsv(h, &values), h.path.as_deref(), given, |out| {
            serde_json::to_writer(out, &TsvRecord(h, &values))
        })
    }
}

impl Header {
    /// The typed value of column `i`; `None` when unset.
    fn value(&self, i: usize, text: &str) -> Result<Option<Value>, String> {
        if text == self.unset_field {
            return Ok(None);
        }
        let ty = self.types.get(i).unwrap_or(&Type::Text);
        let value = match ty {
            Type::List(_) if text == self.empty_field => Ok(Value::Array(Vec::new())),
            Type::List(item) => text
                .split(self.set_separator.as_str())
                .map(|t| if t == self.unset_field { Ok(Value::Null) } else { scalar(t, item) })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Type::Text if text == self.empty_field => Ok(Value::String(String::new())),
            _ => scalar(text, ty),
        };
        value.map(Some).map_err(|expected| {
            format!("field \"{}\" is \"{text}\", expected {expected}", self.fields[i])
        })
    }
}

/// A single value of type `ty`, or what was expected.
fn scalar(text: &str, ty: &Type) -> Result<Value, &'static str> {
    match ty {
        Type::Count => text.parse::<u64>().map(Value::from).map_err(|_| "a count (a whole number)"),
        Type::Int => text.parse::<i64>().map(Value::from).map_err(|_| "an integer"),
        Type::Real => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::from(f)),
            _ => Err("a number"),
        },
        Type::Bool => match text {
            "T" => Ok(Value::Bool(true)),
            "F" => Ok(Value::Bool(false)),
            _ => Err("T or F"),
        },
        // A container inside a container is not something Zeek logs; kept as its text.
        Type::Text | Type::List(_) => Ok(Value::String(unescape(text).into_owned())),
    }
}

/// Undoes Zeek's escapes: `\xHH` is the byte HH, `\\` a backslash. Bytes that are not UTF-8
/// (a binary payload's) become U+FFFD.
fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |at: usize| b.get(at).and_then(|&c| (c as char).to_digit(16));
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b'\\', Some(b'x')) if hex(i + 2).is_some() && hex(i + 3).is_some() => {
                let (hi, lo) = (hex(i + 2).unwrap_or(0), hex(i + 3).unwrap_or(0));
                out.push((hi * 16 + lo) as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A Zeek record, JSON or TSV, read by field name.
enum Record<'a> {
    Json(&'a Map<String, Value>),
    Tsv(&'a Header, &'a [Option<Value>]),
}

impl<'a> Record<'a> {
    /// The value of `name`, when set.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let value = match *self {
            Record::Json(map) => map.get(name),
            Record::Tsv(header, values) => values.get(*header.index.get(name)?)?.as_ref(),
        };
        value.filter(|v| !v.is_null())
    }

    /// A non-empty text.
    fn text(&self, name: &str) -> Option<&'a str> {
        self.get(name)?.as_str().filter(|s| !s.is_empty())
    }

    /// A number, or a text that is one.
    fn number(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A port (or any 16-bit number), or a text that is one.
    fn port(&self, name: &str) -> Option<u16> {
        match self.get(name)? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The non-empty texts of a set or vector (or of a single text).
    fn texts(&self, name: &str) -> Vec<&'a str> {
        match self.get(name) {
            Some(Value::Array(items)) => {
                items.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).collect()
            }
            Some(Value::String(s)) if !s.is_empty() => vec![s.as_str()],
            _ => Vec::new(),
        }
    }
}

/// A TSV record as a JSON object of its set fields, in column order.
struct TsvRecord<'a>(&'a Header, &'a [Option<Value>]);

impl Serialize for TsvRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let TsvRecord(header, values) = *self;
        let mut map = serializer.serialize_map(Some(values.iter().flatten().count()))?;
        for (name, value) in header.fields.iter().zip(values) {
            if let Some(value) = value {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// The event of one record. `path` is the TSV header's log type; `write_record` writes the
/// record into the payload.
fn event(
    record: &Record<'_>,
    path: Option<&str>,
    given: &Given,
    write_record: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> Result<InputEvent, String> {
    let from_file = || given.file_name.as_deref().and_then(|f| f.split('.').next());
    const NO_KIND: &str = "no log type: the record has no \"_path\" (nor a #path header) and \
                           the input's file name does not give one (read the log from its \
                           file, e.g. conn.log, or have Zeek write _path)";
    let kind = record.text("_path").or(path).or_else(from_file).filter(|k| !k.is_empty());
    let kind = kind.ok_or(NO_KIND)?;
    let time = time_ms(record)?;
    let source = match &given.source {
        Some(source) => source.clone(),
        None => record
            .text("_node_name")
            .or_else(|| record.text("_system_name"))
            .unwrap_or("zeek")
            .into(),
    };
    let payload = doc::payload(&document(record, kind, &source), "zeek", write_record)
        .map_err(|e| format!("cannot write the payload: {e}"))?;
    Ok(InputEvent {
        id: None,
        source,
        kind: kind.to_string(),
        time,
        route: None,
        attributes: Vec::new(),
        payload,
    })
}

/// `ts`: epoch seconds (a number, or a text in a TSV block without types) or ISO 8601.
fn time_ms(record: &Record<'_>) -> Result<i64, String> {
    const EXPECTED: &str = "epoch seconds such as 1521911720.865716 or an ISO 8601 time such as \
                            \"2018-03-24T17:15:20.865716Z\"";
    let secs = match record.get("ts") {
        None => return Err("missing field \"ts\"".into()),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => match s.parse::<f64>() {
            Ok(secs) => Some(secs),
            Err(_) => return timestamp_ms("ts", s, "2018-03-24T17:15:20.865716Z"),
        },
        Some(other) => return Err(format!("field \"ts\" is {other}, expected {EXPECTED}")),
    };
    secs.and_then(secs_to_ms)
        .ok_or_else(|| format!("field \"ts\" is out of range, expected {EXPECTED}"))
}

/// Epoch seconds to milliseconds, through whole microseconds: Zeek writes six decimals, and
/// `1713517193.968 * 1000` is `1713517193967.9998` in floating point.
fn secs_to_ms(secs: f64) -> Option<i64> {
    // 10^11 s (3,000 years) keeps the microseconds well inside i64.
    (secs.is_finite() && secs.abs() < 1e11).then(|| ((secs * 1e6).round() as i64).div_euclid(1000))
}

/// Seconds (a duration) to nanoseconds.
fn secs_to_ns(secs: f64) -> Option<i64> {
    (secs.is_finite() && secs.abs() < 9e9).then(|| (secs * 1e9).round() as i64)
}

/// The ECS fields of a record of log type `kind`, seen by `sensor`.
fn document<'a>(record: &Record<'a>, kind: &str, sensor: &'a str) -> Doc<'a> {
    let mut doc = Doc {
        event: Some(doc::Event {
            kind: if kind == "notice" { "alert" } else { "event" },
            module: "zeek",
            dataset: format!("zeek.{kind}"),
            duration: record.number("duration").and_then(secs_to_ns),
            severity: None,
        }),
        observer: Some(doc::Observer { name: Text::Borrowed(sensor), product: "zeek" }),
        ..Doc::default()
    };
    // Who talked to whom: the connection's tuple; else a notice's `src`, `dst` and `p`; else a
    // file's first sender and receiver.
    let endpoint = |ip: Option<&'a str>, port| ip.map(|ip| doc::Endpoint { ip: ip.into(), port });
    let (source, destination) =
        if record.get("id.orig_h").is_some() || record.get("id.resp_h").is_some() {
            (
                endpoint(record.text("id.orig_h"), record.port("id.orig_p")),
                endpoint(record.text("id.resp_h"), record.port("id.resp_p")),
            )
        } else if record.get("src").is_some() || record.get("dst").is_some() {
            (endpoint(record.text("src"), None), endpoint(record.text("dst"), record.port("p")))
        } else {
            (
                endpoint(record.texts("tx_hosts").first().copied(), None),
                endpoint(record.texts("rx_hosts").first().copied(), None),
            )
        };
    let ipv6 = source.as_ref().is_some_and(|s| s.ip.contains(':'));
    doc.source = source;
    doc.destination = destination;

    let transport = record.text("proto").map(|p| match p {
        // Zeek says `icmp` for ICMPv6 too; ECS and Community ID tell them apart.
        "icmp" if ipv6 => Text::Borrowed("ipv6-icmp"),
        p if p.bytes().any(|b| b.is_ascii_uppercase()) => Text::Owned(p.to_ascii_lowercase()),
        p => Text::Borrowed(p),
    });
    let protocol = match kind {
        "dns" => Some("dns"),
        "http" => Some("http"),
        "ssl" => Some("tls"),
        _ => None,
    };
    let community_id = record.text("community_id");
    if transport.is_some() || protocol.is_some() || community_id.is_some() {
        doc.network = Some(doc::Network {
            transport,
            protocol: protocol.map(Text::Borrowed),
            community_id: community_id.map(Text::Borrowed),
        });
    }

    let (query, qtype, answers) =
        (record.text("query"), record.text("qtype_name"), record.texts("answers"));
    if query.is_some() || !answers.is_empty() {
        let mut dns = doc::Dns {
            question: (query.is_some() || qtype.is_some()).then(|| doc::DnsQuestion {
                name: query.map(Text::Borrowed),
                kind: qtype.map(Text::Borrowed),
            }),
            response_code: record.text("rcode_name").map(Text::Borrowed),
            ..doc::Dns::default()
        };
        for answer in answers {
            dns.answer(answer.into(), None, None);
        }
        doc.dns = Some(dns);
    }

    // `method`, `uri` and `status_code` mean HTTP only in the http log (sip has them too).
    if kind == "http" {
        let host = record.text("host");
        doc.url = match record.text("uri") {
            Some(uri) => Some(doc::Url::of_request(host, record.port("id.resp_p"), uri)),
            None => host.map(|h| doc::Url { domain: Some(h.into()), ..doc::Url::default() }),
        };
        let request = record.text("method").map(|m| doc::HttpRequest { method: m.into() });
        let response = record.port("status_code").map(|s| doc::HttpResponse { status_code: s });
        if request.is_some() || response.is_some() {
            doc.http = Some(doc::Http { request, response });
        }
    }
    doc.user_agent = record.text("user_agent").map(|ua| doc::UserAgent { original: ua.into() });
    doc.tls = record
        .text("server_name")
        .map(|sni| doc::Tls { client: doc::TlsClient { server_name: sni.into() } });

    let (name, mime_type) = (record.text("filename"), record.text("mime_type"));
    if name.is_some() || mime_type.is_some() {
        doc.file = Some(doc::File {
            name: name.map(Text::Borrowed),
            mime_type: mime_type.map(Text::Borrowed),
            size: record.number("total_bytes").filter(|n| *n >= 0.0).map(|n| n as u64),
        });
    }
    doc.user = user(record, kind);
    match kind {
        "notice" => {
            doc.rule = record
                .text("note")
                .map(|note| doc::Rule { name: note.into(), ..doc::Rule::default() });
            doc.message = record.text("msg").map(Text::Borrowed);
        }
        "weird" => doc.message = record.text("name").map(Text::Borrowed),
        _ => {}
    }
    doc
}

/// The user a record names, where the log makes it plain.
fn user<'a>(record: &Record<'a>, kind: &str) -> Option<doc::User<'a>> {
    let named = |name: &'a str, domain: Option<&'a str>| doc::User {
        name: name.into(),
        domain: domain.filter(|d| !d.is_empty()).map(Text::Borrowed),
    };
    let by_log = match kind {
        // Zeek writes the client principal as `name/realm` (an empty name when unknown).
        "kerberos" => record.text("client").and_then(|client| {
            let (name, realm) = client.rsplit_once('/').unwrap_or((client, ""));
            (!name.is_empty()).then(|| named(name, Some(realm)))
        }),
        // The `mstshash` cookie a client sends is its user name.
        "rdp" => record.text("cookie").map(|c| named(c, None)),
        // A bind's object is the account that binds.
        "ldap" if record.text("opcode").is_some_and(|o| o.starts_with("bind")) => {
            record.text("object").map(|o| named(o, None))
        }
        _ => None,
    };
    // ntlm, smb_cmd, http (basic authentication), radius: `username`; ftp, socks: `user`.
    by_log
        .or_else(|| record.text("username").map(|u| named(u, record.text("domainname"))))
        .or_else(|| record.text("user").map(|u| named(u, None)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Adapter, Format};

    /// The payload as JSON.
    fn payload(event: &storyline_sdk::format::InputEvent) -> serde_json::Value {
        serde_json::from_slice(&event.payload).unwrap()
    }

    /// A conn.log block as Zeek's TSV writer starts it (addresses from documentation ranges).
    const CONN_HEADER: &str = "#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#open\t2026-11-24-13-00-00
#fields\t_node_name\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\tlocal_orig\tlocal_resp\tmissed_bytes\thistory\torig_pkts\torig_ip_bytes\tresp_pkts\tresp_ip_bytes\ttunnel_parents
#types\tstring\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tbool\tbool\tcount\tstring\tcount\tcount\tcount\tcount\tset[string]";

    /// Reads `text` line by line; every line's result.
    fn read(
        adapter: &mut Adapter,
        text: &str,
    ) -> Vec<Result<Option<storyline_sdk::format::InputEvent>, storyline_sdk::format::FormatError>>
    {
        text.lines().enumerate().map(|(i, line)| adapter.parse(line, i + 1)).collect()
    }

    #[test]
    fn a_tsv_conn_block_gives_one_event_per_record_and_nothing_for_its_header() {
        let text = format!(
            "{CONN_HEADER}\n\
             worker-1\t1795525200.123456\tCa1b2c3d4e5f6g7h8\t192.0.2.10\t51514\t198.51.100.20\t443\ttcp\tssl\t4.552763\t1288\t1850\tSF\tT\tF\t0\tShADadFf\t14\t2024\t15\t2638\t-\n\
             worker-1\t1795525201.5\tCz9y8x7w6v5u4t3s2\t203.0.113.5\t53516\t192.0.2.10\t5098\ttcp\t-\t-\t-\t-\tREJ\tF\tT\t0\tSrR\t2\t80\t1\t40\t(empty)\n\
             #close\t2026-11-24-14-00-00"
        );
        let results = read(&mut Adapter::new(Format::Zeek), &text);
        assert_eq!(results.len(), 11);
        assert!(results[..8].iter().all(|r| r == &Ok(None)), "{results:?}");
        assert_eq!(results[10], Ok(None), "#close");
        let first = results[8].clone().unwrap().unwrap();
        assert_eq!((first.kind.as_str(), first.source.as_str()), ("conn", "worker-1"));
        assert_eq!(first.time, 1_795_525_200_123);
        assert_eq!(first.id, None);
        let p = payload(&first);
        assert_eq!(p["source"], json!({"ip": "192.0.2.10", "port": 51514}));
        assert_eq!(p["destination"], json!({"ip": "198.51.100.20", "port": 443}));
        assert_eq!(p["network"], json!({"transport": "tcp"}));
        assert_eq!(p["event"]["duration"], json!(4_552_763_000i64));
        assert_eq!(p["event"]["dataset"], json!("zeek.conn"));
        // The whole record, typed; unset fields left out.
        assert_eq!(p["zeek"]["uid"], json!("Ca1b2c3d4e5f6g7h8"));
        assert_eq!(p["zeek"]["ts"], json!(1795525200.123456));
        assert_eq!(p["zeek"]["orig_bytes"], json!(1288));
        assert_eq!(p["zeek"]["local_orig"], json!(true));
        assert_eq!(p["zeek"].as_object().unwrap().len(), 21, "tunnel_parents is unset");
        let second = payload(&results[9].clone().unwrap().unwrap());
        assert_eq!(second["zeek"]["tunnel_parents"], json!([]));
        assert_eq!(second["zeek"].get("duration"), None);
        assert_eq!(second["event"].get("duration"), None);
    }

    #[test]
    fn a_tsv_record_with_the_wrong_number_of_values_is_rejected_with_its_line() {
        let text = format!(
            "{CONN_HEADER}\n\
             worker-1\t1795525200.123456\tCa1b2c3d4e5f6g7h8\t192.0.2.10\t51514\t198.51.100.20\t443\ttcp"
        );
        let results = read(&mut Adapter::new(Format::Zeek), &text);
        let err = results[8].clone().unwrap_err();
        assert_eq!(err.line, 9);
        assert_eq!(err.reason, "8 values where the #fields header (line 7) names 22");
        assert_eq!(
            Format::Zeek.describe(&err),
            "line 9: 8 values where the #fields header (line 7) names 22 (Zeek JSON (one record \
             per line) or TSV under #fields and #types headers; see README \"Input formats\")"
        );
    }

    #[test]
    fn a_tsv_value_of_the_wrong_type_names_its_field() {
        let text = format!(
            "{CONN_HEADER}\n\
             worker-1\t1795525200.1\tC1\t192.0.2.10\thttps\t198.51.100.20\t443\ttcp\t-\t-\t-\t-\tSF\tT\tF\t0\tS\t1\t1\t1\t1\t-"
        );
        let err = read(&mut Adapter::new(Format::Zeek), &text)[8].clone().unwrap_err();
        assert_eq!(
            err.reason,
            "field \"id.orig_p\" is \"https\", expected a count (a whole number)"
        );
    }

    #[test]
    fn a_tsv_file_may_hold_several_blocks_and_records_after_close_are_refused() {
        let text = "#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tdns
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tquery\tqtype_name\trcode_name\tanswers\tTTLs
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tstring\tstring\tvector[string]\tvector[interval]
1795525200.000100\tCd1\t192.0.2.10\t35159\t192.0.2.53\t53\tudp\tshop.example\tA\tNOERROR\tcdn.shop.example,203.0.113.80,2001:db8::80\t60.000000,60.000000,60.000000
#close\t2026-11-24-14-00-00
#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tweird
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tname\taddl\tnotice\tpeer\tsource
#types\ttime\tstring\taddr\tport\taddr\tport\tstring\tstring\tbool\tstring\tstring
1795525201.000000\tCw1\t203.0.113.9\t23254\t192.0.2.10\t80\twindow_recision\t-\tF\tworker-1\t-
#close\t2026-11-24-14-00-00
1795525202.000000\tCw2\t203.0.113.9\t23254\t192.0.2.10\t80\twindow_recision\t-\tF\tworker-1\t-";
        let results = read(&mut Adapter::new(Format::Zeek), text);
        let dns = results[7].clone().unwrap().unwrap();
        assert_eq!((dns.kind.as_str(), dns.source.as_str()), ("dns", "zeek"));
        let p = payload(&dns);
        assert_eq!(p["dns"]["question"], json!({"name": "shop.example", "type": "A"}));
        assert_eq!(
            p["dns"]["answers"],
            json!([{"data": "cdn.shop.example"}, {"data": "203.0.113.80", "type": "A"}, {"data": "2001:db8::80", "type": "AAAA"}])
        );
        assert_eq!(p["dns"]["resolved_ip"], json!(["203.0.113.80", "2001:db8::80"]));
        assert_eq!(p["zeek"]["TTLs"], json!([60.0, 60.0, 60.0]));
        let weird = results[16].clone().unwrap().unwrap();
        assert_eq!(weird.kind, "weird");
        assert_eq!(payload(&weird)["message"], json!("window_recision"));
        let after_close = results[18].clone().unwrap_err();
        assert_eq!(after_close.line, 19);
        assert!(
            after_close.reason.starts_with("a Zeek TSV record with no #fields header"),
            "{after_close}"
        );
    }

    #[test]
    fn tsv_escapes_are_undone() {
        let text = "#separator \\x09
#path\tsmb_mapping
#fields\tts\tpath\tnote
#types\ttime\tstring\tstring
1795525200.5\t\\\\\\\\FILES\\\\ADMIN$\ttab\\x09inside";
        let results = read(&mut Adapter::new(Format::Zeek), text);
        let p = payload(&results[4].clone().unwrap().unwrap());
        assert_eq!(p["zeek"]["path"], json!("\\\\FILES\\ADMIN$"));
        assert_eq!(p["zeek"]["note"], json!("tab\tinside"));
    }

    #[test]
    fn json_dns_records_take_an_iso_or_an_epoch_ts() {
        let iso = r#"{"_path":"dns","_write_ts":"2026-11-24T13:00:00.000900Z","ts":"2026-11-24T13:00:00.000716Z","uid":"CqKs53mF3det3eDV9","id.orig_h":"10.47.1.100","id.orig_p":41772,"id.resp_h":"10.0.0.53","id.resp_p":53,"proto":"udp","trans_id":36329,"rtt":0.00087,"query":"intranet.example","qclass":1,"qclass_name":"C_INTERNET","qtype":1,"qtype_name":"A","rcode":0,"rcode_name":"NOERROR","AA":false,"TC":false,"RD":true,"RA":true,"Z":0,"answers":["intranet.cdn.example","192.0.2.16"],"TTLs":[2230.0,41830.0],"rejected":false}"#;
        let epoch = r#"{"ts":1795525200.000716,"uid":"CqKs53mF3det3eDV9","id.orig_h":"10.47.1.100","id.orig_p":41772,"id.resp_h":"10.0.0.53","id.resp_p":53,"proto":"udp","query":"intranet.example","qtype_name":"A","answers":["192.0.2.16"]}"#;
        let mut adapter = Adapter::new(Format::Zeek).file_name("logs/dns.09:00:00-10:00:00.log");
        let a = adapter.parse(iso, 1).unwrap().unwrap();
        let b = adapter.parse(epoch, 2).unwrap().unwrap();
        assert_eq!((a.time, b.time), (1_795_525_200_000, 1_795_525_200_000));
        assert_eq!((a.kind.as_str(), b.kind.as_str()), ("dns", "dns"), "_path, else the file name");
        let p = payload(&a);
        assert_eq!(p["dns"]["question"]["name"], json!("intranet.example"));
        assert_eq!(p["dns"]["resolved_ip"], json!(["192.0.2.16"]));
        assert_eq!(p["network"], json!({"transport": "udp", "protocol": "dns"}));
        // The record is kept as it came, byte for byte.
        let text = String::from_utf8(a.payload.clone()).unwrap();
        assert!(text.ends_with(&format!(",\"zeek\":{iso}}}")), "{text}");
        let ts = r#"{"ts":"yesterday","query":"x.example"}"#;
        let err = adapter.parse(ts, 3).unwrap_err();
        assert_eq!(
            err.reason,
            "field \"ts\" is \"yesterday\", not a time with a zone such as \"2018-03-24T17:15:20.865716Z\""
        );
    }

    #[test]
    fn a_json_record_with_no_log_type_anywhere_is_refused() {
        let line = r#"{"ts":1795525200.5,"uid":"C1"}"#;
        let err = Adapter::new(Format::Zeek).parse(line, 5).unwrap_err();
        assert_eq!(err.line, 5);
        assert!(err.reason.starts_with("no log type: the record has no \"_path\""), "{err}");
        let missing_ts =
            Adapter::new(Format::Zeek).file_name("conn.log").parse(r#"{"uid":"C1"}"#, 6);
        assert_eq!(missing_ts.unwrap_err().reason, "missing field \"ts\"");
        let not_json = Adapter::new(Format::Zeek).parse(r#"{"ts":1,"#, 7).unwrap_err();
        assert!(not_json.reason.starts_with("not JSON: EOF while parsing"), "{not_json}");
    }

    #[test]
    fn a_files_record_without_a_tuple_takes_its_first_sender_and_receiver() {
        let line = r#"{"_path":"files","ts":1795525232.775084,"fuid":"FwSVkw2xz3avAxsa","tx_hosts":["198.51.100.80","198.51.100.81"],"rx_hosts":["192.0.2.10"],"conn_uids":["CyV9iC1qx2Uurfucq8"],"source":"HTTP","depth":0,"analyzers":[],"mime_type":"application/pdf","filename":"invoice.pdf","duration":0.0,"is_orig":false,"seen_bytes":612,"total_bytes":612}"#;
        let e = Adapter::new(Format::Zeek).parse(line, 1).unwrap().unwrap();
        let p = payload(&e);
        assert_eq!(p["source"], json!({"ip": "198.51.100.80"}));
        assert_eq!(p["destination"], json!({"ip": "192.0.2.10"}));
        assert_eq!(
            p["file"],
            json!({"name": "invoice.pdf", "mime_type": "application/pdf", "size": 612})
        );
        assert_eq!(p["zeek"]["fuid"], json!("FwSVkw2xz3avAxsa"));
    }

    #[test]
    fn a_notice_is_an_alert_with_its_rule_and_message() {
        let line = r#"{"_path":"notice","ts":"2026-11-24T13:00:00.629574Z","uid":"CmC9kY1X0u9nP78KZc","id.orig_h":"10.164.94.120","id.orig_p":39611,"id.resp_h":"10.47.3.200","id.resp_p":443,"proto":"tcp","note":"SSL::Invalid_Server_Cert","msg":"SSL certificate validation failed with (unable to get local issuer certificate)","src":"10.164.94.120","dst":"10.47.3.200","p":443,"actions":["Notice::ACTION_LOG"],"suppress_for":3600.0}"#;
        let p = payload(&Adapter::new(Format::Zeek).parse(line, 1).unwrap().unwrap());
        assert_eq!(p["event"]["kind"], json!("alert"));
        assert_eq!(p["rule"], json!({"name": "SSL::Invalid_Server_Cert"}));
        assert_eq!(
            p["message"],
            json!(
                "SSL certificate validation failed with (unable to get local issuer certificate)"
            )
        );
        assert_eq!(p["source"], json!({"ip": "10.164.94.120", "port": 39611}));
        // Without a connection, the notice's own src, dst and p.
        let bare = r#"{"_path":"notice","ts":1795525200.0,"note":"Scan::Port_Scan","msg":"scan","src":"203.0.113.9","dst":"192.0.2.10","p":22}"#;
        let p = payload(&Adapter::new(Format::Zeek).parse(bare, 1).unwrap().unwrap());
        assert_eq!(
            (&p["source"], &p["destination"]),
            (&json!({"ip": "203.0.113.9"}), &json!({"ip": "192.0.2.10", "port": 22}))
        );
    }

    #[test]
    fn http_records_give_the_url_method_status_and_agent() {
        let line = r#"{"_path":"http","ts":1795525232.774856,"uid":"CyV9iC1qx2Uurfucq8","id.orig_h":"192.0.2.10","id.orig_p":15696,"id.resp_h":"198.51.100.80","id.resp_p":8080,"trans_depth":1,"method":"GET","host":"shop.example","uri":"/cart?item=7","version":"1.1","user_agent":"Mozilla/5.0","request_body_len":0,"response_body_len":612,"status_code":200,"status_msg":"OK","username":"alice"}"#;
        let p = payload(&Adapter::new(Format::Zeek).parse(line, 1).unwrap().unwrap());
        assert_eq!(
            p["url"],
            json!({"original": "/cart?item=7", "full": "http://shop.example:8080/cart?item=7", "domain": "shop.example", "path": "/cart", "query": "item=7"})
        );
        assert_eq!(
            p["http"],
            json!({"request": {"method": "GET"}, "response": {"status_code": 200}})
        );
        assert_eq!(p["user_agent"], json!({"original": "Mozilla/5.0"}));
        assert_eq!(p["user"], json!({"name": "alice"}));
    }

    #[test]
    fn users_are_read_where_the_log_makes_them_plain() {
        let user = |line: &str| {
            payload(&Adapter::new(Format::Zeek).parse(line, 1).unwrap().unwrap())["user"].clone()
        };
        assert_eq!(
            user(r#"{"_path":"kerberos","ts":1.0,"client":"svc-backup/CORP.EXAMPLE"}"#),
            json!({"name": "svc-backup", "domain": "CORP.EXAMPLE"})
        );
        assert_eq!(user(r#"{"_path":"kerberos","ts":1.0,"client":"/CORP.EXAMPLE"}"#), json!(null));
        assert_eq!(
            user(r#"{"_path":"ntlm","ts":1.0,"username":"bob","domainname":"CORP"}"#),
            json!({"name": "bob", "domain": "CORP"})
        );
        assert_eq!(user(r#"{"_path":"rdp","ts":1.0,"cookie":"admin"}"#), json!({"name": "admin"}));
        assert_eq!(user(r#"{"_path":"ssh","ts":1.0,"client":"SSH-2.0-OpenSSH_9.6"}"#), json!(null));
    }

    #[test]
    fn the_sensor_is_the_source_option_else_the_node_name() {
        let line = r#"{"_path":"ssl","_node_name":"worker-eth0-1","ts":1.5,"id.orig_h":"2001:db8::10","id.orig_p":40902,"id.resp_h":"2001:db8::443","id.resp_p":443,"server_name":"repo.example"}"#;
        let own = Adapter::new(Format::Zeek).parse(line, 1).unwrap().unwrap();
        assert_eq!(own.source, "worker-eth0-1");
        let p = payload(&own);
        assert_eq!(p["tls"], json!({"client": {"server_name": "repo.example"}}));
        assert_eq!(p["observer"], json!({"name": "worker-eth0-1", "product": "zeek"}));
        let given = Adapter::new(Format::Zeek).source("dmz-zeek").parse(line, 1).unwrap().unwrap();
        assert_eq!(given.source, "dmz-zeek");
        let icmp = r#"{"_path":"conn","ts":1.0,"id.orig_h":"2001:db8::10","id.orig_p":128,"id.resp_h":"2001:db8::1","id.resp_p":129,"proto":"icmp"}"#;
        let p = payload(&Adapter::new(Format::Zeek).parse(icmp, 1).unwrap().unwrap());
        assert_eq!(p["network"]["transport"], json!("ipv6-icmp"));
    }
}
