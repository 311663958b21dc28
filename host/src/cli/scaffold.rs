//! `storyline plugin new`: the crate of a new rule, made from the `template` plugin.
//!
//! The rule's code is the template's own (`plugins/template/src/lib.rs`, embedded at build time,
//! so the two cannot drift apart), renamed; around it come what a plugin author needs to build
//! and try it alone: its own `[workspace]` (it builds inside another workspace's directory too),
//! a release profile fit for Wasm, a sample `events.jsonl` and a test that runs it natively, a
//! README, a `.gitignore`, and the `Cargo.lock` of this storyline build (the versions the SDK was
//! tested with; the first build then needs no registry look-up for them).
//!
//! The SDK is not on crates.io: the crate depends on it by `path`, the checkout this binary was
//! built from, with the release's `version` so that cargo refuses a checkout that has moved to
//! another release. The generated `Cargo.toml` and README say how to use a `git` dependency
//! instead.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The template rule's source. Its `Template` type and `"template"` story kind are renamed.
const TEMPLATE_LIB: &str = include_str!("../../../plugins/template/src/lib.rs");
/// The workspace's lock file: the dependency versions this release was built and tested with.
const WORKSPACE_LOCK: &str = include_str!("../../../Cargo.lock");

/// The storyline (and SDK: both take the workspace's version) release that writes the crate.
const RELEASE: &str = env!("CARGO_PKG_VERSION");
/// The toolchain the SDK needs.
const RUST_VERSION: &str = env!("CARGO_PKG_RUST_VERSION");

