//! The whole loop with the real binary, the real plugin and the embedded store:
//! generate → ingest → run → stories.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use crate::support::{Scratch, plugin, storyline};

/// A data directory and a plugin directory holding network-session for tenant `acme`.
struct Site {
    scratch: Scratch,
}

impl Site {
    fn new(name: &str) -> Self {
        let scratch = Scratch::new(name);
        std::fs::create_dir_all(scratch.path("plugins/acme")).unwrap();
        std::fs::copy(plugin("network-session"), scratch.path("plugins/acme/network_session.wasm"))
            .unwrap();
        Site { scratch }
    }

    fn run(&self, args: &[&str]) -> Output {
        let data = self.scratch.str("data");
        let plugins = self.scratch.str("plugins");
        let mut all = vec!["--data-dir", &data, "--plugin-dir", &plugins];
        all.extend_from_slice(args);
        storyline(&all)
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "storyline {args:?} failed: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    fn generate(&self, file: &str, sessions: usize, seed: u64) -> String {
        let (stdout, _) = self.ok(&[
            "generate",
            "--sessions",
            &sessions.to_string(),
            "--seed",
            &seed.to_string(),
        ]);
        std::fs::write(self.scratch.path(file), &stdout).unwrap();
        self.scratch.str(file)
    }

    /// Short session timeouts for the tenant's plugin: stories are published within a second.
    fn short_sessions(&self) {
        std::fs::write(
            self.scratch.path("plugins/acme/network_session.json"),
            r#"{"gap_ms": 150, "skew_ms": 100, "dns_window_ms": 1000, "reopen_ms": 60000}"#,
        )
        .unwrap();
    }

    /// Waits (up to a minute) until a running worker opened its ingest socket; its path.
    fn wait_for_socket(&self) -> std::path::PathBuf {
        let socket = self.scratch.path("data/ingest.sock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not open its ingest socket"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        socket
    }

    /// Latest revision of every story: id → event ids.
    fn stories(&self) -> BTreeMap<String, Vec<String>> {
        let (stdout, _) = self.ok(&["stories", "--tenant", "acme"]);
        stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ids = v["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect();
                (v["id"].as_str().unwrap().to_string(), ids)
            })
            .collect()
    }
}

/// event id → ground-truth session, from a generated file.
fn truth(path: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Session names restart in every generated file: qualify them with the file.
            let session = v["attributes"]["gen.session"].as_str().unwrap();
            (v["id"].as_str().unwrap().to_string(), format!("{path}#{session}"))
        })
        .collect()
}

fn processed(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("processed "))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn assert_one_story_per_session(
    stories: &BTreeMap<String, Vec<String>>,
    truth: &BTreeMap<String, String>,
) {
    let mut seen = BTreeSet::new();
    let mut sessions_seen = BTreeSet::new();
    for (id, events) in stories {
        let sessions: BTreeSet<&String> = events.iter().map(|e| &truth[e]).collect();
        assert_eq!(sessions.len(), 1, "story {id} mixes sessions {sessions:?}");
        assert!(
            sessions_seen.insert(sessions.into_iter().next().unwrap().clone()),
            "a session is split"
        );
        for e in events {
            assert!(seen.insert(e.clone()), "event {e} is in two stories");
        }
    }
    assert_eq!(seen.len(), truth.len(), "every event is in a story");
}

#[test]
fn every_generated_event_lands_in_exactly_one_story() {
    let site = Site::new("loop");
    let file = site.generate("events.jsonl", 300, 7);
    let (_, ingest) = site.ok(&["ingest", "--tenant", "acme", &file]);
    assert!(ingest.contains("accepted 1200 events"), "{ingest}");
    let (_, run) = site.ok(&["run", "--exit-when-idle", "--delay-ms", "300"]);
    assert_eq!(processed(&run), 1200, "{run}");
    assert_one_story_per_session(&site.stories(), &truth(&file));
}

