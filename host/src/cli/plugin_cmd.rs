//! `storyline plugin check` and `storyline plugin test`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use storyline_sdk::format;

use crate::model::{Story, TenantId, latest_revisions};
use crate::plugin::{Limits, Origin, Runtime};

fn runtime(data_dir: &Path) -> anyhow::Result<Runtime> {
    Runtime::new(Some(data_dir.join("cache").join("components")))
}

/// A `--config` argument: JSON text, or `@FILE` for the text of a file.
pub(super) fn config_arg(config: &str) -> anyhow::Result<String> {
    match config.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plugin configuration {path}")),
        None => Ok(config.to_string()),
    }
}

/// Prints what a component is and whether this host can run it.
pub fn check(data_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let plugin = runtime(data_dir)?.load(file)?;
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
    };
    writeln!(out, "compile:  {origin} in {} ms", info.compile_time.as_millis())?;
    writeln!(out, "ok")?;
    Ok(())
}

/// Runs a component over a JSONL file and prints its stories.
pub fn test(
    data_dir: &Path,
    file: &Path,
    events: &Path,
    bucket_ms: i64,
    config: &str,
    tenant: &str,
    latest: bool,
) -> anyhow::Result<()> {
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
    let buckets = format::buckets_by_event_time(
        tenant.as_str(),
        0,
        parsed,
        bucket_ms,
        stem.as_deref().unwrap_or("event"),
    );
    let known: HashSet<String> =
        buckets.iter().flat_map(|b| b.events.iter().map(|e| e.id.clone())).collect();
    if known.len() != event_count {
        bail!(
            "{name}: {} event ids appear more than once; ids must be unique",
            event_count - known.len()
        );
    }
    let is_known = |id: &str| known.contains(id);

    let plugin = runtime(data_dir)?.load(file)?;
    let started = Instant::now();
    let mut instance = plugin.instantiate(&tenant, &config, Limits::default())?;
    let mut published = Vec::new();
    let mut out = std::io::stdout().lock();
    let bucket_count = buckets.len();
    for bucket in &buckets {
        let stories = instance.process(bucket, &is_known)?;
        emit(&mut out, &stories, latest)?;
        published.extend(stories);
    }
    let stories = instance.drain(&is_known)?;
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
        "{event_count} events in {bucket_count} buckets -> {} stories ({publications} publications incl. revisions), {in_stories} event references, {} ms; plugin {}",
        latest_stories.len(),
        elapsed.as_millis(),
        plugin.info().label()
    );
    Ok(())
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
