//! Behaviour of the rule, natively: the harness over the bundled sample, and hand-built buckets
//! where arrival order (late records) matters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use storyline_sdk::community_id::{FlowTuple, community_id, proto};
use storyline_sdk::format::{self, InputEvent};
use storyline_sdk::testing::{Harness, latest_revisions};
use storyline_sdk::{Bucket, Correlator, Error, Event, Story, TimestampMs};

use crate::NetworkSession;

const S: i64 = 1000;
const MIN: i64 = 60 * S;
/// 2026-03-02T09:00:00Z.
const T0: TimestampMs = 1_772_442_000_000;

const SAMPLE: &str = include_str!("../sample/events.jsonl");

// ---------------------------------------------------------------------------------------------
// Fixtures

fn event(id: &str, source: &str, kind: &str, time: TimestampMs, payload: &Value) -> Event {
    Event {
        id: id.into(),
        source: source.into(),
        kind: kind.into(),
        event_time: time,
        insert_time: time,
        attributes: Vec::new(),
        payload: payload.to_string().into_bytes(),
    }
}

/// A one-second bucket ending at `watermark`, its events in id order as the host delivers them.
fn bucket(watermark: TimestampMs, mut events: Vec<Event>) -> Bucket {
    events.sort_by(|a, b| a.id.cmp(&b.id));
    Bucket {
        tenant: "test".into(),
        shard: 0,
        start: watermark - S,
        end: watermark,
        watermark,
        events,
    }
}

/// `source` → `destination` with ports, plus `extra` fields merged in.
fn conn(src: &str, sport: u16, dst: &str, dport: u16, extra: Value) -> Value {
    let mut v =
        json!({"source": {"ip": src, "port": sport}, "destination": {"ip": dst, "port": dport}});
    if let (Value::Object(base), Value::Object(more)) = (&mut v, extra) {
        base.extend(more);
    }
    v
}

const CLIENT: &str = "10.0.0.5";
const SERVER: &str = "93.184.216.34";
const RESOLVER: &str = "10.0.0.2";

fn dns_payload(client: &str, name: &str, answer: &str) -> Value {
    conn(
        client,
        53001,
        RESOLVER,
        53,
        json!({"dns": {"question": {"name": name}, "answers": [{"type": "A", "data": answer}]}}),
    )
}

fn dns(id: &str, time: TimestampMs) -> Event {
    event(id, "dns-1", "dns", time, &dns_payload(CLIENT, "www.example.com", SERVER))
}

/// A firewall record of the test connection, `duration_s` long.
fn flow(id: &str, time: TimestampMs, duration_s: i64) -> Event {
    let p = conn(
        CLIENT,
        51514,
        SERVER,
        443,
        json!({"network": {"transport": "tcp"}, "event": {"duration": duration_s * 1_000_000_000}}),
    );
    event(id, "fw-1", "flow", time, &p)
}

/// A TLS inspector's record of the test connection, reported server → client, no transport.
fn tls(id: &str, time: TimestampMs) -> Event {
    let p = conn(
        SERVER,
        443,
        CLIENT,
        51514,
        json!({"tls": {"client": {"server_name": "www.example.com"}}}),
    );
    event(id, "tls-1", "tls", time, &p)
}

/// A proxy's record of one request on the test connection, no transport.
fn http(id: &str, time: TimestampMs) -> Event {
    let p = conn(
        CLIENT,
        51514,
        SERVER,
        443,
        json!({"http": {"request": {"method": "GET"}, "response": {"status_code": 200}},
               "url": {"full": "https://www.example.com/", "domain": "www.example.com"}}),
    );
    event(id, "proxy-1", "http", time, &p)
}

/// An endpoint agent's record of the test connection.
fn endpoint(id: &str, time: TimestampMs) -> Event {
    let p = conn(
        CLIENT,
        51514,
        SERVER,
        443,
        json!({"network": {"transport": "tcp"}, "process": {"name": "curl", "pid": 4242},
               "user": {"name": "alice"}, "host": {"name": "ws-alice"}}),
    );
    event(id, "edr-1", "process", time, &p)
}

fn test_cid() -> String {
    let t =
        FlowTuple::new(CLIENT.parse().unwrap(), 51514, SERVER.parse().unwrap(), 443, proto::TCP);
    community_id(&t)
}

fn init() -> NetworkSession {
    NetworkSession::init("{}").unwrap()
}

/// Processes `buckets` in order, then drains; every story published.
fn run(c: &mut NetworkSession, buckets: &[Bucket]) -> Vec<Story> {
    let mut out = Vec::new();
    for b in buckets {
        out.extend(c.process(b).unwrap());
    }
    out.extend(c.drain().unwrap());
    out
}

/// Each story's (kind, sorted event ids), latest revisions only, sorted.
fn groups(stories: &[Story]) -> Vec<(String, Vec<String>)> {
    let mut g: Vec<(String, Vec<String>)> = latest_revisions(stories.to_vec())
        .into_iter()
        .map(|s| {
            let mut ids = s.event_ids;
            ids.sort();
            (s.kind, ids)
        })
        .collect();
    g.sort_by(|a, b| a.1.cmp(&b.1));
    g
}

/// Asserts that the latest revisions hold every id of `events` exactly once, and nothing else.
fn assert_partition<'a>(events: impl IntoIterator<Item = &'a str>, stories: &[Story]) {
    let want: BTreeSet<&str> = events.into_iter().collect();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for s in latest_revisions(stories.to_vec()) {
        for id in &s.event_ids {
            if let Some(other) = seen.insert(id.clone(), s.id.clone()) {
                panic!("event {id} is in stories {other} and {}", s.id);
            }
        }
    }
    let got: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(got, want);
}

fn ids(s: &Story) -> Vec<&str> {
    let mut v: Vec<&str> = s.event_ids.iter().map(String::as_str).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Joining across sensors

#[test]
fn skewed_clocks_and_reversed_reports_join_one_session_with_its_fields() {
    let mut c = init();
    // Real time T0: the lookup; the connection opens at T0 + 0.3 s. The proxy's clock is 10 s
    // behind, the TLS inspector's 5 s ahead (and it reports server → client), the endpoint
    // agent's 20 s ahead, the firewall's 15 s behind (its record is stamped at the start).
    let buckets = [
        bucket(T0 - 9 * S, vec![http("http-1", T0 - 9_700)]),
        bucket(T0 + S, vec![dns("dns-1", T0)]),
        bucket(T0 + 6 * S, vec![tls("tls-1", T0 + 5_300)]),
        bucket(T0 + 21 * S, vec![endpoint("edr-1", T0 + 20_300)]),
        bucket(T0 + 40 * S, vec![flow("fw-1", T0 - 14_700, 2)]),
    ];
    let out = run(&mut c, &buckets);
    assert_eq!(out.len(), 1, "{out:#?}");
    let s = &out[0];
    assert_eq!(s.kind, "network-session");
    assert_eq!(s.revision, 0);
    assert_eq!(ids(s), ["dns-1", "edr-1", "fw-1", "http-1", "tls-1"]);
    assert_eq!((s.first_seen, s.last_seen), (T0 - 14_700, T0 + 20_300));
    let want = json!({
        "alerts": [],
        "clock_offsets_ms": {},
        "files": [],
        "community_id": test_cid(),
        "transport": "tcp",
        "client": {"ip": CLIENT, "port": 51514},
        "server": {"ip": SERVER, "port": 443},
        "sensors": ["dns-1", "edr-1", "fw-1", "proxy-1", "tls-1"],
        "event_kinds": ["dns", "flow", "http", "process", "tls"],
        "dns": [{"name": "www.example.com", "answers": [SERVER]}],
        "http": [{"method": "GET", "url": "https://www.example.com/", "domain": "www.example.com", "status": 200}],
        "tls_sni": ["www.example.com"],
        "processes": [{"name": "curl", "pid": 4242}],
        "users": ["alice"],
        "hosts": ["ws-alice"],
    });
    assert_eq!(Value::Object(s.fields.to_map()), want);
}

#[test]
fn reports_in_either_direction_decide_client_and_server_alike() {
    for reversed_first in [false, true] {
        let mut c = init();
        let (a, b) = (tls("tls-1", T0), http("http-1", T0 + S));
        let (first, second) = if reversed_first { (a, b) } else { (b, a) };
        let out = run(&mut c, &[bucket(T0 + S, vec![first]), bucket(T0 + 2 * S, vec![second])]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fields.get("client"), json!({"ip": CLIENT, "port": 51514}));
        assert_eq!(out[0].fields.get("server"), json!({"ip": SERVER, "port": 443}));
    }
}

#[test]
fn equal_ports_make_the_destination_of_the_earliest_report_the_server_whatever_the_arrival() {
    let ntp = |id: &str, src: &str, dst: &str, time| {
        let p = conn(src, 123, dst, 123, json!({"network": {"transport": "udp"}}));
        event(id, "s", "flow", time, &p)
    };
    let earliest = ntp("b-early", "10.0.0.5", "162.159.200.123", T0);
    let later = ntp("a-late", "162.159.200.123", "10.0.0.5", T0 + 2 * S);
    let orders = [
        vec![bucket(T0 + S, vec![earliest.clone()]), bucket(T0 + 3 * S, vec![later.clone()])],
        vec![bucket(T0 + 3 * S, vec![later.clone()]), bucket(T0 + 4 * S, vec![earliest.clone()])],
        vec![bucket(T0 + 3 * S, vec![later, earliest])],
    ];
    for buckets in orders {
        let out = run(&mut init(), &buckets);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fields.get("client"), json!({"ip": "10.0.0.5", "port": 123}));
        assert_eq!(out[0].fields.get("server"), json!({"ip": "162.159.200.123", "port": 123}));
    }
}

