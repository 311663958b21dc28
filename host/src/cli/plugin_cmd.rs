//! `storyline plugin new`, `storyline plugin check` and `storyline plugin test`: the plugin
//! author's commands.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use storyline_sdk::format;

use super::scaffold::{self, PluginName, SdkCheckout};
use crate::model::{Story, TenantId, latest_revisions};
use crate::plugin::{CallError, EventView, Failure, Limits, Origin, Runtime};

/// `Cli::data_dir`'s default (checked against it by a test): `plugin check` and `plugin test`
/// told nothing else keep their compile cache in the user's cache directory, not in
/// `./storyline-data` of wherever the author happens to be.
const DEFAULT_DATA_DIR: &str = "./storyline-data";

/// Where `plugin check` and `plugin test` keep compiled components: under an explicit
/// `--data-dir` (or `STORYLINE_DATA_DIR`), as the other commands do; else in the user's cache
/// directory (`$XDG_CACHE_HOME/storyline`, else `~/.cache/storyline`). Without either, nothing
/// is cached: a directory shared in /tmp would let another local user plant compiled code that
/// the host loads unchecked (see `plugin::cache`), and compiling again only costs time.
/// (`--data-dir ./storyline-data` written out cannot be told from the default; it too uses the
/// user's cache.)
pub fn compile_cache(data_dir: &Path) -> Option<PathBuf> {
    let explicit =
        data_dir != Path::new(DEFAULT_DATA_DIR) || std::env::var_os("STORYLINE_DATA_DIR").is_some();
    if explicit {
        return Some(data_dir.join("cache").join("components"));
    }
    // The XDG base directory specification: relative values are invalid and ignored.
    let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("storyline").join("components"))
}

fn runtime(cache: Option<&Path>) -> anyhow::Result<Runtime> {
    Runtime::new(cache.map(Path::to_path_buf))
}

/// Writes the crate of a new rule `name` in `dir/name` and says what to do next.
pub fn new(name: &str, dir: &Path) -> anyhow::Result<()> {
    let name = PluginName::new(name)?;
    let sdk = SdkCheckout::of_this_build();
    let root = dir.join(name.as_str());
    scaffold::write(&root, &scaffold::files(&name, &sdk.path)?)?;
    if !sdk.exists {
        eprintln!(
            "warning: the storyline SDK this binary was built from is no longer at {}; point              storyline-sdk in {} at a storyline checkout, or use the git dependency its comment              shows",
            sdk.path.display(),
            root.join("Cargo.toml").display()
        );
    }
    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", name.lib());
    let mut out = std::io::stdout().lock();
    writeln!(out, "created plugin {name} in {}", root.display())?;
    writeln!(out, "next:")?;
    writeln!(out, "  cd {}", root.display())?;
    writeln!(out, "  rustup target add wasm32-wasip2      # once")?;
    writeln!(out, "  cargo test                           # the rule natively, with events.jsonl")?;
    writeln!(out, "  cargo build --target wasm32-wasip2 --release")?;
    writeln!(out, "  storyline plugin test {wasm} --events events.jsonl")?;
    Ok(())
}

/// A `--config` argument: JSON text, or `@FILE` for the text of a file.
pub(super) fn config_arg(config: &str) -> anyhow::Result<String> {
    match config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plugin configuration {path}")),
        None => Ok(config.to_string()),
    }
}

/// Prints what a component is and whether this host can run it; `cache`: the compile cache.
pub fn check(cache: Option<&Path>, file: &Path) -> anyhow::Result<()> {
    let plugin = runtime(cache)?.load(file)?;
    let info = plugin.info();
    let mut out = std::io::stdout().lock();
    writeln!(out, "file:     {}", info.path.display())?;
    writeln!(out, "size:     {} bytes", info.size)?;
    writeln!(out, "sha256:   {}", info.sha256)?;
    writeln!(out, "world:    storyline:correlator/plugin@{} (supported)", info.manifest.version)?;
    writeln!(out, "exports:  {}", info.manifest.exports.join(", "))?;
    writeln!(out, "          correlator: init, process, drain, route, snapshot, restore")?;
    writeln!(out, "imports:  {}", info.manifest.imports.join(", "))?;
    let origin = match info.origin {
        Origin::Cached => "loaded from cache",
        Origin::Compiled => "compiled",
        Origin::Shared => "shared with another tenant",
    };
    writeln!(out, "compile:  {origin} in {} ms", info.compile_time.as_millis())?;
    writeln!(out, "ok")?;
    Ok(())
}

/// What `plugin test` runs the component over, and how.
#[derive(Debug, Clone)]
pub struct TestOptions<'a> {
    /// `--events`: a JSONL file, `-` for stdin.
    pub events: &'a Path,
    /// `--bucket-ms`.
    pub bucket_ms: i64,
    /// `--config`: JSON text or `@FILE`.
    pub config: &'a str,
    /// `--tenant`.
    pub tenant: &'a str,
    /// `--latest`: only the last revision of each story, after the run.
    pub latest: bool,
    /// `--deadline-ms`: how long one call may run.
    pub deadline: Duration,
    /// `--arrival`: buckets as `run` cuts them (file order, insert time), not by event time.
    pub arrival: bool,
}

