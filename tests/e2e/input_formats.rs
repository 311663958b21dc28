//! `storyline ingest --format`: sensors' own logs go in as they are written, each record an
//! event with an ECS payload, and a bad line is reported by its number in the format's terms.

use storyline::model::{ShardId, TenantId};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};

use crate::support::{Scratch, storyline};

/// A Zeek conn.log as the TSV writer leaves it: header, two records, `#close`. Addresses are
/// from the documentation ranges.
const CONN_LOG: &str = "#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\tconn
#open\t2026-11-24-13-00-00
#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\tresp_bytes\tconn_state\thistory
#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tstring
1795525200.123456\tCa1b2c3d4e5f6g7h8\t192.0.2.10\t51514\t198.51.100.20\t443\ttcp\tssl\t4.552763\t1288\t1850\tSF\tShADadFf
1795525201.500000\tCz9y8x7w6v5u4t3s2\t192.0.2.10\t35159\t192.0.2.53\t53\tudp\tdns\t0.001869\t101\t235\tSF\tDd
#close\t2026-11-24-14-00-00
";

/// Suricata EVE: a flow, an alert, a DNS answer, then a line that lost its `event_type`.
const EVE_JSON: &str = r#"{"timestamp":"2026-11-24T13:05:04.000257+0000","flow_id":1959100616671748,"event_type":"flow","src_ip":"192.0.2.10","src_port":35159,"dest_ip":"192.0.2.53","dest_port":53,"proto":"UDP","app_proto":"dns","flow":{"pkts_toserver":1,"pkts_toclient":1,"start":"2026-11-24T13:00:01.500100+0000","end":"2026-11-24T13:00:01.501969+0000","state":"established"},"host":"edge-ids"}
{"timestamp":"2026-11-24T13:00:02.000000+0000","flow_id":1374195536821504,"event_type":"alert","src_ip":"203.0.113.213","src_port":51698,"dest_ip":"192.0.2.10","dest_port":445,"proto":"TCP","alert":{"action":"allowed","gid":1,"signature_id":2403388,"rev":1,"signature":"ET CINS Poor Reputation IP","category":"Misc Attack","severity":2},"host":"edge-ids"}
{"timestamp":"2026-11-24T13:00:01.501900+0000","flow_id":1959100616671748,"event_type":"dns","src_ip":"192.0.2.53","src_port":53,"dest_ip":"192.0.2.10","dest_port":35159,"proto":"UDP","dns":{"version":2,"type":"answer","rrname":"shop.example","rrtype":"A","rcode":"NOERROR","answers":[{"rrname":"shop.example","rrtype":"A","ttl":60,"rdata":"198.51.100.20"}]},"host":"edge-ids"}
{"timestamp":"2026-11-24T13:00:03.000000+0000","src_ip":"192.0.2.10","dest_ip":"198.51.100.20"}
"#;

/// `storyline ingest --tenant acme <args>` in `scratch`: exit code and stderr.
fn ingest(scratch: &Scratch, args: &[&str]) -> (Option<i32>, String) {
    let (data, plugins) = (scratch.str("data"), scratch.str("plugins"));
    let mut all = vec!["--data-dir", &data, "--plugin-dir", &plugins, "ingest", "--tenant", "acme"];
    all.extend_from_slice(args);
    let out = storyline(&all);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every stored event of acme: (source, kind, payload as JSON), sorted.
fn stored(scratch: &Scratch) -> Vec<(String, String, serde_json::Value)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = EmbeddedStore::new(scratch.path("data"));
    let tenant = TenantId::new("acme").unwrap();
    let mut out = Vec::new();
    for shard in 0..Layout::default().shards {
        let mut at = None;
        while let Some(b) = rt.block_on(store.next_bucket(&tenant, ShardId(shard), at)).unwrap() {
            let events = rt.block_on(store.read_bucket(&tenant, ShardId(shard), b)).unwrap();
            for e in events.into_events() {
                let payload: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
                out.push((e.source, e.kind, payload));
            }
            at = Some(b);
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1, a.2.to_string()).cmp(&(&b.0, &b.1, b.2.to_string())));
    out
}

