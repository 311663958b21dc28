//! Suricata EVE JSON: one record per line, its type in `event_type`.
//!
//! The event's kind is `event_type`; its time is `timestamp`, except for `flow` and `netflow`
//! records, which Suricata stamps when it flushes the flow (up to minutes after the flow):
//! their time is the flow's own `start`. Timestamps look like
//! `2020-02-29T00:00:04.000257+0000` (an offset without a colon) or with one. The source is
//! `--source`, else the sensor's name in `host`, else `suricata`. The payload holds the ECS
//! fields rules read and the whole record under `suricata`, as it came (so `suricata.flow_id`
//! links the records of one flow).

use serde_json::{Map, Value};
use storyline_sdk::format::InputEvent;

use super::doc::{self, Doc, Text};
use super::{Given, json_object, parse_timestamp_ns, timestamp_ms};

/// A timestamp as Suricata writes it, for error messages.
const EXAMPLE: &str = "2020-02-29T00:00:04.000257+0000";

/// Reads one EVE record.
pub(super) fn parse(line: &str, given: &Given) -> Result<InputEvent, String> {
    let record = json_object(line)?;
    let kind = match record.get("event_type") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.as_str(),
        None => {
            return Err("EVE line without event_type (every EVE record names its type: flow, \
                        alert, dns, http, tls, fileinfo...)"
                .into());
        }
        Some(other) => {
            return Err(format!(
                "field \"event_type\" is {other}, expected a type such as \"flow\" or \"alert\""
            ));
        }
    };
    let time = match kind {
        "flow" | "netflow" => match record.get(kind).and_then(|f| f.get("start")) {
            Some(Value::String(start)) => timestamp_ms(&format!("{kind}.start"), start, EXAMPLE)?,
            _ => {
                return Err(format!(
                    "a {kind} record without {kind}.start (its timestamp is when Suricata \
                     flushed the flow, not when the flow happened)"
                ));
            }
        },
        _ => match record.get("timestamp") {
            Some(Value::String(ts)) => timestamp_ms("timestamp", ts, EXAMPLE)?,
            None => return Err("missing field \"timestamp\"".into()),
            Some(other) => {
                return Err(format!(
                    "field \"timestamp\" is {other}, expected a text such as \"{EXAMPLE}\""
                ));
            }
        },
    };
    let source = match &given.source {
        Some(source) => source.clone(),
        None => text(&record, "host").unwrap_or("suricata").to_string(),
    };
    let line = line.trim();
    let payload = doc::payload(&document(&record, kind, &source), "suricata", |out| {
        // Already checked to be one JSON object: kept as it came.
        out.extend_from_slice(line.as_bytes());
        Ok(())
    })
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

/// A non-empty text member of `object`.
fn text<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object.get(name)?.as_str().filter(|s| !s.is_empty())
}