/// Runs a component over a JSONL file and prints its stories; `cache`: the compile cache.
pub fn test(cache: Option<&Path>, file: &Path, options: &TestOptions<'_>) -> anyhow::Result<()> {
    let TestOptions { events, bucket_ms, config, tenant, latest, deadline, arrival } = *options;
    if bucket_ms <= 0 {
        bail!("--bucket-ms must be a positive number of milliseconds, got {bucket_ms}");
    }
    let tenant = TenantId::new(tenant)?;
    let config = config_arg(config)?;
    let text = if events == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read events from stdin")?;
        s
    } else {
        std::fs::read_to_string(events)
            .with_context(|| format!("cannot read events file {}", events.display()))?
    };
    let name = events.display().to_string();
    let parsed = format::parse_jsonl(&text).map_err(|errors| {
        let mut msg = format!("{name}: {} invalid line(s)", errors.len());
        for e in errors.iter().take(20) {
            msg.push_str(&format!("\n  {name} {e}"));
        }
        anyhow::anyhow!(msg)
    })?;
    let event_count = parsed.len();
    let stem = events.file_stem().map(|s| s.to_string_lossy().into_owned());
    let cut = if arrival { format::buckets_by_arrival } else { format::buckets_by_event_time };
    let buckets = cut(tenant.as_str(), 0, parsed, bucket_ms, stem.as_deref().unwrap_or("event"));
    let known: HashSet<String> =
        buckets.iter().flat_map(|b| b.events.iter().map(|e| e.id.clone())).collect();
    if known.len() != event_count {
        bail!(
            "{name}: {} event ids appear more than once; ids must be unique",
            event_count - known.len()
        );
    }
    let is_known = |id: &str| known.contains(id);

    let plugin = runtime(cache)?.load(file)?;
    let started = Instant::now();
    let limits = Limits { call_timeout: deadline, ..Limits::default() };
    let mut instance = plugin.instantiate(&tenant, &config, limits).map_err(deadline_hint)?;
    // `ingest` asks `route` for every event: a rule whose `route` traps is found here, not
    // in production. A fresh instance, as a producer has.
    let keyed = {
        let mut router = plugin.instantiate(&tenant, &config, limits).map_err(deadline_hint)?;
        let mut keyed = 0;
        for bucket in &buckets {
            let views: Vec<EventView<'_>> = bucket.events.iter().map(EventView::from).collect();
            let keys = router.route_all(&views).map_err(|e| {
                anyhow::anyhow!("{}; `ingest` would route these events by id", deadline_hint(e))
            })?;
            keyed += keys.iter().flatten().count();
        }
        keyed
    };
    let mut published = Vec::new();
    let mut out = std::io::stdout().lock();
    let bucket_count = buckets.len();
    for bucket in &buckets {
        let stories = instance.process(bucket, &is_known).map_err(deadline_hint)?;
        emit(&mut out, &stories, latest)?;
        published.extend(stories);
    }
    let stories = instance.drain(&is_known).map_err(deadline_hint)?;
    emit(&mut out, &stories, latest)?;
    published.extend(stories);
    let elapsed = started.elapsed();
    let publications = published.len();
    let latest_stories = latest_revisions(published);
    if latest {
        emit(&mut out, &latest_stories, false)?;
    }
    out.flush()?;
    let in_stories: usize = latest_stories.iter().map(|s| s.event_ids.len()).sum();
    eprintln!(
        "{event_count} events in {bucket_count} buckets -> {} stories ({publications} publications incl. revisions), {in_stories} event references, {} ms; plugin {}; route keyed {keyed} of {event_count} events",
        latest_stories.len(),
        elapsed.as_millis(),
        plugin.info().label()
    );
    Ok(())
}

/// A call stopped by its deadline, with what the author can do about it.
fn deadline_hint(e: CallError) -> anyhow::Error {
    match e.failure {
        Failure::Timeout { .. } => anyhow::anyhow!(
            "{e} (does the rule loop? `--deadline-ms` gives each call more time if it needs it)"
        ),
        _ => e.into(),
    }
}

fn emit(out: &mut impl Write, stories: &[Story], suppress: bool) -> anyhow::Result<()> {
    if suppress {
        return Ok(());
    }
    for s in stories {
        out.write_all(s.to_json().as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_data_dir_is_the_one_the_cli_declares() {
        use clap::CommandFactory;
        let cli = super::super::Cli::command();
        let arg = cli.get_arguments().find(|a| a.get_id() == "data_dir").unwrap();
        assert_eq!(arg.get_default_values(), [std::ffi::OsStr::new(DEFAULT_DATA_DIR)]);
    }

    #[test]
    fn an_explicit_data_dir_holds_the_compile_cache() {
        assert_eq!(
            compile_cache(Path::new("/srv/storyline")),
            Some(PathBuf::from("/srv/storyline/cache/components"))
        );
    }
}
