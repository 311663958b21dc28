//! The guest sees no files, environment, arguments or network, and clocks and randomness that
//! replay identically.

use serde_json::Value;

use crate::support::{bucket, instance};

fn probe_fields(tenant: &str, starts: &[i64]) -> Vec<serde_json::Map<String, Value>> {
    let mut inst = instance("faulty", tenant, r#"{"mode": "probe"}"#);
    starts
        .iter()
        .map(|start| {
            let stories = inst.process(&bucket(tenant, *start, &["a"]), &|_| false).unwrap();
            serde_json::from_str(stories[0].fields.get()).unwrap()
        })
        .collect()
}

#[test]
fn the_guest_cannot_read_files_environment_arguments_or_open_sockets() {
    // SAFETY of the assertion: the test process itself has HOME and other variables set.
    assert!(std::env::vars().count() > 0);
    let f = &probe_fields("acme", &[1_000])[0];
    assert_eq!(f["env_vars"], 0);
    assert_eq!(f["args"], 0);
    assert_eq!(f["home"], Value::Null);
    for key in ["file", "dir", "tcp"] {
        let v = f[key].as_str().unwrap();
        assert!(v.starts_with("error: "), "{key}: {v}");
    }
}

#[test]
fn guest_clocks_show_the_bucket_watermark() {
    let fields = probe_fields("acme", &[1_000, 61_000]);
    assert_eq!(fields[0]["now_ms"], 2_000);
    assert_eq!(fields[1]["now_ms"], 62_000);
}

#[test]
fn guest_randomness_replays_identically_in_a_new_instance() {
    let first = probe_fields("acme", &[1_000, 2_000, 3_000]);
    let replay = probe_fields("acme", &[1_000, 2_000, 3_000]);
    let hashes = |f: &[serde_json::Map<String, Value>]| {
        f.iter().map(|m| m["hash"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(hashes(&first), hashes(&replay));
}
