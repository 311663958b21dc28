//! `storyline plugin check` and `storyline plugin test`, run as a user runs them.

use std::collections::BTreeMap;

use crate::support::{Scratch, plugin, root, storyline};

fn sample() -> String {
    root().join("plugins/network-session/sample/events.jsonl").display().to_string()
}

#[test]
fn plugin_check_prints_version_exports_size_and_hash() {
    let scratch = Scratch::new("check");
    let file = plugin("network-session");
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "check",
        &file.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(stdout.contains("world:    storyline:correlator/plugin@0.2.0 (supported)"), "{stdout}");
    assert!(stdout.contains("exports:  storyline:correlator/correlator@0.2.0"), "{stdout}");
    assert!(stdout.contains(&format!("size:     {size} bytes")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("sha256:   ") && l.len() == 10 + 64), "{stdout}");
    // The second check loads the compiled component from the cache under --data-dir.
    let again = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "check",
        &file.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("compile:  loaded from cache"));
}

#[test]
fn plugin_check_of_a_wrong_file_exits_1_with_the_reason() {
    let scratch = Scratch::new("check-bad");
    std::fs::write(scratch.path("x.wasm"), "hello").unwrap();
    let out =
        storyline(&["--data-dir", &scratch.str("data"), "plugin", "check", &scratch.str("x.wasm")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("storyline: plugin "), "{stderr}");
    assert!(stderr.contains("x.wasm: not a WebAssembly file"), "{stderr}");
}

#[test]
fn plugin_test_puts_every_sample_event_in_exactly_one_story() {
    let scratch = Scratch::new("ptest");
    let file = plugin("network-session").display().to_string();
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "test",
        &file,
        "--events",
        &sample(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let story: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in ["id", "kind", "event_ids", "first_seen", "last_seen", "revision", "fields"] {
            assert!(story.get(key).is_some(), "missing {key} in {line}");
        }
        let id = story["id"].as_str().unwrap().to_string();
        let newer =
            latest.get(&id).is_none_or(|old| old["revision"].as_u64() < story["revision"].as_u64());
        if newer {
            latest.insert(id, story);
        }
    }
    let mut seen: Vec<String> = latest
        .values()
        .flat_map(|s| {
            s["event_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string())
        })
        .collect();
    seen.sort();
    let mut expected: Vec<String> = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn plugin_test_names_the_bad_line_of_an_events_file() {
    let scratch = Scratch::new("ptest-bad");
    std::fs::write(
        scratch.path("events.jsonl"),
        "{\"source\":\"s\",\"kind\":\"k\",\"time\":1}\n{\"source\":\"s\",\"kind\":\"k\"}\n",
    )
    .unwrap();
    let file = plugin("template").display().to_string();
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "test",
        &file,
        "--events",
        &scratch.str("events.jsonl"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("events.jsonl line 2: missing field \"time\""), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn plugin_test_asks_route_and_names_a_route_that_traps() {
    let scratch = Scratch::new("ptest-route");
    let events = scratch.path("events.jsonl");
    std::fs::write(&events, r#"{"id":"a","source":"s","kind":"k","time":1000}"#).unwrap();
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "test",
        &plugin("faulty").display().to_string(),
        "--events",
        &events.display().to_string(),
        "--config",
        r#"{"route": "trap"}"#,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("route") && stderr.contains("deliberate trap in route"), "{stderr}");
    // A rule whose route works says how many events it keyed.
    let ok = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "test",
        &plugin("template").display().to_string(),
        "--events",
        &events.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(stderr.contains("route keyed 1 of 1 events"), "{stderr}");
}

#[test]
fn plugin_test_by_arrival_gives_the_stories_run_gives_to_events_out_of_order() {
    // One user's events at 10:00, 10:08 and, arriving last, 10:04: with a 5-minute gap the
    // last one bridges the first two, whether cut by event time or by arrival.
    let scratch = Scratch::new("ptest-arrival");
    let events = scratch.path("events.jsonl");
    let line = |id: &str, t: &str| {
        format!(
            r#"{{"id":"{id}","source":"s","kind":"k","time":"2026-12-07T{t}Z","attributes":{{"session":"alice"}}}}"#
        )
    };
    let lines = [line("e1", "10:00:00"), line("e2", "10:08:00"), line("e3", "10:04:00")];
    std::fs::write(&events, lines.join("\n")).unwrap();
    for arrival in [false, true] {
        let mut args = vec![
            "--data-dir".to_string(),
            scratch.str("data"),
            "plugin".into(),
            "test".into(),
            plugin("template").display().to_string(),
            "--events".into(),
            events.display().to_string(),
            "--config".into(),
            r#"{"gap_ms": 300000}"#.into(),
            "--latest".into(),
        ];
        if arrival {
            args.push("--arrival".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = storyline(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stories: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|s: &serde_json::Value| s["kind"] != "merged")
            .collect();
        assert_eq!(stories.len(), 1, "arrival {arrival}: {stories:?}");
        assert_eq!(stories[0]["event_ids"].as_array().unwrap().len(), 3);
    }
}