#[test]
fn a_sensor_given_community_id_joins_the_computed_one() {
    let mut c = init();
    // An endpoint record with only the community id and process details.
    let p = json!({"network": {"community_id": test_cid()}, "process": {"name": "curl", "pid": 1}});
    let buckets = [
        bucket(T0 + S, vec![flow("fw-1", T0, 1)]),
        bucket(T0 + 2 * S, vec![event("edr-1", "edr-1", "process", T0 + S, &p)]),
    ];
    let out = run(&mut c, &buckets);
    assert_eq!(groups(&out), [("network-session".into(), vec!["edr-1".into(), "fw-1".into()])]);
}

// ---------------------------------------------------------------------------------------------
// Any record with a tuple joins its session, whatever its kind

/// A Zeek-style connection record of the test tuple (transport given, stamped at its start).
fn zeek_conn(id: &str, time: TimestampMs) -> Event {
    let p = conn(
        CLIENT,
        51514,
        SERVER,
        443,
        json!({"network": {"transport": "tcp"}, "event": {"duration": 3_000_000_000i64}}),
    );
    event(id, "zeek-1", "conn", time, &p)
}

#[test]
fn records_of_kinds_the_rule_does_not_know_join_their_connection_without_a_transport() {
    // Application logs name the tuple but not the transport (Zeek's ldap, kerberos, smb_files,
    // dce_rpc; Suricata's anomaly...). In either arrival order they join the connection record.
    let ldap = |id: &str, kind: &str, t| {
        let p = conn(SERVER, 443, CLIENT, 51514, json!({"user": {"name": "svc-ldap"}}));
        event(id, "zeek-1", kind, t, &p)
    };
    for conn_first in [true, false] {
        let records = vec![ldap("ldap-1", "ldap", T0 + 200), ldap("krb-1", "kerberos", T0 + 300)];
        let (first, second) = if conn_first {
            (vec![zeek_conn("conn-1", T0)], records)
        } else {
            (records, vec![zeek_conn("conn-1", T0)])
        };
        let out = run(&mut init(), &[bucket(T0 + S, first), bucket(T0 + 2 * S, second)]);
        assert_eq!(
            groups(&out),
            [("network-session".into(), vec!["conn-1".into(), "krb-1".into(), "ldap-1".into()])],
            "conn first: {conn_first}"
        );
        let story = latest_revisions(out).pop().unwrap();
        assert_eq!(story.fields.get("transport"), json!("tcp"), "the conn record's transport");
        assert_eq!(story.fields.get("community_id"), json!(test_cid()));
        assert_eq!(story.fields.get("users"), json!(["svc-ldap"]));
    }
}

#[test]
fn an_alert_joins_its_session_and_the_story_lists_its_signature() {
    let alert = event(
        "alert-1",
        "suricata-1",
        "alert",
        T0 + 500,
        &conn(CLIENT, 51514, SERVER, 443, json!({"rule": {"name": "ET POLICY curl User-Agent"}})),
    );
    let out = run(&mut init(), &[bucket(T0 + S, vec![zeek_conn("conn-1", T0), alert])]);
    assert_eq!(groups(&out), [("network-session".into(), vec!["alert-1".into(), "conn-1".into()])]);
    assert_eq!(out[0].fields.get("alerts"), json!(["ET POLICY curl User-Agent"]));
}