#[test]
fn offsets_advance_and_a_restart_resumes_from_the_offset() {
    let site = Site::new("resume");
    let first = site.generate("first.jsonl", 100, 1);
    let second = site.generate("second.jsonl", 100, 2);
    site.ok(&["ingest", "--tenant", "acme", &first]);
    let (_, run1) = site.ok(&["run", "--exit-when-idle", "--delay-ms", "300"]);
    assert_eq!(processed(&run1), 400);
    let (status, _) = site.ok(&["status", "--tenant", "acme"]);
    for line in status.lines().filter(|l| l.starts_with(char::is_numeric)) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_ne!(cols[3], "-", "every shard committed an offset: {status}");
        assert_eq!(cols[cols.len() - 1], "0", "no lag after the run: {status}");
    }
    site.ok(&["ingest", "--tenant", "acme", &second]);
    let (status, _) = site.ok(&["status", "--tenant", "acme"]);
    let waiting: u64 = status
        .lines()
        .filter(|l| l.starts_with(char::is_numeric))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(waiting, 400, "the second batch is pending: {status}");
    let (_, run2) = site.ok(&["run", "--exit-when-idle", "--delay-ms", "300"]);
    assert_eq!(processed(&run2), 400, "the restart reads only what came after the offsets");
    let mut all = truth(&first);
    all.extend(truth(&second));
    assert_one_story_per_session(&site.stories(), &all);
}

