//! `storyline bench quality` runs on a small sample and prints its table.

use crate::support::{Scratch, plugin, root, storyline};

#[test]
fn the_benchmark_runs_on_the_sample_and_prints_its_table() {
    let scratch = Scratch::new("quality");
    let fixtures = root().join("tests/fixtures/quality");
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "bench",
        "quality",
        "--plugin",
        &plugin("network-session").display().to_string(),
        "--config",
        r#"{"dns_joins_connection": false}"#,
        "--generated",
        "50",
        &fixtures.join("zeek").display().to_string(),
        &fixtures.join("suricata").display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("data") && lines[0].contains("precision"), "{stdout}");
    // Every data set plain and perturbed, the generated one once; two rules each.
    let rows = &lines[1..];
    assert_eq!(rows.len(), 2 * (2 + 2 + 1), "{stdout}");
    for set in ["zeek  ", "zeek (clocks ±30 s, 30% reversed)", "suricata  ", "storyline generate"]
    {
        let of_set: Vec<&&str> = rows.iter().filter(|r| r.starts_with(set)).collect();
        assert_eq!(of_set.len(), 2, "{set}: {stdout}");
        assert!(of_set[0].contains("network-session") && of_set[1].contains("naive"), "{stdout}");
    }
    for row in rows {
        // precision, recall and F1 are shares.
        let figures: Vec<f64> =
            row.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).collect();
        let shares = &figures[figures.len() - 4..figures.len() - 1];
        assert!(shares.iter().all(|x| (0.0..=1.0).contains(x)), "{row}");
    }
    assert!(stderr.contains("zeek: 13 events (13 with a session key)"), "{stderr}");
}

#[test]
fn a_data_directory_without_sensor_logs_is_named_in_the_error() {
    let scratch = Scratch::new("quality-empty");
    std::fs::create_dir_all(scratch.path("empty")).unwrap();
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "bench",
        "quality",
        "--plugin",
        &plugin("network-session").display().to_string(),
        &scratch.str("empty"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no Zeek logs"), "{stderr}");
}

/// `storyline bench tenants` and `bench store` run small and print their figures.
#[test]
fn the_tenants_and_store_benchmarks_run_small_and_print_their_figures() {
    let scratch = Scratch::new("bench-small");
    let rule = plugin("template").display().to_string();
    let data = scratch.str("data");
    let out = storyline(&[
        "--data-dir",
        &data,
        "bench",
        "tenants",
        "--plugin",
        &rule,
        "--tenants",
        "5",
        "--idle-secs",
        "1",
        "--busy-sessions",
        "200",
        "--rounds",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let idle = stdout.lines().find(|l| l.starts_with("5 idle tenants: start-up")).unwrap_or("");
    for figure in ["resident", "threads", "% of a core", "first bucket processed", "stop"] {
        assert!(idle.contains(figure), "{figure}: {stdout}");
    }
    assert!(stdout.contains("one busy tenant (800 events) processes"), "{stdout}");
    // Without a ScyllaDB node configured, only the embedded store is measured.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(["--data-dir", &data, "bench", "store", "--plugin", &rule])
        .args(["--sessions", "100", "--rounds", "1"])
        .env_remove("STORYLINE_SCYLLA_NODES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("embedded ingest: ") && stdout.contains("embedded run: "), "{stdout}");
    assert!(!stdout.contains("scylla"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let scratch_dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("scratch directory "))
        .and_then(|l| l.strip_suffix(" (removed at the end)"))
        .unwrap_or_else(|| panic!("no scratch directory named: {stderr}"));
    assert!(!std::path::Path::new(scratch_dir).exists(), "the bench removes {scratch_dir}");
}