#[test]
fn lookups_from_one_port_to_a_dns_server_are_a_story_per_burst_and_netbios_keeps_the_gap() {
    // A host asking its resolver from a fixed port every 12 s, then twice 3 s apart, from a
    // sensor the rule does not know (no `event.module`) whose DNS timeout is 10 s: an exchange
    // per burst; NetBIOS name service on 137 is timed like any UDP flow, so its records 12 s
    // apart stay one exchange.
    let zeek = r#"{"dns_joins_connection": false, "dns_gap_ms": 10000}"#;
    let mut c = NetworkSession::init(zeek).unwrap();
    let ask = |id: &str, t: TimestampMs| {
        event(id, "zeek-1", "dns", t, &dns_payload(CLIENT, "a.example", SERVER))
    };
    let nbns = |id: &str, t: TimestampMs| {
        let p =
            conn(CLIENT, 137, "10.0.0.255", 137, json!({"dns": {"question": {"name": "WPAD"}}}));
        event(id, "zeek-1", "dns", t, &p)
    };
    let records = vec![
        ask("q1", T0),
        ask("q2", T0 + 12 * S),
        ask("q3", T0 + 24 * S),
        ask("q4", T0 + 27 * S),
        nbns("n1", T0),
        nbns("n2", T0 + 12 * S),
        nbns("n3", T0 + 24 * S),
    ];
    let out = run(&mut c, &[bucket(T0 + 30 * S, records)]);
    let mut got: Vec<Vec<String>> = groups(&out).into_iter().map(|(_, ids)| ids).collect();
    got.sort();
    let want: Vec<Vec<String>> = [&["n1", "n2", "n3"][..], &["q1"], &["q2"], &["q3", "q4"]]
        .iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(got, want);
    // By default `dns_gap_ms` is `gap_ms`: every exchange keeps the minute.
    let mut c = NetworkSession::init(r#"{"dns_joins_connection": false}"#).unwrap();
    let records = vec![ask("q1", T0), ask("q2", T0 + 12 * S), ask("q3", T0 + 24 * S)];
    assert_eq!(groups(&run(&mut c, &[bucket(T0 + 30 * S, records)])).len(), 1);
}

#[test]
fn zeek_s_dns_records_end_their_exchange_by_zeek_s_timing_on_port_53_and_137_alike() {
    // Zeek ends a DNS exchange at a check every 10 s once it has been 9 s without packets: a
    // pause of 25 s ends it, one of 15 s may or may not (kept whole). The same records from a
    // sensor the rule does not know keep the minute.
    let records = |module: Option<&str>| {
        let mark = |mut p: Value| {
            if let Some(m) = module {
                p["event"] = json!({"module": m});
            }
            p
        };
        let ask = |id: &str, t: TimestampMs| {
            event(id, "dns-1", "dns", t, &mark(dns_payload(CLIENT, "a.example", SERVER)))
        };
        let nbns = |id: &str, t: TimestampMs| {
            let p = conn(
                CLIENT,
                137,
                "10.0.0.255",
                137,
                json!({"dns": {"question": {"name": "WPAD"}}}),
            );
            event(id, "dns-1", "dns", t, &mark(p))
        };
        let (a, b, c) = (T0, T0 + 15 * S, T0 + 40 * S);
        vec![ask("q1", a), ask("q2", b), ask("q3", c), nbns("n1", a), nbns("n2", b), nbns("n3", c)]
    };
    let sorted = |out: &[Story]| {
        let mut got: Vec<Vec<String>> = groups(out).into_iter().map(|(_, ids)| ids).collect();
        got.sort();
        got
    };
    let want = |groups: &[&[&str]]| -> Vec<Vec<String>> {
        groups.iter().map(|g| g.iter().map(|s| s.to_string()).collect()).collect()
    };
    let config = r#"{"dns_joins_connection": false}"#;
    let out = run(
        &mut NetworkSession::init(config).unwrap(),
        &[bucket(T0 + 41 * S, records(Some("zeek")))],
    );
    assert_eq!(sorted(&out), want(&[&["n1", "n2"], &["n3"], &["q1", "q2"], &["q3"]]));
    let out = run(
        &mut NetworkSession::init(config).unwrap(),
        &[bucket(T0 + 41 * S, records(Some("suricata")))],
    );
    assert_eq!(sorted(&out), want(&[&["n1", "n2", "n3"], &["q1", "q2", "q3"]]));
    // `zeek_dns_gap_ms` sets it.
    let at_30 = r#"{"dns_joins_connection": false, "zeek_dns_gap_ms": 30000}"#;
    let out = run(
        &mut NetworkSession::init(at_30).unwrap(),
        &[bucket(T0 + 41 * S, records(Some("zeek")))],
    );
    assert_eq!(sorted(&out), want(&[&["n1", "n2", "n3"], &["q1", "q2", "q3"]]));
}

#[test]
fn a_snapshot_taken_with_a_longer_base_gap_keeps_its_sessions_gaps() {
    // A state whose sessionizer ran on a one-minute base (before Zeek's DNS timing): its open
    // connection still closes a minute (plus skew) after its last record, not 19 s.
    let old = r#"{"zeek_dns_gap_ms": 60000}"#;
    let mut c = NetworkSession::init(old).unwrap();
    let first = [
        bucket(T0 - MIN, vec![other_conn("conn-0", T0 - MIN)]),
        bucket(T0 + S, vec![tls("tls-1", T0)]),
    ];
    run_without_drain(&mut c, &first);
    let mut upgraded = init();
    upgraded.restore(&c.snapshot()).unwrap();
    let mut out = run_without_drain(&mut upgraded, &[bucket(T0 + 60 * S, vec![])]);
    out.retain(|s| !ids(s).contains(&"conn-0"));
    assert!(out.is_empty(), "closed early: {out:#?}");
    let out = run_without_drain(&mut upgraded, &[bucket(T0 + 95 * S, vec![])]);
    assert_eq!(groups(&out), [("network-session".to_string(), vec!["tls-1".to_string()])]);
}

/// Zeek's `http` record of a request from `port` that carried file `fuid`.
fn http_carrying(id: &str, port: u16, fuid: &str, time: TimestampMs) -> Event {
    let p = conn(CLIENT, port, SERVER, 80, json!({"zeek": {"resp_fuids": [fuid]}}));
    event(id, "zeek-1", "http", time, &p)
}

/// Zeek's `files` record of file `fuid`: the two hosts, no ports.
fn file_record(id: &str, fuid: &str, time: TimestampMs) -> Event {
    let p =
        json!({"source": {"ip": SERVER}, "destination": {"ip": CLIENT}, "zeek": {"fuid": fuid}});
    event(id, "zeek-1", "files", time, &p)
}

#[test]
fn a_file_joins_the_connection_whose_http_record_listed_it_among_many_of_its_address_pair() {
    // A client fetching a page and its assets over three parallel connections to one server:
    // the files records name the two hosts only; the http records list the files they carried.
    let records = vec![
        http_carrying("http-a", 40001, "FA", T0),
        http_carrying("http-b", 40002, "FB", T0 + 100),
        http_carrying("http-c", 40003, "FC", T0 + 200),
        file_record("file-a", "FA", T0 + 10),
        file_record("file-b", "FB", T0 + 110),
        file_record("file-c", "FC", T0 + 210),
    ];
    let want = [
        ("network-session".to_string(), vec!["file-a".to_string(), "http-a".to_string()]),
        ("network-session".to_string(), vec!["file-b".to_string(), "http-b".to_string()]),
        ("network-session".to_string(), vec!["file-c".to_string(), "http-c".to_string()]),
        ("network-session".to_string(), vec!["http-0".to_string()]),
    ];
    // Whatever the order they come in: files before their http record, after it, in one
    // bucket or across buckets; once a record listing files was seen (in the same bucket as
    // the files, or before: here a request a minute earlier).
    let orders: [&[usize]; 4] =
        [&[0, 1, 2, 3, 4, 5], &[3, 4, 5, 0, 1, 2], &[5, 0, 4, 2, 3, 1], &[0, 4, 5, 1, 2, 3]];
    for order in orders {
        for split in [1, 3, 6] {
            let events: Vec<Event> = order.iter().map(|&i| records[i].clone()).collect();
            let earlier = http_carrying("http-0", 40000, "F0", T0 - MIN);
            let buckets: Vec<Bucket> = std::iter::once(bucket(T0 - MIN + S, vec![earlier]))
                .chain(
                    events
                        .chunks(split)
                        .enumerate()
                        .map(|(n, chunk)| bucket(T0 + S + n as i64, chunk.to_vec())),
                )
                .collect();
            let out = run(&mut init(), &buckets);
            let mut got = groups(&out);
            got.sort();
            assert_eq!(got, want, "order {order:?}, {split} a bucket");
        }
    }
    // The first bucket that lists files places the files it holds by their ids too.
    let mut first = records.clone();
    first.reverse();
    let out = run(&mut init(), &[bucket(T0 + S, first)]);
    let mut got = groups(&out);
    got.sort();
    assert_eq!(got, want[..3]);
}

#[test]
fn a_record_with_addresses_but_no_ports_joins_the_connection_of_its_address_pair() {
    // Zeek's files.log names the hosts a file went between, not the ports.
    let file = event(
        "file-1",
        "zeek-1",
        "files",
        T0 + 800,
        &json!({"source": {"ip": SERVER}, "destination": {"ip": CLIENT}, "file": {"name": "setup.exe"}}),
    );
    let out = run(
        &mut init(),
        &[bucket(T0 + S, vec![zeek_conn("conn-1", T0)]), bucket(T0 + 2 * S, vec![file.clone()])],
    );
    assert_eq!(groups(&out), [("network-session".into(), vec!["conn-1".into(), "file-1".into()])]);
    assert_eq!(out[0].fields.get("files"), json!(["setup.exe"]));
    // Delivered before any record of its connection (in the same bucket, or an earlier one),
    // it waits under its address pair and joins the connection once that is seen.
    for buckets in [
        vec![bucket(T0 + S, vec![zeek_conn("conn-1", T0), file.clone()])],
        vec![bucket(T0 + S, vec![file.clone()]), bucket(T0 + 2 * S, vec![zeek_conn("conn-1", T0)])],
    ] {
        let mut early = file.clone();
        early.id = "a-file".into();
        let buckets: Vec<Bucket> = buckets
            .into_iter()
            .map(|b| {
                let events = b
                    .events
                    .into_iter()
                    .map(|e| if e.id == "file-1" { early.clone() } else { e })
                    .collect();
                bucket(b.watermark, events)
            })
            .collect();
        let out = run(&mut init(), &buckets);
        assert_eq!(
            groups(&out),
            [("network-session".into(), vec!["a-file".into(), "conn-1".into()])]
        );
    }
    // With no connection of the pair, it is a session of the pair, not a story of its own id.
    let lone = event(
        "file-2",
        "zeek-1",
        "files",
        T0,
        &json!({"source": {"ip": "10.9.9.9"}, "destination": {"ip": CLIENT}}),
    );
    let out = run(
        &mut init(),
        &[bucket(
            T0 + S,
            vec![lone.clone(), {
                let mut l = lone;
                l.id = "file-3".into();
                l
            }],
        )],
    );
    assert_eq!(groups(&out), [("network-session".into(), vec!["file-2".into(), "file-3".into()])]);
}

#[test]
fn a_dns_lookup_whose_exchange_has_a_flow_record_stays_with_that_flow() {
    // Zeek logs every DNS exchange as a conn record too (client:53001 -> resolver:53, udp): the
    // lookup belongs with it, not with the connection its answer led to.
    let dns_conn = event(
        "conn-dns",
        "zeek-1",
        "conn",
        T0 - 100,
        &conn(CLIENT, 53001, RESOLVER, 53, json!({"network": {"transport": "udp"}})),
    );
    for dns_conn_first in [true, false] {
        let mut c = init();
        let lookup = dns("dns-1", T0);
        let buckets = if dns_conn_first {
            vec![
                bucket(T0 + S, vec![dns_conn.clone(), lookup]),
                bucket(T0 + 2 * S, vec![zeek_conn("conn-1", T0 + 300)]),
            ]
        } else {
            vec![
                bucket(T0 + S, vec![lookup]),
                bucket(T0 + 2 * S, vec![dns_conn.clone()]),
                bucket(T0 + 3 * S, vec![zeek_conn("conn-1", T0 + 300)]),
            ]
        };
        let out = run(&mut c, &buckets);
        assert_eq!(
            groups(&out),
            [
                ("network-session".into(), vec!["conn-1".into()]),
                ("network-session".into(), vec!["conn-dns".into(), "dns-1".into()]),
            ],
            "dns conn first: {dns_conn_first}"
        );
    }
}

#[test]
fn a_tuple_reused_seconds_after_its_connection_ended_is_another_connection() {
    // Zeek logs a TLS connection of 132 s, then a second connection on the same ports 7 s
    // after the first ended: two conn records of one sensor in one direction are two
    // connections, whatever the gap; each TLS record joins its own.
    let zeek = |id: &str, kind: &str, t, duration_s: i64| {
        let mut extra = json!({"network": {"transport": "tcp"}});
        if duration_s > 0 {
            extra["event"] = json!({"duration": duration_s * 1_000_000_000});
        }
        event(id, "zeek-1", kind, t, &conn(CLIENT, 51514, SERVER, 443, extra))
    };
    let first = [zeek("ssl-1", "ssl", T0 + 100, 0), zeek("conn-1", "conn", T0, 132)];
    let second =
        [zeek("conn-2", "conn", T0 + 139 * S, 1), zeek("ssl-2", "ssl", T0 + 139 * S + 50, 0)];
    let want = [
        ("network-session".to_string(), vec!["conn-1".to_string(), "ssl-1".to_string()]),
        ("network-session".to_string(), vec!["conn-2".to_string(), "ssl-2".to_string()]),
    ];
    // The first conn record arrives when its connection ends, after its TLS record; the
    // second connection's records arrive together. (A TLS record of the second connection
    // delivered before any record saying the first had ended would join the first: the gap
    // alone cannot tell.)
    let buckets = [
        bucket(T0 + S, vec![first[0].clone()]),
        bucket(T0 + 133 * S, vec![first[1].clone()]),
        bucket(T0 + 141 * S, vec![second[0].clone(), second[1].clone()]),
    ];
    assert_eq!(groups(&run(&mut init(), &buckets)), want);
    // Exporters that split a connection into several records can say so.
    let split = NetworkSession::init(r#"{"one_flow_record_per_connection": false}"#).unwrap();
    let mut split = split;
    assert_eq!(groups(&run(&mut split, &buckets)).len(), 1, "one session by the gap alone");
}

#[test]
fn ntp_exchanges_between_the_same_two_hosts_minutes_apart_are_separate_sessions() {
    let ntp = |id: &str, t, reversed: bool| {
        let (a, b) = if reversed { (SERVER, CLIENT) } else { (CLIENT, SERVER) };
        event(
            id,
            "zeek-1",
            "conn",
            t,
            &conn(a, 123, b, 123, json!({"network": {"transport": "udp"}})),
        )
    };
    let buckets = [
        bucket(T0 + S, vec![ntp("ntp-1", T0, false), ntp("ntp-1r", T0 + 20, true)]),
        bucket(T0 + 5 * MIN, vec![ntp("ntp-2", T0 + 5 * MIN - 500, true)]),
        bucket(T0 + 10 * MIN, vec![ntp("ntp-3", T0 + 10 * MIN - 500, false)]),
    ];
    let out = run(&mut init(), &buckets);
    assert_eq!(
        groups(&out),
        [
            ("network-session".into(), vec!["ntp-1".into(), "ntp-1r".into()]),
            ("network-session".into(), vec!["ntp-2".into()]),
            ("network-session".into(), vec!["ntp-3".into()]),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Sensor clocks

/// `n` connections, one every 5 s from `start`: each a DNS lookup by the resolver `dns-1`
/// (whose clock runs `resolver_ahead_ms` fast) then, 300 ms later, a firewall record, each of a
/// client port and server of its own; delivered as they happen, in one-second buckets.
fn resolver_off_by(resolver_ahead_ms: i64, n: i64) -> Vec<Bucket> {
    let mut buckets = Vec::new();
    for i in 0..n {
        let t = T0 + i * 5 * S;
        let server = format!("192.0.2.{}", i + 1);
        let port = 40_000 + i as u16;
        let lookup = event(
            &format!("dns-{i:03}"),
            "dns-1",
            "dns",
            t + resolver_ahead_ms,
            &conn(
                CLIENT,
                53_000 + i as u16,
                RESOLVER,
                53,
                json!({"dns": {"question": {"name": format!("h{i}.example")}, "answers": [{"type": "A", "data": server}]}}),
            ),
        );
        let fw = event(
            &format!("fw-{i:03}"),
            "fw-1",
            "flow",
            t + 300,
            &conn(CLIENT, port, &server, 443, json!({"network": {"transport": "tcp"}})),
        );
        buckets.push(bucket(t + S, vec![lookup, fw]));
    }
    buckets
}

#[test]
fn a_resolver_50_s_ahead_has_its_clock_learned_and_its_lookups_then_join_their_connections() {
    let out = run(&mut init(), &resolver_off_by(50 * S, 80));
    let stories = latest_revisions(out);
    assert_partition(
        (0..80)
            .flat_map(|i| [format!("dns-{i:03}"), format!("fw-{i:03}")])
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
        &stories,
    );
    let joined = |i: i64| {
        stories.iter().any(|s| {
            s.event_ids.contains(&format!("dns-{i:03}"))
                && s.event_ids.contains(&format!("fw-{i:03}"))
        })
    };
    // 50 s is beyond the 30 s tolerance: the first lookups cannot join; once enough of them
    // measured the resolver against the firewall, every later one does.
    assert!(!joined(0), "the first lookup is 50 s off and joins nothing");
    let late: Vec<i64> = (40..80).filter(|&i| !joined(i)).collect();
    assert!(late.is_empty(), "lookups {late:?} did not join their connection");
    let last = stories.iter().find(|s| s.event_ids.contains(&"fw-079".to_string())).unwrap();
    let offsets = last.fields.get("clock_offsets_ms");
    let (Some(dns), Some(fw)) = (offsets["dns-1"].as_i64(), offsets["fw-1"].as_i64()) else {
        panic!("both sensors' offsets are published: {offsets}");
    };
    assert!((dns - fw - 50 * S).abs() < 1000, "learned {dns} - {fw}");
}

#[test]
fn with_clocks_in_agreement_every_lookup_joins_from_the_start() {
    let out = run(&mut init(), &resolver_off_by(0, 20));
    let stories = latest_revisions(out);
    assert_eq!(stories.len(), 20, "{stories:#?}");
    assert!(stories.iter().all(|s| s.event_ids.len() == 2));
}

#[test]
fn learned_clocks_survive_a_snapshot() {
    let buckets = resolver_off_by(50 * S, 80);
    let whole = run(&mut init(), &buckets);
    let mut first = init();
    let mut out = run_without_drain(&mut first, &buckets[..60]);
    let mut second = init();
    second.restore(&first.snapshot()).unwrap();
    out.extend(run(&mut second, &buckets[60..]));
    assert_eq!(out, whole);
}

// ---------------------------------------------------------------------------------------------
// DNS

#[test]
fn a_lookup_arriving_before_its_connection_joins_it() {
    let mut c = init();
    let buckets = [
        bucket(T0 + S, vec![dns("dns-1", T0)]),
        // The connection's records arrive 40 s later, inside the lookup's wait.
        bucket(T0 + 41 * S, vec![flow("fw-1", T0 + 500, 1), endpoint("edr-1", T0 + 600)]),
    ];
    let out = run(&mut c, &buckets);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(ids(&out[0]), ["dns-1", "edr-1", "fw-1"]);
    assert_eq!(out[0].first_seen, T0, "the story starts with the lookup");
    assert_eq!(out[0].fields.get("dns"), json!([{"name": "www.example.com", "answers": [SERVER]}]));
}

#[test]
fn a_lookup_arriving_after_its_connection_was_published_reopens_it() {
    let mut c = init();
    let first = run_without_drain(
        &mut c,
        &[bucket(T0 + 2 * S, vec![flow("fw-1", T0 + S, 1)]), bucket(T0 + 200 * S, vec![])],
    );
    assert_eq!(first.len(), 1);
    assert_eq!(ids(&first[0]), ["fw-1"]);
    // The resolver's log arrives five minutes late.
    let second = run(&mut c, &[bucket(T0 + 300 * S, vec![dns("dns-1", T0)])]);
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id.as_str(), second[0].revision), (first[0].id.as_str(), 1));
    assert_eq!(ids(&second[0]), ["dns-1", "fw-1"]);
    assert_eq!(second[0].first_seen, T0);
}

fn run_without_drain(c: &mut NetworkSession, buckets: &[Bucket]) -> Vec<Story> {
    buckets.iter().flat_map(|b| c.process(b).unwrap()).collect()
}

#[test]
fn a_lookup_no_connection_follows_becomes_a_dns_lookup_story_after_its_wait() {
    let mut c = init();
    let mut out = run_without_drain(&mut c, &[bucket(T0 + S, vec![dns("dns-1", T0)])]);
    // It waits window + gap + skew (2 min) after arrival, then closes like any story (gap + skew).
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 120 * S, vec![])]));
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(c.state.sizes().1, 1, "still waiting");
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 121 * S, vec![])]));
    assert_eq!(c.state.sizes().1, 0, "no longer waiting");
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 211 * S, vec![])]));
    assert_eq!(out.len(), 1);
    let s = &out[0];
    assert_eq!((s.kind.as_str(), ids(s)), ("dns-lookup", vec!["dns-1"]));
    assert_eq!((s.first_seen, s.last_seen), (T0, T0));
    assert_eq!(s.fields.get("client"), json!({"ip": CLIENT, "port": 53001}));
    assert_eq!(s.fields.get("server"), json!({"ip": RESOLVER, "port": 53}));
    assert_eq!(s.fields.get("transport"), json!("udp"));
    assert!(s.fields.get("community_id").as_str().is_some_and(|c| c.starts_with("1:")));
    // A connection that shows up after that is a story of its own; the lookup stays put.
    let late = run(&mut c, &[bucket(T0 + 212 * S, vec![flow("fw-1", T0 + 200 * S, 1)])]);
    assert_eq!(groups(&late), [("network-session".into(), vec!["fw-1".into()])]);
}

