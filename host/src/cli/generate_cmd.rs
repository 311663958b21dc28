//! `storyline generate`.

use std::io::{IsTerminal, Write};

use super::progress::{Measure, Progress};
use crate::generate::{GenConfig, generate as gen_stream};
use crate::producer::now_ms;

/// Prints a generated stream whose sessions end about now.
pub fn generate(
    sessions: usize,
    seed: u64,
    late_share: f64,
    max_skew_ms: i64,
    interval_ms: i64,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&late_share) {
        anyhow::bail!("--late-share must be between 0 and 1, got {late_share}");
    }
    let interval_ms = interval_ms.max(1);
    let span = sessions as i64 * interval_ms;
    let config = GenConfig {
        sessions,
        start_ms: now_ms() - span - 120_000,
        interval_ms,
        max_skew_ms: max_skew_ms.max(0),
        late_share,
        seed,
        ..GenConfig::default()
    };
    // A million sessions take tens of seconds: say how far it got (on stderr; quiet when quick),
    // unless the events themselves go to the terminal, where a bar would be drawn over them.
    let progress = if std::io::stdout().is_terminal() {
        Progress::silent("generate")
    } else {
        Progress::start("generate")
    };
    progress.phase(
        format!("generating {} sessions", indicatif::HumanCount(sessions as u64)),
        Measure::Nothing,
        None,
    );
    let events = gen_stream(&config);
    progress.phase("writing", Measure::Events, Some(events.len() as u64));
    let written = progress.tracker();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in &events {
        out.write_all(e.line.as_bytes())?;
        out.write_all(b"\n")?;
        written.add(1);
    }
    out.flush()?;
    progress.finish();
    Ok(())
}
