//! `storyline bench quality`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plugin::Runtime;
use crate::quality::{self, Dataset};

/// Scores the rule in `plugin` (with its configuration) on each data directory, plain and
/// perturbed, and on generated sessions; prints the table as it goes.
pub fn quality(
    data_dir: &Path,
    (plugin, config, generated_config): (&Path, &str, &str),
    data: &[PathBuf],
    generated: usize,
    (skew_ms, reversed, seed): (i64, f64, u64),
    dump: Option<&Path>,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&reversed) {
        anyhow::bail!("--reversed is a share between 0 and 1, got {reversed}");
    }
    let config = super::plugin_cmd::config_arg(config)?;
    let generated_config = super::plugin_cmd::config_arg(generated_config)?;
    let runtime = Runtime::new(Some(data_dir.join("cache").join("components")))?;
    let plugin = runtime.load(plugin)?;
    let mut sets: Vec<Dataset> = Vec::new();
    for dir in data {
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let set = quality::load_dir(dir, &name)
            .with_context(|| format!("cannot read data set {}", dir.display()))?;
        eprintln!(
            "{name}: {} events ({} with a session key), {} lines skipped",
            set.events.len(),
            set.events.iter().filter(|e| e.truth.is_some()).count(),
            set.skipped
        );
        sets.push(set);
    }
    if generated > 0 {
        sets.push(quality::generated(generated, skew_ms, seed));
    }
    let mut rows = Vec::new();
    for set in &sets {
        let is_generated = set.name.starts_with("storyline generate");
        let config = if is_generated { &generated_config } else { &config };
        // Generated sensors already have their own clocks and directions.
        let perturbed = (!is_generated).then(|| quality::perturb(set, skew_ms, reversed, seed));
        for (n, data) in std::iter::once(set).chain(perturbed.as_ref()).enumerate() {
            let started = std::time::Instant::now();
            let file = dump.map(|d| {
                d.join(format!("{}-{n}.tsv", data.name.split(' ').next().unwrap_or("data")))
            });
            if let Some(d) = dump {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
            }
            rows.extend(quality::rows(&plugin, config, data, file.as_deref())?);
            eprintln!("{}: scored in {:.1} s", data.name, started.elapsed().as_secs_f64());
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(quality::table(&rows).as_bytes())?;
    Ok(())
}
