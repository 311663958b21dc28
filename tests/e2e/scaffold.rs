//! The plugin author's path, as an author walks it: `storyline plugin new`, the crate built and
//! tested outside the storyline workspace, `storyline plugin test` on the component; where
//! `plugin check` and `plugin test` keep their compile cache; `--deadline-ms`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::support::{Scratch, plugin, root, storyline};

/// A directory outside the workspace (in the system's temp dir), removed on drop: the new crate
/// must build with no storyline workspace around it.
struct Outside(PathBuf);

impl Outside {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("storyline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!dir.starts_with(root()), "{} is inside the workspace", dir.display());
        Outside(dir)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo <args>` in `dir` with its own target directory, as a plugin author runs it.
fn cargo(dir: &Path, target: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        // Flags meant for the host build must not leak into the plugin's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cannot run cargo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `step`, printing how long it took (`--nocapture` shows it).
fn timed<T>(step: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    eprintln!("scaffold: {step}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

/// The slow one: a fresh build of the SDK's dependencies for wasm32-wasip2 and natively
/// (here ~35 s on an idle machine, over 2 minutes beside other builds; ~13 s once
/// `target/scaffold` is warm).
#[test]
fn a_new_plugin_builds_outside_the_workspace_tests_natively_and_runs_in_plugin_test() {
    let outside = Outside::new("scaffold");
    // Under target/: the same disk as the workspace's builds, nothing shared with them.
    let target = root().join("target").join("scaffold");

    let out = timed("plugin new", || {
        storyline(&["plugin", "new", "my-rule", "--dir", &outside.0.display().to_string()])
    });
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = outside.0.join("my-rule");
    assert!(
        text(&out.stdout).contains(&format!("created plugin my-rule in {}", dir.display())),
        "{}",
        text(&out.stdout)
    );
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "tests/sample.rs",
        "events.jsonl",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }

    let out = timed("cargo build --target wasm32-wasip2 --release", || {
        cargo(&dir, &target, &["build", "--target", "wasm32-wasip2", "--release"])
    });
    assert!(out.status.success(), "the new crate does not build for Wasm:\n{}", text(&out.stderr));

    let out = timed("cargo test", || cargo(&dir, &target, &["test"]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("test every_sample_event_lands_in_exactly_one_story ... ok"),
        "{stdout}"
    );
    assert!(stdout.contains("test tests::groups_by_session_attribute_and_flow ... ok"), "{stdout}");

    // As the author runs it: in the crate, without --data-dir.
    let wasm = target.join("wasm32-wasip2/release/my_rule.wasm");
    let out = timed("storyline plugin test", || {
        Command::new(env!("CARGO_BIN_EXE_storyline"))
            .current_dir(&dir)
            .env_remove("STORYLINE_DATA_DIR")
            .env("XDG_CACHE_HOME", outside.0.join("cache"))
            .args(["plugin", "test", &wasm.display().to_string(), "--events", "events.jsonl"])
            .output()
            .unwrap()
    });
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut groups: Vec<Vec<String>> = stdout
        .lines()
        .map(|line| {
            let story: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(story["kind"], "my-rule", "{line}");
            let ids = story["event_ids"].as_array().unwrap().iter();
            let mut ids: Vec<String> = ids.map(|v| v.as_str().unwrap().to_string()).collect();
            ids.sort();
            ids
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            vec!["dns-0001"],
            vec!["edr-0001", "edr-0002"],
            vec!["fw-0001", "proxy-0001", "tls-0001"],
            vec!["fw-0002"],
        ]
    );
    assert!(stderr.contains("7 events in 6 buckets -> 4 stories"), "{stderr}");
    assert!(!dir.join("storyline-data").exists(), "the compile cache went into the crate");
    let cached = std::fs::read_dir(outside.0.join("cache/storyline/components")).unwrap().count();
    assert_eq!(cached, 1, "one compiled component in the user's cache");
}

#[test]
fn plugin_new_refuses_an_invalid_name_and_an_existing_directory() {
    let scratch = Scratch::new("scaffold-refusals");
    let dir = scratch.0.display().to_string();
    let out = storyline(&["plugin", "new", "My Rule", "--dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("storyline: invalid plugin name \"My Rule\": it starts with 'M'; a plugin name is a Rust crate name: lowercase ASCII letters, digits, '-' and '_', starting with a letter"),
        "{stderr}"
    );
    assert!(std::fs::read_dir(&scratch.0).unwrap().next().is_none(), "nothing written");

    std::fs::create_dir(scratch.path("taken")).unwrap();
    std::fs::write(scratch.path("taken/notes.txt"), "mine").unwrap();
    let out = storyline(&["plugin", "new", "taken", "--dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("taken already exists; `plugin new` never writes into"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(scratch.path("taken")).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "the existing directory is left as it was");
}

#[test]
fn plugin_check_without_a_data_dir_caches_in_the_users_cache_directory() {
    let scratch = Scratch::new("scaffold-cache");
    let file = plugin("template").display().to_string();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_storyline"))
            .current_dir(&scratch.0)
            .env_remove("STORYLINE_DATA_DIR")
            .env("XDG_CACHE_HOME", scratch.path("xdg"))
            .args(["plugin", "check", &file])
            .output()
            .unwrap()
    };
    let first = check();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("compile:  compiled in "), "{}", text(&first.stdout));
    let again = check();
    assert!(text(&again.stdout).contains("compile:  loaded from cache"), "{}", text(&again.stdout));
    assert!(
        !scratch.path("storyline-data").exists(),
        "no ./storyline-data in the current directory"
    );
    let entries = std::fs::read_dir(scratch.path("xdg/storyline/components")).unwrap().count();
    assert_eq!(entries, 1);
}

#[test]
fn plugin_test_stops_a_looping_rule_at_the_deadline_given() {
    let scratch = Scratch::new("scaffold-deadline");
    std::fs::write(
        scratch.path("events.jsonl"),
        r#"{"id":"a","source":"s","kind":"flow","time":1}"#,
    )
    .unwrap();
    let started = Instant::now();
    let out = storyline(&[
        "--data-dir",
        &scratch.str("data"),
        "plugin",
        "test",
        &plugin("faulty").display().to_string(),
        "--events",
        &scratch.str("events.jsonl"),
        "--config",
        r#"{"mode": "loop"}"#,
        "--deadline-ms",
        "200",
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("process of bucket"), "{stderr}");
    assert!(stderr.contains("plugin ran past its 200 ms deadline and was stopped"), "{stderr}");
    assert!(stderr.contains("`--deadline-ms` gives each call more time"), "{stderr}");
    assert!(out.stdout.is_empty());
    eprintln!("a looping rule failed after {took:?}, compiling included");
}