#[test]
fn unanswered_query_and_response_logged_apart_make_one_dns_lookup_story() {
    let q = conn(CLIENT, 53001, RESOLVER, 53, json!({"dns": {"question": {"name": "wpad.corp"}}}));
    let r = conn(RESOLVER, 53, CLIENT, 53001, json!({"dns": {"question": {"name": "wpad.corp"}}}));
    let buckets = [bucket(
        T0 + S,
        vec![event("q", "dns-1", "dns", T0, &q), event("r", "dns-1", "dns", T0 + 4, &r)],
    )];
    let out = run(&mut init(), &buckets);
    assert_eq!(groups(&out), [("dns-lookup".into(), vec!["q".into(), "r".into()])]);
    assert_eq!(out[0].fields.get("dns"), json!([{"name": "wpad.corp", "answers": []}]));
}

#[test]
fn a_lookup_without_a_client_address_is_a_dns_lookup_story() {
    let p = json!({"dns": {"question": {"name": "x.example"}, "resolved_ip": [SERVER]}});
    let out = run(&mut init(), &[bucket(T0 + S, vec![event("d", "edr", "dns", T0, &p)])]);
    assert_eq!(groups(&out), [("dns-lookup".into(), vec!["d".into()])]);
    assert_eq!(out[0].fields.get("community_id"), Value::Null);
}