/// A 16-bit number member of `object` (ports, status codes), or a text that is one.
fn number_u16(object: &Map<String, Value>, name: &str) -> Option<u16> {
    match object.get(name)? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The ECS fields of an EVE record of type `kind`, seen by `sensor`.
fn document<'a>(record: &'a Map<String, Value>, kind: &str, sensor: &'a str) -> Doc<'a> {
    let object = |name: &str| record.get(name).and_then(Value::as_object);
    // A flow's length, from its own start and end (netflow records keep them under `netflow`).
    let flow = object(if kind == "netflow" { "netflow" } else { "flow" });
    let duration = flow.and_then(|f| {
        let start = parse_timestamp_ns(text(f, "start")?)?;
        let end = parse_timestamp_ns(text(f, "end")?)?;
        end.checked_sub(start).filter(|d| *d >= 0)
    });
    let alert = object("alert");
    let mut doc = Doc {
        event: Some(doc::Event {
            kind: match kind {
                "alert" => "alert",
                "stats" => "metric",
                _ => "event",
            },
            module: "suricata",
            dataset: format!("suricata.{kind}"),
            duration,
            severity: alert.and_then(|a| a.get("severity")?.as_i64()),
        }),
        observer: Some(doc::Observer { name: Text::Borrowed(sensor), product: "suricata" }),
        ..Doc::default()
    };
    let endpoint = |ip: &str, port: &str| {
        text(record, ip).map(|ip| doc::Endpoint { ip: ip.into(), port: number_u16(record, port) })
    };
    doc.source = endpoint("src_ip", "src_port");
    doc.destination = endpoint("dest_ip", "dest_port");

    // `TCP`, `UDP`, `ICMP`, `IPv6-ICMP`: ECS writes them in lowercase.
    let transport = text(record, "proto").map(|p| Text::Owned(p.to_ascii_lowercase()));
    let protocol = text(record, "app_proto").filter(|p| !matches!(*p, "failed" | "unknown"));
    let community_id = text(record, "community_id");
    if transport.is_some() || protocol.is_some() || community_id.is_some() {
        doc.network = Some(doc::Network {
            transport,
            protocol: protocol.map(Text::Borrowed),
            community_id: community_id.map(Text::Borrowed),
        });
    }

    if let Some(alert) = alert {
        doc.rule = text(alert, "signature").map(|name| doc::Rule {
            name: name.into(),
            id: alert.get("signature_id").filter(|id| !id.is_null()).map(|id| match id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            category: text(alert, "category").map(Text::Borrowed),
        });
    }
    doc.dns = object("dns").map(dns);
    if let Some(http) = object("http") {
        let host = text(http, "hostname");
        // The server's port: `http_port` when Suricata gives it; in an http record the
        // destination is the server (in fileinfo and alert records it may be the source).
        let port = number_u16(http, "http_port")
            .or_else(|| (kind == "http").then(|| number_u16(record, "dest_port")).flatten());
        doc.url = match text(http, "url") {
            Some(url) => Some(doc::Url::of_request(host, port, url)),
            None => host.map(|h| doc::Url { domain: Some(h.into()), ..doc::Url::default() }),
        };
        let request = text(http, "http_method").map(|m| doc::HttpRequest { method: m.into() });
        let response = number_u16(http, "status").map(|s| doc::HttpResponse { status_code: s });
        if request.is_some() || response.is_some() {
            doc.http = Some(doc::Http { request, response });
        }
        doc.user_agent =
            text(http, "http_user_agent").map(|ua| doc::UserAgent { original: ua.into() });
    }
    doc.tls = object("tls")
        .and_then(|tls| text(tls, "sni"))
        .map(|sni| doc::Tls { client: doc::TlsClient { server_name: sni.into() } });
    doc.file = object("fileinfo").map(|f| doc::File {
        name: text(f, "filename").map(Text::Borrowed),
        mime_type: None,
        size: f.get("size").and_then(Value::as_u64),
    });
    doc
}

/// `dns` in any of EVE's three layouts:
/// - v1: one record per query and per answer: `{type, rrname, rrtype, rdata}`;
/// - v2: `{version: 2, type: "answer", rrname, rrtype, answers: [{rrname, rrtype, rdata}],
///   grouped: {A: [...]}}` (either of `answers` and `grouped`, or both);
/// - v3: `{version: 3, queries: [{rrname, rrtype}], answers: [...]}`.
fn dns(dns: &Map<String, Value>) -> doc::Dns<'_> {
    let query = dns.get("queries").and_then(Value::as_array).and_then(|q| q.first()?.as_object());
    let question = query.unwrap_or(dns);
    let mut out = doc::Dns {
        kind: text(dns, "type").and_then(|t| match t {
            "query" | "request" => Some(Text::Borrowed("query")),
            "answer" | "response" => Some(Text::Borrowed("answer")),
            _ => None,
        }),
        question: text(question, "rrname").map(|name| doc::DnsQuestion {
            name: Some(name.into()),
            kind: text(question, "rrtype").map(Text::Borrowed),
        }),
        response_code: text(dns, "rcode").map(Text::Borrowed),
        ..doc::Dns::default()
    };
    let answers = dns.get("answers").and_then(Value::as_array);
    if let Some(answers) = answers {
        for answer in answers.iter().filter_map(Value::as_object) {
            // An SOA or other structured answer has no `rdata`: nothing an address list needs.
            if let Some(data) = text(answer, "rdata") {
                let (name, kind) = (text(answer, "rrname"), text(answer, "rrtype"));
                out.answer(data.into(), name.map(Text::Borrowed), kind.map(Text::Borrowed));
            }
        }
    } else if let Some(grouped) = dns.get("grouped").and_then(Value::as_object) {
        for (kind, datas) in grouped {
            for data in datas.as_array().into_iter().flatten().filter_map(Value::as_str) {
                out.answer(data.into(), None, Some(Text::Borrowed(kind)));
            }
        }
    } else if let Some(data) = text(dns, "rdata") {
        let (name, kind) = (text(dns, "rrname"), text(dns, "rrtype"));
        out.answer(data.into(), name.map(Text::Borrowed), kind.map(Text::Borrowed));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use storyline_sdk::format::InputEvent;

    use super::super::{Adapter, Format};

    fn read(line: &str) -> InputEvent {
        Adapter::new(Format::Suricata).parse(line, 1).unwrap().unwrap()
    }

    fn payload(event: &InputEvent) -> serde_json::Value {
        serde_json::from_slice(&event.payload).unwrap()
    }

    #[test]
    fn a_flow_happens_at_its_start_not_when_it_was_flushed() {
        let line = r#"{"timestamp":"2026-11-24T13:05:04.000257+0000","flow_id":1959100616671748,"event_type":"flow","src_ip":"192.0.2.10","src_port":53493,"dest_ip":"198.51.100.53","dest_port":53,"proto":"UDP","app_proto":"dns","flow":{"pkts_toserver":1,"pkts_toclient":1,"bytes_toserver":86,"bytes_toclient":141,"start":"2026-11-24T13:00:02.459268+0000","end":"2026-11-24T13:00:02.570517+0000","age":0,"state":"established","reason":"timeout","alerted":false},"host":"sensor-dmz"}"#;
        let e = read(line);
        assert_eq!((e.kind.as_str(), e.source.as_str()), ("flow", "sensor-dmz"));
        assert_eq!(e.time, 1_795_525_202_459, "flow.start, not timestamp");
        let p = payload(&e);
        assert_eq!(p["event"]["duration"], json!(111_249_000));
        assert_eq!(p["network"], json!({"transport": "udp", "protocol": "dns"}));
        assert_eq!(p["source"], json!({"ip": "192.0.2.10", "port": 53493}));
        assert_eq!(p["destination"], json!({"ip": "198.51.100.53", "port": 53}));
        assert_eq!(p["suricata"]["flow_id"], json!(1959100616671748u64));
        let text = String::from_utf8(e.payload.clone()).unwrap();
        assert!(text.ends_with(&format!(",\"suricata\":{line}}}")), "kept as it came: {text}");
    }

    #[test]
    fn a_flow_without_its_start_is_refused() {
        let line = r#"{"timestamp":"2026-11-24T13:05:04.000257+0000","event_type":"flow","flow":{"age":0}}"#;
        let err = Adapter::new(Format::Suricata).parse(line, 12).unwrap_err();
        assert_eq!(err.line, 12);
        assert!(err.reason.starts_with("a flow record without flow.start"), "{err}");
    }

    #[test]
    fn an_alert_names_its_rule() {
        let line = r#"{"timestamp":"2026-11-24T15:59:46.457984+0200","flow_id":1374195536821504,"pcap_cnt":313,"event_type":"alert","src_ip":"203.0.113.213","src_port":51698,"dest_ip":"192.0.2.129","dest_port":445,"proto":"TCP","community_id":"1:LQU9qZlK+B5F3KDmev6m5PMibrg=","alert":{"action":"allowed","gid":1,"signature_id":2403388,"rev":66418,"signature":"ET CINS Active Threat Intelligence Poor Reputation IP group 89","category":"Misc Attack","severity":2},"flow":{"pkts_toserver":1,"pkts_toclient":0,"bytes_toserver":60,"bytes_toclient":0,"start":"2026-11-24T15:59:46.457984+0200"},"host":"edge-ids"}"#;
        let e = read(line);
        assert_eq!(e.kind, "alert");
        assert_eq!(e.time, 1_795_528_786_457, "timestamp, with its +0200 offset");
        let p = payload(&e);
        assert_eq!(p["event"]["kind"], json!("alert"));
        assert_eq!(p["event"]["severity"], json!(2));
        assert_eq!(
            p["rule"],
            json!({"name": "ET CINS Active Threat Intelligence Poor Reputation IP group 89", "id": "2403388", "category": "Misc Attack"})
        );
        assert_eq!(
            p["network"],
            json!({"transport": "tcp", "community_id": "1:LQU9qZlK+B5F3KDmev6m5PMibrg="})
        );
        assert_eq!(p["event"].get("duration"), None, "an alert's flow has no end yet");
    }

    #[test]
    fn dns_answers_are_read_in_every_eve_layout() {
        let v2 = r#"{"timestamp":"2026-11-24T16:15:30.868948+0200","flow_id":1419339999887459,"event_type":"dns","src_ip":"192.0.2.129","src_port":39422,"dest_ip":"192.0.2.1","dest_port":53,"proto":"UDP","dns":{"version":2,"type":"answer","id":2,"flags":"8180","qr":true,"rd":true,"ra":true,"rrname":"www.shop.example","rrtype":"A","rcode":"NOERROR","answers":[{"rrname":"www.shop.example","rrtype":"CNAME","ttl":580,"rdata":"edge.shop.example"},{"rrname":"edge.shop.example","rrtype":"A","ttl":580,"rdata":"198.51.100.67"}],"grouped":{"A":["198.51.100.67"],"CNAME":["edge.shop.example"]}}}"#;
        let p = payload(&read(v2));
        assert_eq!(
            p["dns"],
            json!({
                "type": "answer",
                "question": {"name": "www.shop.example", "type": "A"},
                "answers": [
                    {"data": "edge.shop.example", "name": "www.shop.example", "type": "CNAME"},
                    {"data": "198.51.100.67", "name": "edge.shop.example", "type": "A"}
                ],
                "resolved_ip": ["198.51.100.67"],
                "response_code": "NOERROR"
            })
        );
        let grouped = r#"{"timestamp":"2026-11-24T16:15:30.868948+0200","event_type":"dns","dns":{"version":2,"type":"answer","rrname":"www.shop.example","rrtype":"A","grouped":{"A":["198.51.100.67","198.51.100.68"]}}}"#;
        assert_eq!(
            payload(&read(grouped))["dns"]["resolved_ip"],
            json!(["198.51.100.67", "198.51.100.68"])
        );
        let v1 = r#"{"timestamp":"2026-11-24T00:00:01.041456+0000","event_type":"dns","src_ip":"192.0.2.10","src_port":46406,"dest_ip":"192.0.2.1","dest_port":53,"proto":"UDP","dns":{"type":"answer","id":22103,"rrname":"mail.corp.example","rrtype":"A","ttl":300,"rdata":"192.0.2.25"}}"#;
        let p = payload(&read(v1));
        assert_eq!(p["dns"]["question"]["name"], json!("mail.corp.example"));
        assert_eq!(p["dns"]["resolved_ip"], json!(["192.0.2.25"]));
        let v3 = r#"{"timestamp":"2026-11-24T00:00:01.041456+0000","event_type":"dns","dns":{"version":3,"type":"response","queries":[{"rrname":"api.corp.example","rrtype":"AAAA"}],"answers":[{"rrname":"api.corp.example","rrtype":"AAAA","rdata":"2001:db8::25"}]}}"#;
        let p = payload(&read(v3));
        assert_eq!(p["dns"]["question"], json!({"name": "api.corp.example", "type": "AAAA"}));
        assert_eq!(p["dns"]["type"], json!("answer"));
        assert_eq!(p["dns"]["resolved_ip"], json!(["2001:db8::25"]));
    }

    #[test]
    fn http_records_give_the_url_method_status_and_agent() {
        let line = r#"{"timestamp":"2026-11-24T00:00:01.126898+0000","flow_id":1265931569107445,"in_iface":"eth0","event_type":"http","src_ip":"192.0.2.130","src_port":34680,"dest_ip":"192.0.2.122","dest_port":80,"proto":"TCP","tx_id":1,"http":{"hostname":"mail.corp.example","url":"\/webmail\/?folder=inbox","http_user_agent":"Mozilla\/5.0 (X11; Linux x86_64; rv:73.0) Gecko\/20100101 Firefox\/73.0","http_content_type":"text\/html","http_method":"GET","protocol":"HTTP\/1.1","status":200,"length":4768}}"#;
        let e = read(line);
        assert_eq!(e.source, "suricata", "no host, no --source");
        let p = payload(&e);
        assert_eq!(
            p["url"],
            json!({"original": "/webmail/?folder=inbox", "full": "http://mail.corp.example/webmail/?folder=inbox", "domain": "mail.corp.example", "path": "/webmail/", "query": "folder=inbox"})
        );
        assert_eq!(
            p["http"],
            json!({"request": {"method": "GET"}, "response": {"status_code": 200}})
        );
        assert_eq!(
            p["user_agent"]["original"],
            json!("Mozilla/5.0 (X11; Linux x86_64; rv:73.0) Gecko/20100101 Firefox/73.0")
        );
    }

    #[test]
    fn tls_gives_the_sni_and_fileinfo_the_file_name() {
        let tls = r#"{"timestamp":"2026-11-24T16:54:00.074627+0200","event_type":"tls","src_ip":"192.0.2.129","src_port":60316,"dest_ip":"198.51.100.67","dest_port":443,"proto":"TCP","tls":{"subject":"CN=www.shop.example","sni":"www.shop.example","version":"TLS 1.2"}}"#;
        assert_eq!(
            payload(&read(tls))["tls"],
            json!({"client": {"server_name": "www.shop.example"}})
        );
        let file = r#"{"timestamp":"2026-11-24T00:00:02.626782+0000","event_type":"fileinfo","src_ip":"192.0.2.122","src_port":80,"dest_ip":"192.0.2.81","dest_port":52612,"proto":"TCP","http":{"hostname":"mail.corp.example","url":"\/img\/logo.png","http_method":"GET","status":200},"app_proto":"http","fileinfo":{"filename":"\/img\/logo.png","state":"CLOSED","stored":false,"size":117,"tx_id":16}}"#;
        let p = payload(&read(file));
        assert_eq!(p["file"], json!({"name": "/img/logo.png", "size": 117}));
        assert_eq!(
            p["url"]["full"],
            json!("http://mail.corp.example/img/logo.png"),
            "no port: the source is the server"
        );
    }

    #[test]
    fn an_eve_line_without_event_type_is_refused() {
        let line = r#"{"timestamp":"2026-11-24T00:00:01.041456+0000","src_ip":"192.0.2.10","dest_ip":"192.0.2.1"}"#;
        let err = Adapter::new(Format::Suricata).parse(line, 42).unwrap_err();
        assert_eq!(err.line, 42);
        assert!(err.reason.starts_with("EVE line without event_type"), "{err}");
        let no_time =
            Adapter::new(Format::Suricata).parse(r#"{"event_type":"dns"}"#, 43).unwrap_err();
        assert_eq!(no_time.reason, "missing field \"timestamp\"");
        let bad_time = r#"{"event_type":"dns","timestamp":"2026-11-24 noon"}"#;
        let err = Adapter::new(Format::Suricata).parse(bad_time, 44).unwrap_err();
        assert_eq!(
            err.reason,
            "field \"timestamp\" is \"2026-11-24 noon\", not a time with a zone such as \"2020-02-29T00:00:04.000257+0000\""
        );
    }

    #[test]
    fn the_source_option_names_the_sensor() {
        let line =
            r#"{"timestamp":"2026-11-24T00:00:01+00:00","event_type":"anomaly","host":"edge-ids"}"#;
        let e = Adapter::new(Format::Suricata).source("ids-paris").parse(line, 1).unwrap().unwrap();
        assert_eq!(e.source, "ids-paris");
        assert_eq!(payload(&e)["observer"]["name"], json!("ids-paris"));
    }
}
