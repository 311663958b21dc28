//! The configuration file, `storyline.toml`: `storyline config check` accepts a good file and
//! names the file, key and allowed values of a bad one; a flag and a `STORYLINE_*` variable
//! beat the file, which beats the defaults; a tenant's configured plugin file and layout are
//! the ones `ingest` uses.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{Scratch, plugin};

/// The real binary in `dir` (where it looks for `./storyline.toml`), with `env` and no
/// `STORYLINE_*` variable of the test's own environment.
fn storyline_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_storyline"));
    cmd.current_dir(dir).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("STORYLINE_")) {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied()).output().expect("cannot run storyline")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A few generated events in `dir/events.jsonl`; its path.
fn events(scratch: &Scratch) -> String {
    let out = storyline_in(&scratch.0, &["generate", "--sessions", "20", "--seed", "4"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(scratch.path("events.jsonl"), &out.stdout).unwrap();
    scratch.str("events.jsonl")
}

/// `storyline ingest --tenant TENANT events` in the scratch directory, which must succeed.
fn ingest(scratch: &Scratch, tenant: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let file = events(scratch);
    let mut args = extra.to_vec();
    args.extend(["ingest", "--tenant", tenant, file.as_str()]);
    let out = storyline_in(&scratch.0, &args, env);
    assert_eq!(out.status.code(), Some(0), "ingest failed: {}", stderr(&out));
    stderr(&out)
}

const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn config_check_names_the_file_and_summarises_without_showing_tokens() {
    let scratch = Scratch::new("config-check");
    std::fs::write(
        scratch.path("site.toml"),
        format!(
            "data_dir = \"data\"\n[store]\nkind = \"embedded\"\nretention_secs = 3600\n\
             [http]\nlisten = \"127.0.0.1:8080\"\n\
             [tenants.acme]\nplugin = \"rules.wasm\"\ntokens = [\"{HASH}\", \"{HASH}\"]\nshards = 8\n"
        ),
    )
    .unwrap();
    let out = storyline_in(&scratch.0, &["config", "check", "--config-file", "site.toml"], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}{text}", stderr(&out));
    assert!(text.starts_with("site.toml: valid\n"), "{text}");
    assert!(text.contains("data_dir = data\n"), "relative to the file's directory: {text}");
    assert!(text.contains("store: embedded, retention 3600 s"), "{text}");
    assert!(text.contains("acme: plugin ./plugins/acme/rules.wasm, 2 tokens, 8 shards"), "{text}");
    assert!(!text.contains("sha256:"), "tokens are counted, never shown: {text}");
}

#[test]
fn without_a_file_config_check_says_the_defaults_apply() {
    let scratch = Scratch::new("config-none");
    let out = storyline_in(&scratch.0, &["config", "check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("no configuration file"), "{}", stdout(&out));
    assert!(stdout(&out).contains("data_dir = ./storyline-data"), "{}", stdout(&out));
}

#[test]
fn config_errors_name_the_file_the_key_and_what_is_allowed() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad TOML",
            "[store]\nkind = \"embedded\"\nnodes = [\"a:1\"\n",
            &["storyline.toml: TOML parse error at line 3"],
        ),
        (
            "unknown key",
            "[tenants.acme]\nshard = 4\n",
            &["storyline.toml: ", "line 2", "unknown field `shard`", "`shards`"],
        ),
        (
            "out of range",
            "[tenants.acme]\nshards = 0\n",
            &["storyline.toml: tenants.acme.shards = 0: must be between 1 and 1024"],
        ),
        (
            "plain token",
            "[tenants.acme]\ntokens = [\"hunter2\"]\n",
            &["storyline.toml: tenants.acme.tokens = [...]", "sha256:<64 lowercase hex digits>"],
        ),
        (
            "bad tenant name",
            "[tenants.Acme]\nshards = 2\n",
            &["storyline.toml: tenants.Acme = ", "lowercase letters, digits"],
        ),
        (
            "unknown store",
            "[store]\nkind = \"postgres\"\n",
            &["storyline.toml: ", "line 2", "`embedded`", "`scylla`"],
        ),
        (
            "plugin outside the folder",
            "[tenants.acme]\nplugin = \"../x.wasm\"\n",
            &[
                "storyline.toml: tenants.acme.plugin = \"../x.wasm\": must be a file name ending in .wasm",
            ],
        ),
    ];
    for (what, toml, expected) in cases {
        let scratch = Scratch::new("config-errors");
        std::fs::write(scratch.path("storyline.toml"), toml).unwrap();
        let out = storyline_in(&scratch.0, &["config", "check"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        for e in *expected {
            assert!(err.contains(e), "{what}: expected {e:?} in {err}");
        }
        assert!(!err.contains("hunter2"), "{what}: a token is never echoed: {err}");
        // Every other command refuses the file the same way.
        let out = storyline_in(&scratch.0, &["status", "--tenant", "acme"], &[]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(stderr(&out).contains(expected[0]), "{what}: {}", stderr(&out));
    }
}

#[test]
fn an_explicit_config_file_that_does_not_exist_is_an_error_naming_it() {
    let scratch = Scratch::new("config-missing");
    let out = storyline_in(&scratch.0, &["config", "check"], &[("STORYLINE_CONFIG", "gone.toml")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("configuration file gone.toml does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_flag_and_a_variable_beat_the_file_which_beats_the_default() {
    let scratch = Scratch::new("config-precedence");
    std::fs::write(scratch.path("storyline.toml"), "data_dir = \"from-file\"\n").unwrap();
    // The file beats the default (./storyline-data).
    ingest(&scratch, "acme", &[], &[]);
    assert!(scratch.path("from-file").is_dir());
    assert!(!scratch.path("storyline-data").exists());
    // A variable beats the file.
    ingest(&scratch, "acme", &[], &[("STORYLINE_DATA_DIR", "from-env")]);
    assert!(scratch.path("from-env").is_dir());
    // A flag beats the variable and the file.
    ingest(&scratch, "acme", &["--data-dir", "from-flag"], &[("STORYLINE_DATA_DIR", "from-env2")]);
    assert!(scratch.path("from-flag").is_dir());
    assert!(!scratch.path("from-env2").exists());
    // Each holds the events it was given: status finds the tenant in each.
    for dir in ["from-file", "from-env", "from-flag"] {
        let out = storyline_in(&scratch.0, &["--data-dir", dir, "status", "--tenant", "acme"], &[]);
        assert_eq!(out.status.code(), Some(0), "{dir}: {}", stderr(&out));
    }
    // No file at all: the built-in default, as before there were files.
    std::fs::remove_file(scratch.path("storyline.toml")).unwrap();
    ingest(&scratch, "acme", &[], &[]);
    assert!(scratch.path("storyline-data").is_dir());
}

#[test]
fn a_tenants_configured_shards_and_bucket_length_are_its_first_layout_unless_flags_say_otherwise() {
    let scratch = Scratch::new("config-layout");
    std::fs::write(
        scratch.path("storyline.toml"),
        "[tenants.acme]\nshards = 3\nbucket_ms = 500\nretention_secs = 3600\n[tenants.beta]\nshards = 5\n",
    )
    .unwrap();
    let said = ingest(&scratch, "acme", &[], &[]);
    assert!(said.contains("into tenant acme (3 shards, 500 ms buckets)"), "{said}");
    let out = storyline_in(&scratch.0, &["status", "--tenant", "acme"], &[]);
    let status = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The tenant's own retention; beta, without one, keeps the default week.
    assert!(
        status.starts_with("tenant acme: 3 shards, 500 ms buckets, events kept 3600 s\n"),
        "{status}"
    );
    let shard_lines = status.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(shard_lines.count(), 3, "one line per shard: {status}");
    let said = ingest(&scratch, "beta", &[], &[]);
    assert!(said.contains("(5 shards, 1000 ms buckets)"), "{said}");
    let out = storyline_in(&scratch.0, &["status", "--tenant", "beta"], &[]);
    assert!(stdout(&out).contains("events kept 604800 s"), "{}", stdout(&out));
    let said = ingest(&scratch, "gamma", &[], &[]);
    assert!(said.contains("(4 shards, 1000 ms buckets)"), "not configured: the default: {said}");
    // A flag beats the file for a new tenant.
    std::fs::write(scratch.path("storyline.toml"), "[tenants.delta]\nshards = 5\n").unwrap();
    let file = scratch.str("events.jsonl");
    let out =
        storyline_in(&scratch.0, &["ingest", "--tenant", "delta", "--shards", "2", &file], &[]);
    assert!(stderr(&out).contains("(2 shards, 1000 ms buckets)"), "{}", stderr(&out));
}

#[test]
fn a_tenants_configured_plugin_file_is_its_plugin_and_a_missing_one_is_reported() {
    let scratch = Scratch::new("config-plugin");
    let folder = scratch.path("plugins/acme");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(plugin("network-session"), folder.join("a-first.wasm")).unwrap();
    std::fs::copy(plugin("network-session"), folder.join("rules.wasm")).unwrap();
    // Two files, none served before and none configured: not a choice by name.
    let said = ingest(&scratch, "acme", &[], &[]);
    assert!(said.contains("holds 2 plugin files"), "{said}");
    assert!(said.contains("routed by event id"), "{said}");
    // Configured: that file, the other ignored.
    std::fs::write(scratch.path("storyline.toml"), "[tenants.acme]\nplugin = \"rules.wasm\"\n")
        .unwrap();
    let said = ingest(&scratch, "acme", &[], &[]);
    assert!(said.contains("routed by rules@"), "{said}");
    assert!(said.contains("(./plugins/acme/rules.wasm)"), "{said}");
    assert!(said.contains("ignoring ./plugins/acme/a-first.wasm"), "{said}");
    // A configured file that is not there is reported, never replaced by the folder's other.
    std::fs::remove_file(folder.join("rules.wasm")).unwrap();
    let said = ingest(&scratch, "acme", &[], &[]);
    assert!(said.contains("names rules.wasm as tenant acme's plugin"), "{said}");
    assert!(said.contains("holds only a-first.wasm"), "{said}");
    assert!(!said.contains("routed by a-first@"), "{said}");
}