#[test]
fn a_lookup_does_not_join_a_connection_that_started_well_before_it() {
    let mut c = init();
    // The connection started 50 s before the lookup (beyond the 30 s skew): another lookup's.
    let buckets = [
        bucket(T0 + S, vec![flow("fw-1", T0, 1)]),
        bucket(T0 + 51 * S, vec![dns("dns-1", T0 + 50 * S)]),
    ];
    let out = run(&mut c, &buckets);
    let g = groups(&out);
    assert_eq!(
        g,
        [
            ("dns-lookup".into(), vec!["dns-1".into()]),
            ("network-session".into(), vec!["fw-1".into()])
        ]
    );
}

#[test]
fn a_lookup_followed_by_parallel_connections_joins_the_first() {
    let second = |id: &str, time| {
        let p = conn(CLIENT, 51600, SERVER, 443, json!({"network": {"transport": "tcp"}}));
        event(id, "fw-1", "flow", time, &p)
    };
    for dns_first in [true, false] {
        let mut buckets = vec![
            bucket(T0 + 2 * S, vec![flow("fw-a", T0 + 1_500, 1)]),
            bucket(T0 + 3 * S, vec![second("fw-b", T0 + 1_200)]),
        ];
        let lookup = bucket(if dns_first { T0 + S } else { T0 + 4 * S }, vec![dns("dns-1", T0)]);
        if dns_first {
            buckets.insert(0, lookup);
        } else {
            buckets.push(lookup);
        }
        let out = run(&mut init(), &buckets);
        let g = groups(&out);
        if dns_first {
            // Waiting, it joins the first connection that appears.
            assert!(g.contains(&("network-session".into(), vec!["dns-1".into(), "fw-a".into()])));
        } else {
            // Finding both, it joins the one that started first.
            assert!(g.contains(&("network-session".into(), vec!["dns-1".into(), "fw-b".into()])));
        }
        assert_eq!(g.len(), 2, "{g:?}");
    }
}

#[test]
fn a_second_lookup_waits_for_its_own_connection() {
    let second = |id: &str, time| {
        let p = conn(CLIENT, 51600, SERVER, 443, json!({"network": {"transport": "tcp"}}));
        event(id, "fw-1", "flow", time, &p)
    };
    let buckets = [
        bucket(T0 + S, vec![dns("dns-1", T0), flow("fw-a", T0 + 500, 1)]),
        // The same client looks the name up again: the first connection has its lookup, so
        // this one waits for the connection it leads to.
        bucket(T0 + 11 * S, vec![dns("dns-2", T0 + 10 * S)]),
        bucket(T0 + 12 * S, vec![second("fw-b", T0 + 10_500)]),
    ];
    let out = run(&mut init(), &buckets);
    assert_eq!(
        groups(&out),
        [
            ("network-session".into(), vec!["dns-1".into(), "fw-a".into()]),
            ("network-session".into(), vec!["dns-2".into(), "fw-b".into()])
        ]
    );
}

#[test]
fn a_repeated_lookup_with_no_new_connection_joins_the_old_one_when_its_wait_ends() {
    let mut c = init();
    let mut out = run_without_drain(
        &mut c,
        &[
            bucket(T0 + S, vec![dns("dns-1", T0), flow("fw-a", T0 + 500, 1)]),
            bucket(T0 + 11 * S, vec![dns("dns-2", T0 + 10 * S)]),
            bucket(T0 + 100 * S, vec![]),
        ],
    );
    assert_eq!(c.state.sizes().1, 1, "dns-2 waits");
    out.extend(run(&mut c, &[bucket(T0 + 131 * S, vec![])]));
    assert_eq!(
        groups(&out),
        [("network-session".into(), vec!["dns-1".into(), "dns-2".into(), "fw-a".into()])]
    );
}

// ---------------------------------------------------------------------------------------------
// Late records and revisions

#[test]
fn an_end_stamped_flow_record_minutes_late_reopens_the_session() {
    let mut c = init();
    let early = run_without_drain(
        &mut c,
        &[
            bucket(T0 + S, vec![dns("dns-1", T0), tls("tls-1", T0 + 500)]),
            bucket(T0 + 2 * S, vec![endpoint("edr-1", T0 + 1_000)]),
            bucket(T0 + 100 * S, vec![]),
        ],
    );
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].revision, 0);
    // The connection lasted 5 minutes; the firewall wrote its record at the end, stamped then.
    let late = run(&mut c, &[bucket(T0 + 302 * S, vec![flow("fw-1", T0 + 300 * S, 300)])]);
    assert_eq!(late.len(), 1);
    assert_eq!((late[0].id.as_str(), late[0].revision), (early[0].id.as_str(), 1));
    assert_eq!(ids(&late[0]), ["dns-1", "edr-1", "fw-1", "tls-1"]);
    assert_eq!((late[0].first_seen, late[0].last_seen), (T0, T0 + 300 * S));
}

#[test]
fn an_http_log_eight_minutes_late_publishes_revision_1_of_the_same_id() {
    let mut c = init();
    let mut out = run_without_drain(
        &mut c,
        &[
            bucket(T0 + S, vec![dns("dns-1", T0), flow("fw-1", T0 + 200, 2)]),
            bucket(T0 + 2 * S, vec![tls("tls-1", T0 + 1_300)]),
            bucket(T0 + 3 * MIN, vec![]),
        ],
    );
    assert_eq!(out.len(), 1);
    assert_eq!(ids(&out[0]), ["dns-1", "fw-1", "tls-1"]);
    // The proxy's log of the request, stamped in the session, arrives 8 minutes after the lookup.
    out.extend(run_without_drain(
        &mut c,
        &[bucket(T0 + 8 * MIN, vec![http("http-1", T0 + S)]), bucket(T0 + 10 * MIN, vec![])],
    ));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!((out[1].id.as_str(), out[1].revision), (out[0].id.as_str(), 1));
    assert_eq!(ids(&out[1]), ["dns-1", "fw-1", "http-1", "tls-1"]);
    assert_eq!(out[1].fields.get("http")[0]["status"], json!(200));
    assert!(c.drain().unwrap().is_empty(), "nothing left unpublished");
}