/// Names a plugin cannot take: Rust keywords (the library would be unusable), names cargo
/// refuses or reserves, names of the crate's own dependencies, and names Windows reserves for
/// devices (the crate's directory could not be created there).
#[rustfmt::skip] // Grouped by reason, a line per group.
const RESERVED: &[&str] = &[
    // Keywords, strict and reserved (edition 2024).
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
    // Built-in libraries and cargo's artifact directories.
    "std", "core", "alloc", "proc_macro", "test", "build", "deps", "examples", "incremental",
    // The crate's dependencies.
    "storyline_sdk", "serde", "serde_json",
    // Windows device names.
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Type names the rule's code already uses: a rule named after one gets `Rule` appended
/// (`event` → `EventRule`), or its type would shadow the import.
#[rustfmt::skip]
const TAKEN_TYPES: &[&str] = &[
    "Bucket", "Correlator", "Error", "Event", "Story", "EcsEvent", "SessionConfig", "Sessionizer",
    "Harness", "Option", "Result", "Some", "None", "Ok", "Err", "String", "Vec", "Box", "Self",
];

/// The longest name: crates.io's limit, kept so the crate can be published later.
const MAX_NAME: usize = 64;

/// A name `plugin new` refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid plugin name {name:?}: {reason}; a plugin name is a Rust crate name: lowercase ASCII \
     letters, digits, '-' and '_', starting with a letter, at most 64 characters (e.g. \"my-rule\")"
)]
pub struct InvalidName {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A valid plugin (crate) name, e.g. `my-rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginName(String);

impl PluginName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<PluginName, InvalidName> {
        let refuse = |reason: String| Err(InvalidName { name: name.to_string(), reason });
        let Some(first) = name.chars().next() else {
            return refuse("it is empty".into());
        };
        if !first.is_ascii_lowercase() {
            return refuse(format!("it starts with {first:?}"));
        }
        if let Some(c) = name.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_')) {
            return refuse(format!("it contains {c:?}"));
        }
        if name.len() > MAX_NAME {
            return refuse(format!("it is {} characters long", name.len()));
        }
        let lib = name.replace('-', "_");
        if RESERVED.contains(&lib.as_str()) || name == "proc-macro" {
            return refuse(
                "it is a Rust keyword or a name cargo, the crate or Windows reserves".into(),
            );
        }
        Ok(PluginName(name.to_string()))
    }

    /// The name as given: the package name and the story kind.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The library's name, as Rust code and the built `.wasm` file name it (`my_rule`).
    pub fn lib(&self) -> String {
        self.0.replace('-', "_")
    }

    /// The rule's type (`MyRule`).
    pub fn type_name(&self) -> String {
        let mut out: String = self
            .0
            .split(['-', '_'])
            .filter(|part| !part.is_empty())
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |c| c.to_ascii_uppercase().to_string())
                    + chars.as_str()
            })
            .collect();
        if TAKEN_TYPES.contains(&out.as_str()) {
            out.push_str("Rule");
        }
        out
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SDK of the storyline checkout this binary was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkCheckout {
    /// Its directory (absolute when it exists).
    pub path: PathBuf,
    /// Whether it is still there: a binary copied elsewhere, or a checkout since removed,
    /// writes a dependency the author must point at their own checkout.
    pub exists: bool,
}

impl SdkCheckout {
    /// `<checkout>/sdk`, next to the `host/` this binary was built from.
    pub fn of_this_build() -> SdkCheckout {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk");
        match std::fs::canonicalize(&path) {
            Ok(path) if path.join("Cargo.toml").is_file() => SdkCheckout { path, exists: true },
            _ => SdkCheckout { path, exists: false },
        }
    }
}

/// One file of the new crate: its path inside the crate and its text.
pub type File = (&'static str, String);

/// The files of the crate for rule `name`, depending on the SDK in `sdk`.
pub fn files(name: &PluginName, sdk: &Path) -> anyhow::Result<Vec<File>> {
    let sdk = sdk.to_str().with_context(|| {
        format!("the SDK's path {} is not UTF-8 and cannot be written in Cargo.toml", sdk.display())
    })?;
    // A JSON string is a valid TOML basic string (the same escapes), whatever the path holds.
    let sdk = serde_json::to_string(sdk)?;
    let fill = |text: &str| {
        text.replace("@NAME@", name.as_str())
            .replace("@LIB@", &name.lib())
            .replace("@TYPE@", &name.type_name())
            .replace("@RELEASE@", RELEASE)
            .replace("@RUST_VERSION@", RUST_VERSION)
            .replace("@SDK_PATH@", &sdk)
    };
    Ok(vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", rule_source(name)),
        ("tests/sample.rs", fill(SAMPLE_TEST)),
        ("events.jsonl", SAMPLE_EVENTS.to_string()),
        ("README.md", fill(README)),
        (".gitignore", "/target\n".to_string()),
        ("Cargo.lock", WORKSPACE_LOCK.to_string()),
    ])
}

/// Writes `files` into the new directory `root`, which must not exist; on failure, removes
/// what it wrote.
pub fn write(root: &Path, files: &[File]) -> anyhow::Result<()> {
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // `create_dir`, not `create_dir_all`: it fails if the directory exists, even when someone
    // makes it between a check and the write.
    if let Err(e) = std::fs::create_dir(root) {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::bail!(
                "{} already exists; `plugin new` never writes into an existing directory \
                 (choose another name, or another --dir)",
                root.display()
            );
        }
        return Err(e).with_context(|| format!("cannot create {}", root.display()));
    }
    let written = files.iter().try_for_each(|(path, text)| {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    });
    if written.is_err() {
        // The directory is ours: created above, holding only what this call wrote.
        let _ = std::fs::remove_dir_all(root);
    }
    written
}

/// The template's code for rule `name`: its own crate doc, the template's type and story kind
/// renamed.
fn rule_source(name: &PluginName) -> String {
    // The template's crate doc speaks of the template and of the storyline workspace; the
    // paragraph that says what the rule does is kept.
    let doc_end = TEMPLATE_LIB.lines().take_while(|l| l.starts_with("//!")).count();
    let doc: Vec<&str> = TEMPLATE_LIB.lines().take(doc_end).collect();
    let paragraphs: Vec<String> = doc
        .split(|l| l.trim_end() == "//!")
        .map(|p| p.join("\n"))
        .filter(|p| !p.starts_with("//! A minimal") && !p.starts_with("//! Build:"))
        .collect();
    let body: Vec<&str> = TEMPLATE_LIB.lines().skip(doc_end).collect();
    let lib = name.lib();
    let mut out = format!("//! {name}: a storyline correlation rule.\n//!\n");
    for p in paragraphs {
        out.push_str(&p);
        out.push_str("\n//!\n");
    }
    out.push_str(&format!(
        "//! Build: `cargo build --target wasm32-wasip2 --release`, then try it with\n\
         //! `storyline plugin test target/wasm32-wasip2/release/{lib}.wasm --events events.jsonl`.\n"
    ));
    out.push_str(
        &body
            .join("\n")
            .replace("Template", &name.type_name())
            .replace("\"template\"", &format!("\"{name}\"")),
    );
    out.push('\n');
    out
}

const CARGO_TOML: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2024"
rust-version = "@RUST_VERSION@"
publish = false

[lib]
# cdylib: the WebAssembly component storyline loads; rlib: the same rule linked natively, for
# `cargo test` (the tests in src/lib.rs and tests/).
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK of storyline @RELEASE@, which wrote this file. It builds the plugin world
# storyline:correlator/plugin@0.2.0, which storyline 0.2.x hosts run (see the SDK's README).
# The SDK is not published on crates.io, so it comes from a storyline checkout: this path is the
# one the `storyline` binary was built from, on the machine that ran `storyline plugin new`.
# `version` makes cargo refuse that checkout once it has moved to an incompatible release.
# On another machine (a colleague's, CI), depend on the storyline repository at this release
# instead (README.md, "The SDK"):
#   storyline-sdk = { git = "<URL of the storyline repository>", tag = "v@RELEASE@" }
storyline-sdk = { path = @SDK_PATH@, version = "@RELEASE@" }
# The rule's configuration is JSON (init's argument).
serde = { version = "1", features = ["derive"] }
serde_json = "1"

# This crate is a workspace of its own: it builds the same inside another workspace's directory.
[workspace]

# Plugins are built for wasm32-wasip2 in release: small and fast.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
debug = false
# Keep function names: the host's trap backtraces and profiles name the rule's functions.
strip = "debuginfo"
"#;

const SAMPLE_TEST: &str = r#"//! The sample events through the rule, natively: what `storyline plugin test` does with the
//! component, without building it.

use @LIB@::@TYPE@;
use storyline_sdk::testing::{Harness, latest_revisions};

#[test]
fn every_sample_event_lands_in_exactly_one_story() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/events.jsonl");
    let mut harness = Harness::<@TYPE@>::new("{}").unwrap_or_else(|e| panic!("init: {e}"));
    let stories = harness.run_jsonl_file(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut seen: Vec<String> =
        latest_revisions(stories).into_iter().flat_map(|s| s.event_ids).collect();
    seen.sort();
    let text = std::fs::read_to_string(path).unwrap();
    let mut expected: Vec<String> = storyline_sdk::format::parse_jsonl(&text)
        .unwrap_or_else(|e| panic!("{path}: {e:?}"))
        .into_iter()
        .map(|e| e.id.expect("every sample event has an id"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}
"#;

/// A firewall flow seen again by a proxy and, reversed, by a TLS inspector (one story by
/// community id); two endpoint events of one logon (one story by their `session` attribute);
/// a DNS lookup and a flow record without addresses (a story each).
const SAMPLE_EVENTS: &str = r#"{"id":"fw-0001","source":"fw-paris-01","kind":"flow","time":"2026-11-24T13:00:00.000Z","payload":{"source":{"ip":"10.1.2.3","port":51514},"destination":{"ip":"93.184.216.34","port":443},"network":{"transport":"tcp"}}}
{"id":"tls-0001","source":"tls-inspect-01","kind":"tls","time":"2026-11-24T13:00:00.400Z","payload":{"source":{"ip":"93.184.216.34","port":443},"destination":{"ip":"10.1.2.3","port":51514},"tls":{"client":{"server_name":"www.example.com"}}}}
{"id":"proxy-0001","source":"proxy-01","kind":"http","time":"2026-11-24T13:00:01.200Z","payload":{"source":{"ip":"10.1.2.3","port":51514},"destination":{"ip":"93.184.216.34","port":443},"url":{"full":"https://www.example.com/"},"http":{"request":{"method":"GET"},"response":{"status_code":200}}}}
{"id":"edr-0001","source":"edr-agent","kind":"process","time":"2026-11-24T13:00:02.000Z","attributes":{"session":"logon-42"},"payload":{"process":{"name":"ssh","pid":4242},"user":{"name":"alice"}}}
{"id":"edr-0002","source":"edr-agent","kind":"process","time":"2026-11-24T13:00:30.000Z","attributes":{"session":"logon-42"},"payload":{"process":{"name":"scp","pid":4250},"user":{"name":"alice"}}}
{"id":"dns-0001","source":"dns-resolver-01","kind":"dns","time":"2026-11-24T13:05:00.000Z","payload":{"source":{"ip":"10.1.2.3","port":53001},"destination":{"ip":"10.0.0.2","port":53},"network":{"transport":"udp"},"dns":{"question":{"name":"www.example.com"}}}}
{"id":"fw-0002","source":"fw-lyon-02","kind":"flow","time":"2026-11-24T13:10:00.000Z"}
"#;

const README: &str = r#"# @NAME@

A storyline correlation rule: a WebAssembly component that storyline runs, sandboxed, to group
a tenant's security events into stories. It starts as a copy of storyline's `template` rule
(`src/lib.rs`): events that share a session key (their `session` attribute, else the community
id of their flow, else their id) form one story; a session closes after a minute without
events, allowing for 30 s of clock skew between sensors.

## Build and try it

```sh
rustup target add wasm32-wasip2                       # once
cargo test                                            # the rule natively: src/lib.rs, tests/sample.rs
cargo build --target wasm32-wasip2 --release
storyline plugin check target/wasm32-wasip2/release/@LIB@.wasm
storyline plugin test target/wasm32-wasip2/release/@LIB@.wasm --events events.jsonl
```

`plugin test` cuts the events into 1 s buckets by event time (`--bucket-ms`), prints every
story revision as JSONL on stdout and a summary on stderr; `--latest` prints only the last
revision of each story, `--config '{"gap_ms": 5000}'` (or `--config @FILE`) passes a
configuration to `init`, and `--deadline-ms` bounds each call (10 s by default, as in
production), so a rule that loops fails fast. With the sample, expect four stories: the flow
seen by the firewall, the TLS inspector (reversed) and the proxy; the two endpoint events of
logon 42; the DNS lookup; the flow record without addresses.

## Deploy it

A tenant's rule is `<plugin dir>/<tenant>/<name>.wasm`, with an optional `<name>.json` beside
it passed to `init`:

```sh
mkdir -p plugins/acme
cp target/wasm32-wasip2/release/@LIB@.wasm plugins/acme/
storyline run                     # a running host picks up a new version without a restart
```

## Writing the rule

- `process` gets one bucket of events at a time and returns the stories to publish;
  `drain` publishes what is still open when the input ends.
- State kept across buckets must come back through `snapshot` and `restore`: the host
  checkpoints it and may restore it into a fresh instance (after a crash, a reload, or on
  another machine). `restore` keeps the configuration `init` was given, not the one saved in
  the snapshot, so that a changed configuration takes effect.
- Output must be deterministic: the same state and bucket give the same stories in the same
  order (prefer `BTreeMap` to `HashMap`).
- `route` gives the key that sends related events to the same shard.
- A call that traps, loops past its deadline or allocates past the tenant's memory limit is
  stopped; the host retries the bucket, then dead-letters it.

See the storyline SDK's documentation (`cargo doc --open -p storyline-sdk`) for the sessionizer,
Community ID, ECS field access and the test harness.

## The SDK

The SDK is not on crates.io. `Cargo.toml` takes it from the storyline checkout the `storyline`
binary that wrote this crate was built from (a `path` dependency); its `version` makes cargo
refuse that checkout once it has moved to a release incompatible with @RELEASE@. On another machine, use a `git` dependency on the storyline
repository at the same release instead (cargo finds the SDK's package inside it):

```toml
storyline-sdk = { git = "<URL of the storyline repository>", tag = "v@RELEASE@" }
# or, where the release has no tag, its commit: rev = "<commit>"
```

`Cargo.lock` holds the dependency versions storyline @RELEASE@ was built and tested with;
`cargo update` moves them.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PluginName {
        PluginName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn crate_names_are_accepted_and_typed_in_upper_camel_case() {
        assert_eq!(name("my-rule").type_name(), "MyRule");
        assert_eq!(name("my-rule").lib(), "my_rule");
        assert_eq!(name("dns_over_https2").type_name(), "DnsOverHttps2");
        assert_eq!(name("a--b").type_name(), "AB");
        assert_eq!(name("event").type_name(), "EventRule");
        assert_eq!(name("string").type_name(), "StringRule");
    }

    #[test]
    fn other_names_are_refused_saying_what_is_allowed() {
        for (bad, why) in [
            ("", "it is empty"),
            ("My-Rule", "it starts with 'M'"),
            ("2fast", "it starts with '2'"),
            ("-x", "it starts with '-'"),
            ("my rule", "it contains ' '"),
            ("my.rule", "it contains '.'"),
            ("règle", "it contains 'è'"),
            ("../evil", "it starts with '.'"),
            ("fn", "it is a Rust keyword"),
            ("test", "it is a Rust keyword or a name cargo"),
            ("storyline-sdk", "a name cargo, the crate"),
            ("con", "Windows"),
        ] {
            let err = PluginName::new(bad).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("lowercase ASCII letters, digits, '-' and '_'"), "{msg}");
        }
        let long = "a".repeat(65);
        assert!(PluginName::new(&long).is_err());
        assert!(PluginName::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn the_crate_is_the_template_renamed_with_no_placeholder_left() {
        let files = files(&name("my-rule"), Path::new("/opt/story\"line/sdk")).unwrap();
        let get = |p: &str| &files.iter().find(|(path, _)| *path == p).unwrap().1;
        for (path, text) in &files {
            for placeholder in ["@NAME@", "@LIB@", "@TYPE@", "@RELEASE@", "@RUST_VERSION@"] {
                assert!(!text.contains(placeholder), "{path}: {placeholder} left in {text}");
            }
            assert!(!text.contains("@SDK_PATH@"), "{path}");
        }
        let lib = get("src/lib.rs");
        assert!(lib.starts_with("//! my-rule: a storyline correlation rule.\n"), "{lib}");
        assert!(!lib.contains("emplate"), "{lib}");
        assert!(lib.contains("pub struct MyRule {"), "{lib}");
        assert!(lib.contains("export_correlator!(MyRule);"), "{lib}");
        assert!(lib.contains("s.story(\"my-rule\")"), "{lib}");
        assert!(lib.contains("It groups events that share a session key"), "{lib}");
        assert!(lib.contains("self.sessions.set_config(config);"), "restore keeps init's config");
        assert!(lib.contains("Harness::<MyRule>::new"), "{lib}");
        assert_eq!(lib.matches("//! Build:").count(), 1, "{lib}");
        let toml = get("Cargo.toml");
        assert!(toml.contains("name = \"my-rule\""), "{toml}");
        assert!(toml.contains(r#"path = "/opt/story\"line/sdk", version = ""#), "{toml}");
        assert!(toml.contains("crate-type = [\"cdylib\", \"rlib\"]"), "{toml}");
        assert!(toml.contains("\n[workspace]\n"), "{toml}");
        assert!(get("tests/sample.rs").contains("use my_rule::MyRule;"));
        assert!(get("README.md").contains("release/my_rule.wasm --events events.jsonl"));
    }

    #[test]
    fn the_sample_events_are_valid() {
        let events =
            storyline_sdk::format::parse_jsonl(SAMPLE_EVENTS).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(events.len(), 7);
    }

    #[test]
    fn an_existing_directory_is_never_written_into() {
        let dir = std::env::temp_dir().join(format!("storyline-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("my-rule")).unwrap();
        std::fs::write(dir.join("my-rule/keep.txt"), "mine").unwrap();
        let err = write(&dir.join("my-rule"), &[("a.txt", "x".into())]).unwrap_err();
        assert!(format!("{err:#}").contains("my-rule already exists;"), "{err:#}");
        assert_eq!(std::fs::read_to_string(dir.join("my-rule/keep.txt")).unwrap(), "mine");
        assert!(!dir.join("my-rule/a.txt").exists());
        write(&dir.join("other"), &[("src/a.txt", "x".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("other/src/a.txt")).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