#[test]
fn ingest_rejects_bad_lines_by_number_and_stores_the_good_ones() {
    let site = Site::new("ingest-bad");
    std::fs::write(
        site.scratch.path("mixed.jsonl"),
        "{\"id\":\"a\",\"source\":\"s\",\"kind\":\"k\",\"time\":1}\nnot json\n{\"id\":\"b\",\"source\":\"s\",\"kind\":\"k\"}\n",
    )
    .unwrap();
    let out = site.run(&["ingest", "--tenant", "acme", &site.scratch.str("mixed.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("accepted 1 events"), "{stderr}");
    assert!(stderr.contains("mixed.jsonl line 2: expected ident"), "{stderr}");
    assert!(stderr.contains("mixed.jsonl line 3: missing field \"time\""), "{stderr}");
    let (status, _) = site.ok(&["status", "--tenant", "acme"]);
    let pending: u64 = status
        .lines()
        .filter(|l| l.starts_with(char::is_numeric))
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(pending, 1);
}

#[test]
fn a_tenant_without_a_plugin_is_told_where_to_put_it() {
    let site = Site::new("noplugin");
    let out = site.run(&["run", "--tenant", "globex", "--exit-when-idle"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenant globex has no plugin: put one in"), "{stderr}");
}

#[test]
fn sigterm_finishes_the_current_bucket_commits_and_exits_0() {
    let site = Site::new("sigterm");
    let file = site.generate("events.jsonl", 200, 5);
    site.ok(&["ingest", "--tenant", "acme", &file]);
    let data = site.scratch.str("data");
    let plugins = site.scratch.str("plugins");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(["--data-dir", &data, "--plugin-dir", &plugins, "run", "--delay-ms", "200"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The events are already stored and the delay is 200 ms: a few seconds are ample for the
    // worker to hand all 800 to the plugin (the assertion below checks that it did).
    std::thread::sleep(std::time::Duration::from_secs(5));
    crate::support::sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(processed(&stderr), 800, "{stderr}");
    // Sessions still open at the stop stay in the committed state; a later run drains them.
    site.ok(&["run", "--exit-when-idle", "--delay-ms", "200"]);
    assert_one_story_per_session(&site.stories(), &truth(&file));
}

#[test]
fn ingest_reaches_a_running_worker_through_its_socket() {
    let site = Site::new("socket");
    let file = site.generate("events.jsonl", 150, 8);
    let data = site.scratch.str("data");
    let plugins = site.scratch.str("plugins");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args([
            "--data-dir",
            &data,
            "--plugin-dir",
            &plugins,
            "run",
            "--tenant",
            "acme",
            "--delay-ms",
            "200",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The running worker owns the embedded store; ingest must go through its socket.
    let socket = site.wait_for_socket();
    let (_, ingest) = site.ok(&["ingest", "--tenant", "acme", &file]);
    assert!(ingest.contains("accepted 600 events"), "{ingest}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    // status and stories are answered by the running worker too.
    let (status, _) = site.ok(&["status", "--tenant", "acme"]);
    let pid = format!(":{} (", child.id());
    assert_eq!(
        status.lines().filter(|l| l.contains(&pid)).count(),
        4,
        "the run owns every shard: {status}"
    );
    site.ok(&["stories", "--tenant", "acme"]);
    crate::support::sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(processed(&stderr), 600, "{stderr}");
    assert!(!socket.exists(), "the socket is removed at exit");
    site.ok(&["run", "--exit-when-idle", "--delay-ms", "200"]);
    assert_one_story_per_session(&site.stories(), &truth(&file));
}

/// The first `n` lines of a generated file.
fn head(path: &str, n: usize) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().take(n).map(str::to_string).collect()
}

/// `storyline ingest … -` fed through a pipe that stays open until [`Pipe::close`].
struct Pipe {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Pipe {
    /// Starts `ingest` with `args` (its stdout piped) and writes `lines` into it.
    fn open(site: &Site, args: &[&str], lines: &[String]) -> Pipe {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let (data, plugins) = (site.scratch.str("data"), site.scratch.str("plugins"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_storyline"))
            .args(["--data-dir", &data, "--plugin-dir", &plugins, "ingest"])
            .args(args)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}", lines.join("\n")).unwrap();
        stdin.flush().unwrap();
        Pipe { child, stdin: Some(stdin) }
    }

    /// Checks that `ingest` was still reading, closes the pipe, and checks its report.
    fn close(mut self, accepted: usize) {
        assert_eq!(self.child.try_wait().unwrap(), None, "ingest is still reading");
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("accepted {accepted} events")), "{stderr}");
    }
}

#[test]
fn a_quiet_pipe_into_ingest_is_written_before_it_closes() {
    use std::io::BufRead;
    let site = Site::new("quiet-pipe");
    let lines = head(&site.generate("events.jsonl", 10, 3), 3);
    let mut pipe = Pipe::open(&site, &["--tenant", "acme", "--progress"], &lines);
    // `--progress` prints the count of durable events; the input is still open.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = pipe.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the 3 events were not made durable while the pipe stayed open");
        if line == "durable 3" {
            break;
        }
    }
    pipe.close(3);
}

#[test]
fn a_quiet_pipe_reaches_a_running_worker_before_it_closes() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let site = Site::new("quiet-socket");
    // Short session timeouts: stories are published while the pipe is still open.
    site.short_sessions();
    let lines = head(&site.generate("events.jsonl", 10, 6), 20);
    let (data, plugins) = (site.scratch.str("data"), site.scratch.str("plugins"));
    let run = Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(["--data-dir", &data, "--plugin-dir", &plugins])
        .args(["run", "--tenant", "acme", "--delay-ms", "100"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    site.wait_for_socket();
    let pipe = Pipe::open(&site, &["--tenant", "acme", "--bucket-ms", "100"], &lines);
    // The running worker gets the events, closes their sessions and publishes them while the
    // pipe stays open.
    let ids: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no story of the piped events while the pipe was open");
        std::thread::sleep(Duration::from_millis(250));
        let out = site.run(&["stories", "--tenant", "acme"]);
        let published = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && ids.iter().any(|id| published.contains(id.as_str())) {
            break;
        }
    }
    pipe.close(20);
    crate::support::sigterm(&run);
    let run = run.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn a_shard_lagging_by_half_the_retention_raises_the_alarm() {
    let site = Site::new("lag-alarm");
    let file = site.generate("events.jsonl", 50, 3);
    // Events are kept 6 s: a lag of 3 s is the alarm.
    let retention = ["--retention-secs", "6"];
    site.ok(&[&retention[..], &["ingest", "--tenant", "acme", &file]].concat());
    let (status, _) = site.ok(&[&retention[..], &["status", "--tenant", "acme"]].concat());
    assert!(!status.contains("ALARM"), "{status}");
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let (status, _) = site.ok(&[&retention[..], &["status", "--tenant", "acme"]].concat());
    assert!(status.contains("ALARM shard") && status.contains("retention (6 s)"), "{status}");
    // The worker says so too, and still processes every event (none is that old yet).
    let (_, run) =
        site.ok(&[&retention[..], &["run", "--exit-when-idle", "--delay-ms", "300"]].concat());
    assert!(run.contains("lag is over half the events' retention"), "{run}");
    assert_eq!(processed(&run), 200, "{run}");
    let (status, _) = site.ok(&[&retention[..], &["status", "--tenant", "acme"]].concat());
    assert!(!status.contains("ALARM"), "{status}");
}

#[test]
fn stories_follow_prints_each_revision_once_as_it_is_published() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let site = Site::new("follow");
    // Short session timeouts: stories are published while the worker runs.
    site.short_sessions();
    let file = site.generate("events.jsonl", 200, 4);
    site.ok(&["ingest", "--tenant", "acme", "--bucket-ms", "100", "--batch", "50", &file]);
    let (data, plugins) = (site.scratch.str("data"), site.scratch.str("plugins"));
    let base = ["--data-dir", &data, "--plugin-dir", &plugins];
    let (out_path, err_path) = (site.scratch.path("follow.out"), site.scratch.path("follow.err"));
    let mut follow = Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(base)
        .args(["stories", "--tenant", "acme", "--follow"])
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    // Nothing runs yet: it lists what there is, lets the store go and waits for a worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&err_path).unwrap().contains("waiting for `storyline run`") {
        assert!(Instant::now() < deadline, "follow did not wait for a worker");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The worker can open the store the follower let go of.
    let run = Command::new(env!("CARGO_BIN_EXE_storyline"))
        .args(base)
        .args(["run", "--tenant", "acme", "--delay-ms", "100"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the worker published 50 revisions (asked through its socket) and the follower has
    // printed each of them.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "follow did not keep up");
        std::thread::sleep(Duration::from_millis(250));
        let out = site.run(&["stories", "--tenant", "acme", "--all"]);
        if !out.status.success() {
            continue; // the worker's socket is not up yet
        }
        let all: BTreeSet<String> =
            String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
        let followed: BTreeSet<String> =
            std::fs::read_to_string(&out_path).unwrap().lines().map(str::to_string).collect();
        if all.len() >= 50 && followed.is_superset(&all) {
            break;
        }
    }
    crate::support::sigterm(&run);
    let run = run.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let _ = follow.kill();
    let _ = follow.wait();
    // Each revision once, and only revisions that were published.
    let lines: Vec<String> =
        std::fs::read_to_string(&out_path).unwrap().lines().map(str::to_string).collect();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), lines.len(), "a revision printed twice");
    let (stored, _) = site.ok(&["stories", "--tenant", "acme", "--all"]);
    let stored: BTreeSet<&str> = stored.lines().collect();
    assert!(lines.iter().all(|l| stored.contains(l.as_str())));
}

#[test]
fn schema_prints_the_tables_with_the_retention_as_ttl() {
    let out = storyline(&["--retention-secs", "3600", "schema", "--tenant", "acme"]);
    assert!(out.status.success());
    let cql = String::from_utf8(out.stdout).unwrap();
    let table = |name: &str| {
        cql.lines()
            .find(|l| l.contains(&format!("storyline_acme.{name} (")))
            .unwrap_or_else(|| panic!("no table {name} in {cql}"))
            .to_string()
    };
    for name in ["events", "buckets", "story_feed"] {
        assert!(table(name).contains("default_time_to_live = 3600"), "{}", table(name));
    }
    assert!(table("events").contains("tombstone_gc"));
    // For Apache Cassandra, without the options only ScyllaDB understands.
    let out = storyline(&["schema", "--tenant", "acme", "--cassandra"]);
    let cql = String::from_utf8(out.stdout).unwrap();
    assert!(
        !cql.contains("tombstone_gc") && cql.contains("default_time_to_live = 604800"),
        "{cql}"
    );
}