#[test]
fn a_tuple_reused_long_after_is_a_new_session() {
    let mut c = init();
    let buckets = [
        bucket(T0 + S, vec![flow("fw-1", T0, 10), endpoint("edr-1", T0 + 100)]),
        bucket(T0 + 120 * MIN + S, vec![flow("fw-2", T0 + 120 * MIN, 10)]),
        bucket(T0 + 120 * MIN + 2 * S, vec![endpoint("edr-2", T0 + 120 * MIN + 100)]),
    ];
    let out = run(&mut c, &buckets);
    assert_eq!(
        groups(&out),
        [
            ("network-session".into(), vec!["edr-1".into(), "fw-1".into()]),
            ("network-session".into(), vec!["edr-2".into(), "fw-2".into()])
        ]
    );
    assert_ne!(out[0].id, out[1].id);
    assert_eq!(out[0].fields.get("community_id"), out[1].fields.get("community_id"));
    assert!(out.iter().all(|s| s.revision == 0));
}

/// Zeek's `conn` record of the test connection: stamped at its start, written at its end.
fn zeek_conn_lasting(id: &str, start: TimestampMs, duration_ms: i64) -> Event {
    let p = conn(
        CLIENT,
        51514,
        SERVER,
        443,
        json!({"network": {"transport": "tcp"}, "event": {"duration": duration_ms * 1_000_000}}),
    );
    event(id, "zeek-1", "conn", start, &p)
}

/// A flow record of another connection (another client port): the sensor writes flow records.
fn other_conn(id: &str, start: TimestampMs) -> Event {
    let p = conn(CLIENT, 40_000, SERVER, 443, json!({"network": {"transport": "tcp"}}));
    event(id, "zeek-1", "conn", start, &p)
}

#[test]
fn a_flow_record_written_hours_after_its_connections_tls_record_revises_its_story() {
    // A connection of three hours: the TLS and HTTP records come at its start, published 90 s
    // later; the sensor writes the flow record when the connection ends, stamped at its start.
    // The sensor writes flow records (one of another connection came first).
    let hours = 180 * MIN;
    let early = [
        bucket(T0 - MIN, vec![other_conn("conn-0", T0 - MIN)]),
        bucket(T0 + S, vec![tls("tls-1", T0), http("http-1", T0 + S)]),
    ];
    let late = [bucket(T0 + hours + S, vec![zeek_conn_lasting("conn-1", T0, hours)])];
    let mut c = init();
    let mut out = run_without_drain(&mut c, &early);
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 2 * MIN, vec![])]));
    out.retain(|s| !ids(s).contains(&"conn-0"));
    assert_eq!(out.len(), 1);
    // Kept past its ten minutes, and through a snapshot, while nothing happens on the tuple.
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 30 * MIN, vec![])]));
    let mut restored = init();
    restored.restore(&c.snapshot()).unwrap();
    out.extend(run(&mut restored, &late));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!((out[1].id.as_str(), out[1].revision), (out[0].id.as_str(), 1));
    assert_eq!(ids(&out[1]), ["conn-1", "http-1", "tls-1"]);
    assert_eq!(out[1].fields.get("tls_sni"), json!(["www.example.com"]));

    // Without the wait, the flow record opens a story of its own.
    let mut c = NetworkSession::init(r#"{"late_flow_ms": 0}"#).unwrap();
    let mut out = run_without_drain(&mut c, &early);
    out.extend(run_without_drain(&mut c, &[bucket(T0 + 30 * MIN, vec![])]));
    out.extend(run(&mut c, &late));
    out.retain(|s| !ids(s).contains(&"conn-0"));
    assert_partition(["conn-1", "http-1", "tls-1"], &out);
    assert_eq!(groups(&out).len(), 2, "{out:#?}");
}

#[test]
fn a_flow_record_of_a_connection_longer_than_max_span_joins_every_record_it_covers() {
    // A TLS connection of three hours (`max_span_ms` is one): the inspector logs a record every
    // twenty minutes, each gap past `gap_ms`, so each is a story of its own while they come;
    // then the flow record, written at the end and stamped at the start, covers them all.
    let hours = 180 * MIN;
    let mut buckets = vec![bucket(T0 - MIN, vec![other_conn("conn-0", T0 - MIN)])];
    let tls_ids: Vec<String> = (0..9).map(|i| format!("tls-{i}")).collect();
    for (i, id) in tls_ids.iter().enumerate() {
        let t = T0 + i as i64 * 20 * MIN;
        buckets.push(bucket(t + S, vec![tls(id, t)]));
    }
    buckets.push(bucket(T0 + hours + S, vec![zeek_conn_lasting("conn-1", T0, hours)]));
    let out = run(&mut init(), &buckets);
    let mut whole: Vec<String> = tls_ids.clone();
    whole.push("conn-1".into());
    whole.sort();
    assert_eq!(consumer_view(&out), [vec!["conn-0".to_string()], whole], "{out:#?}");
    let merged = out.iter().filter(|s| s.kind == storyline_sdk::session::MERGED_KIND).count();
    // The stories of tls-1 .. tls-7 were published: each says where its events went (tls-8's
    // was still open when the flow record came in the same bucket).
    assert_eq!(merged, 7, "{out:#?}");

    // Traffic on the tuple after the connection the record covers is another session.
    let after = T0 + hours + 2 * MIN;
    buckets.push(bucket(after + S, vec![tls("tls-after", after)]));
    let out = run(&mut init(), &buckets);
    assert!(consumer_view(&out).contains(&vec!["tls-after".to_string()]), "{out:#?}");
}

#[test]
fn a_story_with_its_flow_record_is_forgotten_after_ten_minutes_as_before() {
    // Only stories that no flow record joined wait for one: a connection reported whole is
    // forgotten after `reopen_ms`, and its tuple reused hours later is a new story.
    let whole = [
        bucket(T0 + 2 * S, vec![tls("tls-1", T0), zeek_conn_lasting("conn-1", T0, S)]),
        bucket(T0 + 12 * MIN, vec![]),
    ];
    let mut c = init();
    assert_eq!(run_without_drain(&mut c, &whole).len(), 1);
    assert_eq!(c.state.sizes().0, 0, "nothing kept");
    let waiting = [
        bucket(T0 - MIN, vec![other_conn("conn-0", T0 - MIN)]),
        bucket(T0 + S, vec![tls("tls-1", T0)]),
        bucket(T0 + 12 * MIN, vec![]),
    ];
    let mut c = init();
    assert_eq!(run_without_drain(&mut c, &waiting).len(), 2);
    assert_eq!(c.state.sizes().0, 1, "the TLS record's story waits for its flow record");
    // A snapshot keeps it waiting.
    let mut restored = init();
    restored.restore(&c.snapshot()).unwrap();
    run_without_drain(&mut restored, &[bucket(T0 + 20 * MIN, vec![])]);
    assert_eq!(restored.state.sizes().0, 1, "still waiting after a restore");
}

#[test]
fn a_sensor_that_writes_no_flow_records_keeps_no_story_waiting_for_one() {
    // TLS and HTTP logs only (no conn, no flow): nothing would ever come, so nothing waits.
    let only_tls = [
        bucket(T0 + S, vec![tls("tls-1", T0), http("http-1", T0 + S)]),
        bucket(T0 + 12 * MIN, vec![]),
    ];
    let mut c = init();
    assert_eq!(run_without_drain(&mut c, &only_tls).len(), 1);
    assert_eq!(c.state.sizes().0, 0, "forgotten after reopen_ms");
}

// ---------------------------------------------------------------------------------------------
// Bad and fieldless input

#[test]
fn events_without_network_fields_and_bad_payloads_are_stories_of_their_own() {
    let mut c = init();
    let mut garbage = event("bad-1", "fw-1", "syslog", T0, &json!(null));
    garbage.payload = b"<134> not json at all".to_vec();
    let mut empty = event("empty-1", "fw-1", "heartbeat", T0, &json!(null));
    empty.payload.clear();
    let text = event("text-1", "fw-1", "syslog", T0, &json!("a JSON string, not an object"));
    let mistyped = event("typed-1", "edr-1", "process", T0, &json!({"source": "10.0.0.5"}));
    let login = event(
        "login-1",
        "edr-1",
        "authentication",
        T0,
        &json!({"user": {"name": "bob"}, "host": {"name": "ws-bob"}}),
    );
    let events = vec![garbage, empty, text, mistyped, login, flow("fw-1", T0, 1)];
    let out = run(&mut c, &[bucket(T0 + S, events)]);
    let g = groups(&out);
    let singles: Vec<&str> =
        g.iter().filter(|(k, _)| k == "event").map(|(_, ids)| ids[0].as_str()).collect();
    assert_eq!(singles, ["bad-1", "empty-1", "login-1", "text-1", "typed-1"]);
    assert_eq!(g.iter().filter(|(k, _)| k == "network-session").count(), 1);
    let login = out.iter().find(|s| s.event_ids == ["login-1"]).unwrap();
    assert_eq!(login.fields.get("users"), json!(["bob"]));
    assert_eq!(login.fields.get("hosts"), json!(["ws-bob"]));
    assert_eq!(login.fields.get("client"), Value::Null);
}

