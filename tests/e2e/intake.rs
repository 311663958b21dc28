//! Intake never stops because of a plugin: a `route` that traps, loops or writes to stderr, and
//! a plugin folder with a stray or broken file, still let every event in, standalone and through
//! a running host; what happened is said, and nothing is lost.

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Scratch, plugin, sigterm, storyline};

/// A data directory and a plugin directory for tenant `acme`.
struct Site {
    scratch: Scratch,
}

impl Site {
    fn new(name: &str) -> Self {
        let scratch = Scratch::new(name);
        std::fs::create_dir_all(scratch.path("plugins/acme")).unwrap();
        Site { scratch }
    }

    /// Installs a built plugin as `plugins/acme/<file>`, with `config` beside it if given.
    fn install(&self, name: &str, file: &str, config: Option<&str>) {
        std::fs::copy(plugin(name), self.scratch.path(&format!("plugins/acme/{file}"))).unwrap();
        if let Some(config) = config {
            let json = std::path::Path::new(file).with_extension("json");
            std::fs::write(self.scratch.path("plugins/acme").join(json), config).unwrap();
        }
    }

    fn args<'a>(&'a self, data: &'a str, plugins: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--data-dir", data, "--plugin-dir", plugins];
        all.extend_from_slice(args);
        all
    }

    fn run(&self, args: &[&str]) -> Output {
        let (data, plugins) = (self.scratch.str("data"), self.scratch.str("plugins"));
        storyline(&self.args(&data, &plugins, args))
    }

    /// `storyline ingest` of `events` lines; asserts exit 0 and that every line was accepted;
    /// its stderr.
    fn ingest(&self, events: &[String]) -> String {
        let file = self.scratch.path("events.jsonl");
        std::fs::write(&file, events.join("\n")).unwrap();
        let out = self.run(&["ingest", "--tenant", "acme", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "ingest failed: {stderr}");
        assert!(stderr.contains(&format!("accepted {} events", events.len())), "{stderr}");
        stderr
    }

    /// A live `storyline run` for acme (no `--exit-when-idle`), once its socket is open.
    fn start(&self) -> Host {
        let (data, plugins) = (self.scratch.str("data"), self.scratch.str("plugins"));
        let child = Command::new(env!("CARGO_BIN_EXE_storyline"))
            .args(self.args(&data, &plugins, &["run", "--tenant", "acme", "--delay-ms", "100"]))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let socket = self.scratch.path("data/ingest.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the worker did not open its ingest socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Host(Some(child))
    }

    /// `storyline status` once it shows `what` (it may take a running host a moment).
    fn status_showing(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["status", "--tenant", "acme"]);
            let status = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if status.contains(what) {
                return status;
            }
            assert!(Instant::now() < deadline, "status never shows {what:?}: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every event id in the latest revision of acme's stories.
    fn events_in_stories(&self) -> BTreeSet<String> {
        let out = self.run(&["stories", "--tenant", "acme"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A running `storyline run`, killed if a test fails before it stops it.
struct Host(Option<Child>);

impl Host {
    /// SIGTERM, then its exit status and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        let child = self.0.take().unwrap();
        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` small events with ids `<prefix>-<i>`.
fn events(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"{prefix}-{i}","source":"fw-{}","kind":"flow","time":{}}}"#,
                i % 3,
                1_800_000_000_000i64 + i as i64
            )
        })
        .collect()
}

fn ids(events: &[String]) -> BTreeSet<String> {
    events
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().into()
        })
        .collect()
}

#[test]
fn a_route_that_traps_loops_or_writes_to_stderr_never_stops_a_standalone_ingest() {
    for (mode, says) in [
        ("trap", "deliberate trap in route"),
        ("loop", "deadline"),
        ("stderr", "routed by faulty@"),
    ] {
        let site = Site::new(&format!("route-{mode}"));
        site.install("faulty", "faulty.wasm", Some(&format!(r#"{{"route": "{mode}"}}"#)));
        let sent = events(mode, 2500);
        let stderr = site.ingest(&sent);
        assert!(stderr.contains(says), "{mode}: {stderr}");
        if mode == "stderr" {
            assert!(!stderr.contains("route failed"), "{mode}: {stderr}");
        } else {
            assert!(stderr.contains("routed by event id"), "{mode}: {stderr}");
        }
        // Nothing lost: every event reaches the plugin and a story.
        let out = site.run(&["run", "--exit-when-idle", "--delay-ms", "100"]);
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(site.events_in_stories(), ids(&sent), "{mode}");
    }
}

#[test]
fn a_route_that_traps_never_stops_ingest_through_a_running_host() {
    let site = Site::new("route-trap-live");
    site.install("faulty", "faulty.wasm", Some(r#"{"route": "trap"}"#));
    let host = site.start();
    let warm_up = events("w", 1);
    site.ingest(&warm_up);
    site.status_showing("plugin: faulty@");
    let first = events("a", 1500);
    let stderr = site.ingest(&first);
    assert!(stderr.contains("the version the running host serves"), "{stderr}");
    // Every batch's route traps until the rule is given up (after 3 in a row); how the 1,500
    // lines are cut into batches depends on how fast they arrive.
    let number_after = |text: &str, marker: &str| -> u64 {
        let at = text.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {text}"));
        let rest = &text[at + marker.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let batches = number_after(&stderr, "events in ");
    let failed = number_after(&stderr, "route failed on ");
    assert!(failed >= 1 && failed <= batches.min(3), "{stderr}");
    // The connection and the host survive: a second ingest goes through as well.
    let second = events("b", 10);
    site.ingest(&second);
    let (code, host_stderr) = host.stop();
    assert_eq!(code, Some(0), "{host_stderr}");
    assert!(host_stderr.contains("deliberate trap in route"), "the guest's stderr: {host_stderr}");
    let out = site.run(&["run", "--exit-when-idle", "--delay-ms", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut all = ids(&first);
    all.extend(ids(&second));
    all.extend(ids(&warm_up));
    assert_eq!(site.events_in_stories(), all);
}

#[test]
fn a_stray_wasm_beside_the_tenants_plugin_changes_nothing_and_is_reported() {
    let site = Site::new("stray");
    site.install("network-session", "network_session.wasm", None);
    let host = site.start();
    let sent = events("w", 1);
    site.ingest(&sent);
    site.status_showing("plugin: network_session@");
    std::fs::write(site.scratch.path("plugins/acme/broken.wasm"), "half a copy").unwrap();
    // The running host keeps its plugin and reports the stray file.
    let status = site.status_showing("ignored plugin files");
    assert!(status.contains("broken.wasm"), "{status}");
    assert!(status.contains("last reload error: none"), "{status}");
    assert!(status.contains("plugin: network_session@"), "{status}");
    let through_host = site.ingest(&events("a", 20));
    assert!(
        through_host.contains("routed by network_session@")
            && through_host.contains("the version the running host serves"),
        "{through_host}"
    );
    let (code, host_stderr) = host.stop();
    assert_eq!(code, Some(0), "{host_stderr}");

    // Standalone: the file that served before is still the tenant's plugin.
    let standalone = site.ingest(&events("b", 20));
    assert!(standalone.contains("routed by network_session@"), "{standalone}");
    assert!(standalone.contains("ignoring") && standalone.contains("broken.wasm"), "{standalone}");

    // The plugin itself half-overwritten: the last version that loaded still routes.
    std::fs::write(site.scratch.path("plugins/acme/network_session.wasm"), "\0asm garbage")
        .unwrap();
    let broken = site.ingest(&events("c", 20));
    assert!(
        broken.contains("routed by network_session@")
            && broken.contains("the last version that loaded"),
        "{broken}"
    );
}

#[test]
fn two_plugins_and_no_history_are_refused_by_run_and_never_by_ingest() {
    let site = Site::new("two-plugins");
    site.install("network-session", "network_session.wasm", None);
    site.install("template", "template.wasm", None);
    let stderr = site.ingest(&events("a", 10));
    assert!(stderr.contains("holds 2 plugin files"), "{stderr}");
    assert!(stderr.contains("routed by event id"), "{stderr}");
    let out = site.run(&["run", "--exit-when-idle", "--delay-ms", "100"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("network_session.wasm, template.wasm")
            && stderr.contains("keep one .wasm per tenant folder"),
        "{stderr}"
    );
}

#[test]
fn run_logs_each_dead_letter_with_the_way_to_replay_it() {
    let site = Site::new("dead-letter-log");
    site.install("faulty", "faulty.wasm", Some(r#"{"mode": "fail"}"#));
    site.ingest(&events("d", 5));
    let out = site.run(&[
        "run",
        "--exit-when-idle",
        "--delay-ms",
        "100",
        "--attempts",
        "1",
        "--backoff-ms",
        "10",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("bucket dead-lettered"), "{stderr}");
    assert!(stderr.contains("storyline replay --tenant acme"), "{stderr}");
    assert!(stderr.contains("refusing bucket"), "the plugin's own reason: {stderr}");
}