#[test]
fn zeek_and_suricata_logs_are_ingested_as_written_and_bad_lines_named() {
    let scratch = Scratch::new("input-formats");
    std::fs::create_dir_all(scratch.path("plugins")).unwrap();
    std::fs::write(scratch.path("conn.log"), CONN_LOG).unwrap();
    std::fs::write(scratch.path("eve.json"), EVE_JSON).unwrap();

    let (code, stderr) = ingest(&scratch, &["--format", "zeek", &scratch.str("conn.log")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("accepted 2 events"), "{stderr}");
    assert!(stderr.contains("rejected 0 lines"), "{stderr}");

    let (code, stderr) = ingest(&scratch, &["--format", "suricata", &scratch.str("eve.json")]);
    assert_eq!(code, Some(1), "a rejected line fails the command: {stderr}");
    assert!(stderr.contains("accepted 3 events"), "{stderr}");
    assert!(stderr.contains("rejected 1 lines"), "{stderr}");
    assert!(
        stderr.contains(
            "eve.json line 4: EVE line without event_type (every EVE record names its type: \
             flow, alert, dns, http, tls, fileinfo...) (Suricata EVE JSON, one record per line; \
             see README \"Input formats\")"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 4 lines rejected; the accepted events are stored"), "{stderr}");

    let events = stored(&scratch);
    let names: Vec<(&str, &str)> =
        events.iter().map(|(s, k, _)| (s.as_str(), k.as_str())).collect();
    assert_eq!(
        names,
        [
            ("edge-ids", "alert"),
            ("edge-ids", "dns"),
            ("edge-ids", "flow"),
            ("zeek", "conn"),
            ("zeek", "conn")
        ]
    );
    let conn = &events[3].2;
    assert_eq!(conn["source"], serde_json::json!({"ip": "192.0.2.10", "port": 35159}));
    assert_eq!(conn["zeek"]["uid"], "Cz9y8x7w6v5u4t3s2");
    let alert = &events[0].2;
    assert_eq!(alert["rule"]["name"], "ET CINS Poor Reputation IP");
    assert_eq!(alert["suricata"]["flow_id"], 1374195536821504u64);
}

#[test]
fn source_is_refused_for_the_storyline_format_which_names_its_own() {
    let scratch = Scratch::new("input-formats-source");
    std::fs::write(scratch.path("events.jsonl"), r#"{"source":"fw","kind":"flow","time":1}"#)
        .unwrap();
    let (code, stderr) = ingest(&scratch, &["--source", "fw-2", &scratch.str("events.jsonl")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "storyline: --source names the sensor of --format zeek, suricata or ecs input"
        ),
        "{stderr}"
    );
}

#[test]
fn a_running_host_reads_the_lines_in_the_format_the_client_names() {
    let scratch = Scratch::new("input-formats-socket");
    std::fs::create_dir_all(scratch.path("plugins/acme")).unwrap();
    // JSON records without `_path`: only the file name, sent in the socket's header, says
    // they are dns records.
    let dns = [
        r#"{"ts":"2026-11-24T13:00:00.000716Z","uid":"Cq1","id.orig_h":"192.0.2.10","id.orig_p":41772,"id.resp_h":"192.0.2.53","id.resp_p":53,"proto":"udp","query":"shop.example","qtype_name":"A","answers":["198.51.100.20"]}"#,
        r#"{"ts":1795525201.5,"uid":"Cq2","id.orig_h":"192.0.2.10","id.orig_p":41773,"id.resp_h":"192.0.2.53","id.resp_p":53,"proto":"udp","query":"cdn.example"}"#,
    ];
    std::fs::write(scratch.path("dns.09:00:00-10:00:00.log"), dns.join("\n")).unwrap();
    let (data, plugins) = (scratch.str("data"), scratch.str("plugins"));
    let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(["--data-dir", &data, "--plugin-dir", &plugins, "run", "--tenant", "acme"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !scratch.path("data/ingest.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "the host did not open its ingest socket");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // While the host owns the embedded store, ingest can only go through its socket.
    let file = scratch.str("dns.09:00:00-10:00:00.log");
    let (code, stderr) = ingest(&scratch, &["--format", "zeek", "--source", "zeek-dmz", &file]);
    crate::support::sigterm(&host);
    assert_eq!(host.wait().unwrap().code(), Some(0));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("accepted 2 events"), "{stderr}");

    let events = stored(&scratch);
    let names: Vec<(&str, &str)> =
        events.iter().map(|(s, k, _)| (s.as_str(), k.as_str())).collect();
    assert_eq!(names, [("zeek-dmz", "dns"), ("zeek-dmz", "dns")]);
}