// ---------------------------------------------------------------------------------------------
// Routing

#[test]
fn route_sends_a_lookup_and_every_report_of_its_connection_to_the_client() {
    let c = init();
    let events = [
        dns("dns-1", T0),
        flow("fw-1", T0, 1),
        tls("tls-1", T0),
        http("http-1", T0),
        endpoint("edr-1", T0),
    ];
    for e in &events {
        assert_eq!(c.route(e).as_deref(), Some(CLIENT), "{}", e.id);
    }
    let nothing = event("x", "s", "k", T0, &json!({"user": {"name": "bob"}}));
    assert_eq!(c.route(&nothing), None);
    let mut garbage = nothing.clone();
    garbage.payload = b"\xff".to_vec();
    assert_eq!(c.route(&garbage), None);
}

#[test]
fn every_story_of_the_sample_routes_to_one_shard() {
    let mut h = Harness::<NetworkSession>::new("{}").unwrap();
    let stories = latest_revisions(h.run_jsonl(SAMPLE).unwrap());
    let by_id: BTreeMap<String, Event> =
        sample_events().into_iter().map(|e| (e.id.clone(), e)).collect();
    let c = init();
    for s in &stories {
        let routes: BTreeSet<Option<String>> =
            s.event_ids.iter().map(|id| c.route(&by_id[id])).collect();
        assert_eq!(routes.len(), 1, "story {:?} spans routes {routes:?}", s.event_ids);
        if s.kind != "event" {
            assert!(routes.iter().all(Option::is_some), "{:?}", s.event_ids);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bundled sample

fn sample_events() -> Vec<Event> {
    format::parse_jsonl(SAMPLE)
        .unwrap()
        .into_iter()
        .map(|e: InputEvent| {
            let id = e.id.clone().unwrap();
            let time = e.time;
            e.into_event(|| id, time)
        })
        .collect()
}

/// The stories `sample/README.md` describes.
fn sample_expected() -> Vec<(String, Vec<String>)> {
    let g = |kind: &str, ids: &[&str]| {
        let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        ids.sort();
        (kind.to_string(), ids)
    };
    let mut want = vec![
        // A: alice → www.example.com, DNS first, reversed TLS, end-stamped firewall record.
        g(
            "network-session",
            &[
                "dns-0001",
                "edr-alice-0001",
                "fw-0001",
                "proxy-0001",
                "proxy-0002",
                "proxy-0003",
                "tls-0001",
            ],
        ),
        // B: bob → api.github.com, DNS after the session, proxy log late.
        g("network-session", &["dns-0002", "edr-bob-0002", "proxy-0005", "tls-0002", "zeek-0001"]),
        // C: alice → updates.example.org, firewall reversed.
        g("network-session", &["dns-0003", "edr-alice-0002", "fw-0003", "proxy-0004"]),
        // D: one 5-tuple, two sessions two hours apart.
        g("network-session", &["edr-bob-0003", "fw-0004"]),
        g("network-session", &["edr-bob-0004", "fw-0005"]),
        // E: a lookup no connection follows.
        g("dns-lookup", &["dns-0004"]),
        // F: NTP, equal ports.
        g("network-session", &["edr-alice-0003", "fw-0006"]),
        // G, H, N: no network fields; a payload that is not ECS JSON.
        g("event", &["edr-bob-0001"]),
        g("event", &["fw-0002"]),
        g("event", &["edr-alice-0005"]),
        // K: alice → app.slack.com, zeek with community id.
        g("network-session", &["dns-0007", "edr-alice-0004", "tls-0003", "zeek-0002"]),
        // J: one lookup, two parallel connections: the lookup joins the first.
        g("network-session", &["dns-0008", "edr-bob-0005", "fw-0007", "tls-0004"]),
        g("network-session", &["edr-bob-0006", "fw-0008", "tls-0005"]),
        // L: unanswered lookup, query and response.
        g("dns-lookup", &["dns-0005", "dns-0006"]),
        // M: ping, request and reply.
        g("network-session", &["fw-0009", "zeek-0003"]),
    ];
    want.sort_by(|a, b| a.1.cmp(&b.1));
    want
}

#[test]
fn the_sample_groups_as_its_readme_says() {
    let mut h = Harness::<NetworkSession>::new("{}").unwrap();
    let out = h.run_jsonl(SAMPLE).unwrap();
    assert_eq!(groups(&out), sample_expected());
    assert_partition(sample_events().iter().map(|e| e.id.as_str()), &out);
    // The firewall's end-stamped record of A arrives after A was published: revision 1.
    let latest = latest_revisions(out);
    let a = latest.iter().find(|s| s.event_ids.contains(&"fw-0001".to_string())).unwrap();
    assert_eq!(a.revision, 1);
    let ntp = latest.iter().find(|s| s.event_ids.contains(&"fw-0006".to_string())).unwrap();
    assert_eq!(ntp.fields.get("server"), json!({"ip": "162.159.200.123", "port": 123}));
    let ping = latest.iter().find(|s| s.event_ids.contains(&"fw-0009".to_string())).unwrap();
    assert_eq!(ping.fields.get("client"), json!({"ip": "10.20.0.23", "port": null}));
    assert_eq!(ping.fields.get("transport"), json!("icmp"));
}

/// The sample as the host would deliver it: in file order (the listed order is arrival
/// order), one-second buckets by arrival, a record never arriving before its own time.
fn sample_by_arrival() -> Vec<Bucket> {
    let mut arrival = TimestampMs::MIN;
    let mut buckets: Vec<Bucket> = Vec::new();
    for mut e in sample_events() {
        arrival = arrival.max(e.event_time);
        let end = arrival.div_euclid(S) * S + S;
        e.insert_time = arrival;
        match buckets.last_mut() {
            Some(b) if b.end == end => b.events.push(e),
            _ => buckets.push(bucket(end, vec![e])),
        }
    }
    for b in &mut buckets {
        b.events.sort_by(|a, b| a.id.cmp(&b.id));
    }
    buckets
}

#[test]
fn the_sample_delivered_late_groups_alike_and_the_late_log_revises_its_story() {
    let buckets = sample_by_arrival();
    let out = run(&mut init(), &buckets);
    assert_eq!(groups(&out), sample_expected());
    assert_partition(sample_events().iter().map(|e| e.id.as_str()), &out);
    // B was published before its proxy log arrived (8.5 minutes late): same id, next revision.
    let b: Vec<&Story> =
        out.iter().filter(|s| s.event_ids.contains(&"zeek-0001".to_string())).collect();
    assert_eq!(b.len(), 2, "{b:#?}");
    assert_eq!((b[0].id.as_str(), b[0].revision), (b[1].id.as_str(), 0));
    assert_eq!(b[1].revision, 1);
    assert!(!b[0].event_ids.contains(&"proxy-0005".to_string()));
    assert!(b[1].event_ids.contains(&"proxy-0005".to_string()));
}

// ---------------------------------------------------------------------------------------------
// State

#[test]
fn snapshot_and_restore_at_any_bucket_give_the_uninterrupted_output() {
    let buckets = sample_by_arrival();
    let whole = run(&mut init(), &buckets);
    for cut in 0..=buckets.len() {
        let mut first = init();
        let mut out = run_without_drain(&mut first, &buckets[..cut]);
        let bytes = first.snapshot();
        let mut second = init();
        second.restore(&bytes).unwrap();
        assert_eq!(second.snapshot(), bytes, "restore then snapshot is the identity (cut {cut})");
        out.extend(run(&mut second, &buckets[cut..]));
        assert_eq!(out, whole, "cut before bucket {cut}");
    }
}

/// Snapshots of format version 1 (taken before published sessions were kept encoded), one per
/// cut of the sample, each a u32 length then the bytes: written by that version of this plugin
/// after `run_without_drain` of the sample's first `cut` buckets.
const V1_SNAPSHOTS: &[u8] = include_bytes!("../testdata/snapshots-v1.bin");

/// Stories with their id replaced by the event that opened them (the first of `event_ids`),
/// in that order, after checking that each id stands for one opening event across its
/// revisions.
fn by_opening_event(stories: &[Story]) -> Vec<Story> {
    let mut opened_by: std::collections::BTreeMap<&str, &str> = Default::default();
    for s in stories {
        let first = s.event_ids[0].as_str();
        assert_eq!(*opened_by.entry(s.id.as_str()).or_insert(first), first, "{}", s.id);
    }
    // A call publishes in id order, so the order changes with the ids.
    let mut out: Vec<Story> = stories
        .iter()
        .cloned()
        .map(|mut s| {
            s.id = s.event_ids[0].clone();
            s
        })
        .collect();
    out.sort_by(|a, b| (&a.id, a.revision).cmp(&(&b.id, b.revision)));
    out
}

#[test]
fn a_snapshot_of_version_1_restores_and_gives_the_uninterrupted_output() {
    let buckets = sample_by_arrival();
    let whole = run(&mut init(), &buckets);
    let mut rest = V1_SNAPSHOTS;
    for cut in 0..=buckets.len() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (old, tail) = tail.split_at(len);
        rest = tail;
        assert_eq!(old[0], 1, "cut {cut}");
        let mut out = run_without_drain(&mut init(), &buckets[..cut]);
        let mut second = init();
        second.restore(old).unwrap();
        let now = second.snapshot();
        assert_eq!(now[0], 4, "written in the current version (cut {cut})");
        out.extend(run(&mut second, &buckets[cut..]));
        // Sessions opened before the cut keep the ids they were published with (keyed by
        // community id then, by tuple now); everything else is the uninterrupted output.
        assert_eq!(by_opening_event(&out), by_opening_event(&whole), "cut before bucket {cut}");
    }
    assert!(rest.is_empty(), "one snapshot per cut");
}

#[test]
fn a_snapshot_of_version_3_restores_whole() {
    // Version 4 added the file ids at the end of the state: a state without any is a version 3
    // body followed by an empty index (no entries, sweep at 0).
    let buckets = sample_by_arrival();
    let mut c = init();
    run_without_drain(&mut c, &buckets[..buckets.len() / 2]);
    let now = c.snapshot();
    assert_eq!((now[0], &now[now.len() - 2..]), (4, &[0u8, 0][..]));
    let mut v3 = now[..now.len() - 2].to_vec();
    v3[0] = 3;
    let mut restored = init();
    restored.restore(&v3).unwrap();
    assert_eq!(restored.snapshot(), now);
}

#[test]
fn a_snapshot_carries_waiting_lookups_and_the_pair_index() {
    let mut c = init();
    run_without_drain(&mut c, &[bucket(T0 + S, vec![dns("dns-1", T0), flow("fw-9", T0, 1)])]);
    // fw-9 is the test tuple: the lookup joined it; now a lookup that waits.
    let other = event("dns-2", "dns-1", "dns", T0, &dns_payload(CLIENT, "b.example", "192.0.2.7"));
    run_without_drain(&mut c, &[bucket(T0 + 2 * S, vec![other])]);
    assert_eq!(c.state.sizes(), (1, 1, 1));
    let mut restored = init();
    restored.restore(&c.snapshot()).unwrap();
    assert_eq!(restored.state.sizes(), (1, 1, 1));
    let p = conn(CLIENT, 40000, "192.0.2.7", 443, json!({"network": {"transport": "tcp"}}));
    let out = run(
        &mut restored,
        &[bucket(T0 + 3 * S, vec![event("fw-2", "fw-1", "flow", T0 + 2 * S, &p)])],
    );
    assert!(
        groups(&out).contains(&("network-session".into(), vec!["dns-2".into(), "fw-2".into()]))
    );
}

#[test]
fn restore_refuses_what_it_cannot_read_and_takes_empty_as_fresh() {
    let mut c = init();
    assert!(matches!(c.restore(b"\x01\xff\xff\xff\xff\xff"), Err(Error::InvalidState(_))));
    let err = c.restore(b"\x09abc").unwrap_err();
    assert!(err.to_string().contains("version 9"), "{err}");
    c.restore(&[]).unwrap();
    assert_eq!(c.state.sizes(), (0, 0, 0));
}

#[test]
fn stale_pair_index_entries_are_dropped_when_met() {
    let mut c = init();
    run_without_drain(
        &mut c,
        &[bucket(T0 + S, vec![flow("fw-1", T0, 1)]), bucket(T0 + 30 * MIN, vec![])],
    );
    // The session was published and forgotten; its pair entry lingers until met.
    assert_eq!(c.state.sizes(), (0, 0, 1));
    run_without_drain(&mut c, &[bucket(T0 + 30 * MIN + S, vec![dns("dns-1", T0 + 30 * MIN)])]);
    assert_eq!(c.state.sizes(), (0, 1, 0));
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn configuration_defaults_and_errors_say_what_to_fix() {
    let c = NetworkSession::init("{}").unwrap();
    assert_eq!(c.config, crate::Config::default());
    assert_eq!(NetworkSession::init("").unwrap().config, crate::Config::default());
    let c = NetworkSession::init(r#"{"dns_window_ms": 5000, "skew_ms": 0}"#).unwrap();
    assert_eq!((c.config.dns_window_ms, c.config.skew_ms, c.config.gap_ms), (5000, 0, 60_000));

    let err = NetworkSession::init(r#"{"dns_window": 1}"#).unwrap_err();
    let Error::InvalidConfig(msg) = err else { panic!("got {err:?}") };
    assert!(msg.contains("unknown field `dns_window`") && msg.contains("dns_window_ms"), "{msg}");
    let err = NetworkSession::init(r#"{"skew_ms": -1}"#).unwrap_err();
    assert_eq!(
        err,
        Error::InvalidConfig(
            "skew_ms is -1; it must be between 0 and 2592000000 (30 days), in milliseconds".into()
        )
    );
    assert!(matches!(NetworkSession::init("[1]"), Err(Error::InvalidConfig(_))));
    assert!(matches!(NetworkSession::init(r#"{"gap_ms": "1"}"#), Err(Error::InvalidConfig(_))));
}

#[test]
fn a_smaller_dns_window_keeps_a_slow_connection_apart() {
    let mut c = NetworkSession::init(r#"{"dns_window_ms": 1000, "skew_ms": 0}"#).unwrap();
    let buckets = [
        bucket(T0 + S, vec![dns("dns-1", T0)]),
        bucket(T0 + 6 * S, vec![flow("fw-1", T0 + 5 * S, 1)]),
    ];
    let out = run(&mut c, &buckets);
    assert_eq!(
        groups(&out),
        [
            ("dns-lookup".into(), vec!["dns-1".into()]),
            ("network-session".into(), vec!["fw-1".into()])
        ]
    );
}

#[test]
fn absurd_event_times_do_not_fail_the_bucket() {
    let far = |e: Event, t: TimestampMs| Event { event_time: t, ..e };
    let events = vec![
        far(flow("fw-max", 0, 1), i64::MAX),
        far(flow("fw-min", 0, 1), i64::MIN),
        far(dns("dns-max", 0), i64::MAX),
        far(dns("dns-min", 0), i64::MIN),
    ];
    let out = run(&mut init(), &[bucket(T0 + S, events)]);
    assert_partition(["dns-max", "dns-min", "fw-max", "fw-min"], &out);
    assert!(out.iter().all(|s| s.first_seen <= s.last_seen));
}

/// The latest revision of each story without the merged ones' last revisions, as sorted
/// event-id lists: what a consumer holds, whatever the ids.
fn consumer_view(stories: &[Story]) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = latest_revisions(stories.to_vec())
        .into_iter()
        .filter(|s| s.kind != storyline_sdk::session::MERGED_KIND)
        .map(|s| {
            let mut ids = s.event_ids;
            ids.sort();
            ids
        })
        .collect();
    v.sort();
    v
}

#[test]
fn any_order_of_arrival_across_buckets_gives_the_same_stories() {
    // Records of connections that share nothing but their tuple and time (no DNS: which
    // connection a lookup takes depends, by design, on which connections it has seen): the
    // sample's flow, TLS, HTTP and endpoint records, each delivered in any of six buckets a
    // minute apart, all within the ten minutes a published story is kept for late records.
    let events: Vec<Event> = sample_events()
        .into_iter()
        .filter(|e| e.kind != "dns" && e.event_time < T0 + 20 * MIN)
        .collect();
    assert!(events.len() >= 15, "{} events", events.len());
    let last = events.iter().map(|e| e.event_time).max().unwrap();
    let in_order = {
        let mut c = init();
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.event_time);
        let mut out = run_without_drain(&mut c, &[bucket(last + S, sorted)]);
        out.extend(c.drain().unwrap());
        consumer_view(&out)
    };
    let mut rng = 0x0bad_5eed_u64;
    let mut next = || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 31)
    };
    for round in 0..100 {
        let mut lists: Vec<Vec<Event>> = vec![Vec::new(); 6];
        for e in &events {
            lists[(next() % 6) as usize].push(e.clone());
        }
        let buckets: Vec<Bucket> = lists
            .into_iter()
            .enumerate()
            .map(|(i, list)| bucket(last + S + i as i64 * MIN, list))
            .collect();
        let out = run(&mut init(), &buckets);
        assert_eq!(consumer_view(&out), in_order, "round {round}");
        assert_partition(events.iter().map(|e| e.id.as_str()), &out);
    }
}
