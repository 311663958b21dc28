//! Kill -9 torture: the real binary on the embedded store is killed at random moments (while
//! it reads, runs the plugin, publishes and commits) and restarted; what it publishes in the
//! end must equal a crash-free run's, and no `(story id, revision)` may ever have been
//! published with two contents. A producer killed mid-batch keeps every acknowledged event.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storyline::model::{BucketStart, ShardId, TenantId};
use storyline::store::Store;
use storyline::store::embedded::EmbeddedStore;

use crate::support::{Scratch, plugin};

/// A small deterministic random sequence; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("STORYLINE_TORTURE_SEED").ok().and_then(|s| s.parse().ok());
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    });
    eprintln!("torture seed {seed} (STORYLINE_TORTURE_SEED={seed} replays it)");
    seed
}

fn storyline(data: &Path, plugins: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_storyline"));
    c.arg("--data-dir").arg(data).arg("--plugin-dir").arg(plugins).args(args);
    c.env_remove("STORYLINE_DATA_DIR").env_remove("STORYLINE_PLUGIN_DIR");
    c
}

fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every line of `stories --all` (each revision's content), as a set.
fn all_revisions(data: &Path, plugins: &Path) -> BTreeSet<String> {
    ok(storyline(data, plugins, &["stories", "--tenant", "acme", "--all"]))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_worker_killed_at_random_moments_publishes_what_a_crash_free_run_publishes() {
    let mut rng = Rng(seed());
    let scratch = Scratch::new("torture");
    let plugins = scratch.path("plugins");
    std::fs::create_dir_all(plugins.join("acme")).unwrap();
    std::fs::copy(plugin("network-session"), plugins.join("acme/network_session.wasm")).unwrap();
    // Short session timeouts so that stories are published while buckets are processed, not
    // only when the run drains.
    std::fs::write(
        plugins.join("acme/network_session.json"),
        r#"{"gap_ms": 150, "skew_ms": 100, "dns_window_ms": 1000, "reopen_ms": 60000}"#,
    )
    .unwrap();
    let events = ok(storyline(
        &scratch.path("x"),
        &plugins,
        &["generate", "--sessions", "1500", "--seed", "3"],
    ));
    let ids: BTreeSet<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().into()
        })
        .collect();
    std::fs::write(scratch.path("events.jsonl"), &events).unwrap();

    // One ingest (100 ms buckets, small batches: many partitions), then two identical copies.
    let base = scratch.path("base");
    let mut ingest = storyline(
        &base,
        &plugins,
        &["ingest", "--tenant", "acme", "--bucket-ms", "100", "--batch", "100"],
    );
    ingest.arg(scratch.path("events.jsonl"));
    ok(ingest);
    let (calm, crashy) = (scratch.path("calm"), scratch.path("crashy"));
    copy_dir(&base, &calm);
    copy_dir(&base, &crashy);
    let run_args = |log: &Path| -> Vec<String> {
        [
            "run",
            "--exit-when-idle",
            "--delay-ms",
            "0",
            "--checkpoint-ms",
            "50",
            "--stories-out",
            log.to_str().unwrap(),
        ]
        .map(str::to_string)
        .to_vec()
    };

    // The crash-free reference.
    let calm_log = scratch.path("calm.jsonl");
    let calm_started = Instant::now();
    ok(storyline(
        &calm,
        &plugins,
        &run_args(&calm_log).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let calm_took = calm_started.elapsed();

    // At least 20 kill -9 while the worker is busy, then a run to the end.
    let crashy_log = scratch.path("crashy.jsonl");
    let args = run_args(&crashy_log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut kills, mut finished_early, mut attempts) = (0, 0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(attempts < 200, "the worker keeps finishing before it can be killed");
        let mut child = storyline(&crashy, &plugins, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Anywhere from start-up to the end of a crash-free run's length.
        let at =
            Instant::now() + Duration::from_millis(20 + rng.below(calm_took.as_millis() as u64));
        while Instant::now() < at && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_some() {
            finished_early += 1;
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let before_last = std::fs::read_to_string(&crashy_log).unwrap_or_default().lines().count();
    eprintln!(
        "crash-free run {calm_took:?}; {kills} kills ({finished_early} runs finished before their kill) published {before_last} story lines before the last run"
    );
    ok(storyline(&crashy, &plugins, &args));

    // The same stories, every revision, as without crashes.
    let calm_all = all_revisions(&calm, &plugins);
    let crashy_all = all_revisions(&crashy, &plugins);
    assert!(!calm_all.is_empty());
    if let Ok(dump) = std::env::var("STORYLINE_TORTURE_DUMP") {
        std::fs::write(
            format!("{dump}.calm"),
            calm_all.iter().cloned().collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
        std::fs::write(
            format!("{dump}.crashy"),
            crashy_all.iter().cloned().collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
    }
    assert_eq!(crashy_all, calm_all, "published stories differ from the crash-free run's");

    // Every event reached the plugin: the stories hold them all.
    let latest = ok(storyline(&crashy, &plugins, &["stories", "--tenant", "acme"]));
    let mut in_stories = BTreeSet::new();
    for line in latest.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for id in v["event_ids"].as_array().unwrap() {
            in_stories.insert(id.as_str().unwrap().to_string());
        }
    }
    assert_eq!(in_stories, ids, "events that never reached a story");

    // Nothing published with two contents under one (id, revision), across all the runs (a
    // line cut by a kill is skipped).
    let mut contents: BTreeMap<(String, u64), String> = BTreeMap::new();
    let log = std::fs::read_to_string(&crashy_log).unwrap();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let key = (v["id"].as_str().unwrap().to_string(), v["revision"].as_u64().unwrap());
        let body = line.to_string();
        if let Some(before) = contents.insert(key.clone(), body.clone()) {
            assert_eq!(before, body, "{key:?} published with two contents");
        }
    }
    assert!(!contents.is_empty());
}

#[test]
fn a_producer_killed_mid_batch_keeps_every_acknowledged_event() {
    let mut rng = Rng(seed());
    let scratch = Scratch::new("producer-kill");
    let plugins = scratch.path("plugins");
    let events = ok(storyline(
        &scratch.path("x"),
        &plugins,
        &["generate", "--sessions", "20000", "--seed", "9"],
    ));
    let ids: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().into()
        })
        .collect();
    std::fs::write(scratch.path("events.jsonl"), &events).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for round in 0..3 {
        let data = scratch.path(&format!("data-{round}"));
        let mut c = storyline(
            &data,
            &plugins,
            &["ingest", "--tenant", "acme", "--batch", "250", "--progress"],
        );
        c.arg(scratch.path("events.jsonl")).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let acked: usize = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("durable ")?.parse().ok())
            .max()
            .unwrap_or(0);
        assert!(acked < ids.len(), "round {round}: the ingest finished before the kill");

        let store = EmbeddedStore::new(&data);
        let mut stored = BTreeSet::new();
        for shard in 0..4 {
            let mut after: Option<BucketStart> = None;
            while let Some(b) =
                rt.block_on(store.next_bucket(&tenant, ShardId(shard), after)).unwrap()
            {
                for e in rt
                    .block_on(store.read_bucket(&tenant, ShardId(shard), b))
                    .unwrap()
                    .into_events()
                {
                    stored.insert(e.id);
                }
                after = Some(b);
            }
        }
        eprintln!("round {round}: {acked} acknowledged, {} stored", stored.len());
        for id in &ids[..acked] {
            assert!(stored.contains(id), "round {round}: acknowledged event {id} is lost");
        }
    }
}
