//! Progress of long commands on stderr: a bar with rate and ETA when stderr is a terminal, a
//! plain line every few seconds when it is not (a log file, a pipe, a test), and nothing for
//! work that ends within [`QUIET`].
//!
//! The work only bumps atomic counters through a [`Tracker`] (cheap enough for every read or
//! every event); a reporter thread reads them a few times a second and draws. What a command
//! prints itself stays as it was: the bar is cleared when the [`Progress`] is dropped (on
//! success and on error alike, so an error message never lands on a half-drawn bar), and a
//! line printed while the bar shows goes through [`Tracker::suspend`].

use std::borrow::Cow;
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState,
    ProgressStyle,
};

/// Work done within this shows nothing: short commands (and the tests that read their
/// stderr) see no progress output at all.
const QUIET: Duration = Duration::from_secs(2);
/// Between two plain lines when stderr is not a terminal: enough to see a command is alive
/// without filling a log.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How often the reporter reads the counters; the bar redraws at most this often.
const TICK: Duration = Duration::from_millis(200);

/// What the current phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Nothing countable: a spinner and the time spent (`generate` building its sessions).
    Nothing,
    /// Bytes of input read (`ingest`); events stored, when known, beside them.
    Bytes,
    /// Events written (`generate`).
    Events,
}

/// One phase of the work.
#[derive(Debug, Clone)]
struct Phase {
    /// What is being done, e.g. `writing`; may be empty.
    label: String,
    /// What `done` counts.
    measure: Measure,
    /// The count at which the phase is complete, when known (a file's size; not stdin's).
    total: Option<u64>,
    /// When the phase began: plain lines' rates are averages over it.
    started: Instant,
}

/// What the work and the reporter share.
#[derive(Debug)]
struct Shared {
    /// The command and its input, first words of every line (`ingest events.jsonl`).
    what: String,
    /// Units of the current phase done so far.
    done: AtomicU64,
    /// Events stored so far (ingest): shown beside the bytes once non-zero.
    events: AtomicU64,
    /// The current phase; changed only by [`Progress::phase`].
    phase: Mutex<Phase>,
    /// Hidden until the work has taken [`QUIET`] on a terminal; never shown otherwise.
    bar: ProgressBar,
}

impl Shared {
    fn phase(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Progress of one command; dropping it stops the reporter and clears the bar.
#[derive(Debug)]
pub struct Progress {
    shared: Arc<Shared>,
    /// Dropped to stop the reporter at once (it waits on the receiving end between ticks).
    stop: Option<mpsc::Sender<()>>,
    reporter: Option<JoinHandle<()>>,
}

/// The work's side: counters to bump, and a way to print past the bar.
#[derive(Debug, Clone)]
pub struct Tracker(Arc<Shared>);

impl Progress {
    /// Starts reporting the progress of `what` (e.g. `ingest events.jsonl`), in a first phase
    /// that counts nothing until [`Progress::phase`] says otherwise.
    pub fn start(what: impl Into<String>) -> Progress {
        Progress::new(what.into(), true)
    }

    /// Counts without ever showing anything: for output that already shows itself (a command
    /// writing to the terminal a bar would be drawn over).
    pub fn silent(what: impl Into<String>) -> Progress {
        Progress::new(what.into(), false)
    }

    fn new(what: String, shown: bool) -> Progress {
        let stderr = std::io::stderr();
        // `TERM=dumb` (an editor's shell, some CI consoles) cannot redraw a line in place.
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        let terminal = stderr.is_terminal() && !dumb;
        let shared = Arc::new(Shared {
            what,
            done: AtomicU64::new(0),
            events: AtomicU64::new(0),
            phase: Mutex::new(Phase {
                label: String::new(),
                measure: Measure::Nothing,
                total: None,
                started: Instant::now(),
            }),
            bar: ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
        });
        shared.bar.set_style(style(Measure::Nothing, false));
        shared.bar.set_prefix(shared.what.clone());
        let (stop, stopped) = mpsc::channel();
        let reporter = if shown {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || report(&shared, &stopped, terminal))
                .map(Some)
        } else {
            Ok(None)
        };
        let reporter = match reporter {
            Ok(handle) => handle,
            Err(e) => {
                // Progress is a convenience: the command goes on without it.
                tracing::debug!("no progress reporting: cannot start its thread: {e}");
                None
            }
        };
        Progress { shared, stop: Some(stop), reporter }
    }

    /// Begins a new phase: `label` says what is done now, `measure` what is counted and
    /// `total` the count that completes it. The count starts over at 0.
    pub fn phase(&self, label: impl Into<String>, measure: Measure, total: Option<u64>) {
        let label = label.into();
        let bar = &self.shared.bar;
        bar.set_style(style(measure, total.is_some()));
        bar.set_prefix(match label.as_str() {
            "" => self.shared.what.clone(),
            l => format!("{}: {l}", self.shared.what),
        });
        bar.reset();
        match total {
            Some(total) => bar.set_length(total),
            None => bar.unset_length(),
        }
        self.shared.done.store(0, Ordering::Relaxed);
        *self.shared.phase.lock().unwrap_or_else(|p| p.into_inner()) =
            Phase { label, measure, total, started: Instant::now() };
    }

    /// The work's handle on the counters.
    pub fn tracker(&self) -> Tracker {
        Tracker(self.shared.clone())
    }

    /// Stops reporting and clears the bar (as dropping does; this reads better at the end of
    /// the work).
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(reporter) = self.reporter.take() {
            let _ = reporter.join();
        }
        self.shared.bar.finish_and_clear();
    }
}

impl Tracker {
    /// `n` more units of the current phase done.
    pub fn add(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` events stored so far.
    pub fn set_events(&self, n: u64) {
        self.0.events.store(n, Ordering::Relaxed);
    }

    /// Runs `f` (which prints) with the bar cleared, then redraws it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.bar.suspend(f)
    }

    /// `reader`, counting the bytes read from it.
    pub fn reader<R: Read>(&self, reader: R) -> CountingReader<R> {
        CountingReader { inner: reader, tracker: self.clone() }
    }
}

/// A reader that adds the bytes read to the current phase's count.
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    tracker: Tracker,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tracker.add(n as u64);
        Ok(n)
    }
}

/// The reporter thread: a tick every [`TICK`] until the [`Progress`] is dropped.
fn report(shared: &Shared, stopped: &mpsc::Receiver<()>, terminal: bool) {
    let started = Instant::now();
    let mut shown = false;
    let mut next_plain = PLAIN_EVERY;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
        let elapsed = started.elapsed();
        if elapsed < QUIET {
            continue;
        }
        let done = shared.done.load(Ordering::Relaxed);
        let events = shared.events.load(Ordering::Relaxed);
        if terminal {
            if !shown {
                // `stderr_with_hz` would redraw on its own; the reporter already paces it.
                shared.bar.set_draw_target(ProgressDrawTarget::stderr());
                shown = true;
            }
            shared.bar.set_message(events_stored(events));
            shared.bar.set_position(done);
            shared.bar.tick();
        } else if elapsed >= next_plain {
            next_plain = elapsed + PLAIN_EVERY;
            eprintln!("{}", plain_line(&shared.what, &shared.phase(), done, events));
        }
    }
}

/// `1,234,000 events stored`, or nothing before the first.
fn events_stored(events: u64) -> Cow<'static, str> {
    match events {
        0 => Cow::Borrowed(""),
        n => Cow::Owned(format!("{} events stored", HumanCount(n))),
    }
}

/// The bar's look for a phase.
fn style(measure: Measure, has_total: bool) -> ProgressStyle {
    let template = match (measure, has_total) {
        (Measure::Nothing, _) => "{spinner} {prefix} {elapsed}",
        (Measure::Bytes, true) => {
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}  {msg}"
        }
        (Measure::Bytes, false) => "{spinner} {prefix} {bytes} {bytes_per_sec}  {msg}",
        (Measure::Events, true) => {
            "{prefix} [{bar:30}] {human_pos}/{human_len} events {rate} ETA {eta}"
        }
        (Measure::Events, false) => "{spinner} {prefix} {human_pos} events {rate}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|e| unreachable!("the progress templates are constants: {e}"))
        .progress_chars("=> ")
        // indicatif's own `per_sec` prints four decimals of events per second.
        .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{}/s", HumanCount(state.per_sec() as u64));
        })
}

/// The line printed every [`PLAIN_EVERY`] when stderr is not a terminal, e.g.
/// `ingest events.jsonl: 512.00 MiB of 1.20 GiB (42%), 85.30 MiB/s, ETA 9s, 1,234,000 events
/// stored`.
fn plain_line(what: &str, phase: &Phase, done: u64, events: u64) -> String {
    let mut line = match phase.label.as_str() {
        "" => format!("{what}:"),
        label => format!("{what}: {label}"),
    };
    let secs = phase.started.elapsed().as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    let count = |n: u64| match phase.measure {
        Measure::Bytes => HumanBytes(n).to_string(),
        Measure::Events | Measure::Nothing => HumanCount(n).to_string(),
    };
    match phase.measure {
        Measure::Nothing => {
            line.push_str(&format!(" ({:#})", HumanDuration(phase.started.elapsed())));
        }
        Measure::Bytes | Measure::Events => {
            let unit = if phase.measure == Measure::Events { " events" } else { "" };
            line.push_str(&format!(" {}", count(done)));
            if let Some(total) = phase.total {
                let share = done.saturating_mul(100).checked_div(total).unwrap_or(100);
                line.push_str(&format!(" of {}{unit} ({share}%)", count(total)));
            } else {
                line.push_str(unit);
            }
            line.push_str(&format!(", {}{unit}/s", count(rate.round() as u64)));
            if let Some(total) = phase.total
                && rate > 0.0
            {
                let left = total.saturating_sub(done) as f64 / rate;
                line.push_str(&format!(", ETA {:#}", HumanDuration(Duration::from_secs_f64(left))));
            }
        }
    }
    if events > 0 {
        line.push_str(&format!(", {}", events_stored(events)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(label: &str, measure: Measure, total: Option<u64>, secs_ago: u64) -> Phase {
        Phase {
            label: label.into(),
            measure,
            total,
            started: Instant::now() - Duration::from_secs(secs_ago),
        }
    }

    #[test]
    fn a_plain_line_of_bytes_gives_share_rate_eta_and_events_stored() {
        let p = phase("", Measure::Bytes, Some(4 << 20), 2);
        let line = plain_line("ingest events.jsonl", &p, 1 << 20, 1_234_000);
        assert_eq!(
            line,
            "ingest events.jsonl: 1.00 MiB of 4.00 MiB (25%), 512.00 KiB/s, ETA 6s, \
             1,234,000 events stored"
        );
    }

    #[test]
    fn a_plain_line_of_stdin_has_no_share_and_no_eta() {
        let p = phase("", Measure::Bytes, None, 2);
        let line = plain_line("ingest stdin", &p, 1 << 20, 0);
        assert_eq!(line, "ingest stdin: 1.00 MiB, 512.00 KiB/s");
    }

    #[test]
    fn a_plain_line_of_events_names_them() {
        let p = phase("writing", Measure::Events, Some(1_000_000), 4);
        let line = plain_line("generate", &p, 600_000, 0);
        assert_eq!(
            line,
            "generate: writing 600,000 of 1,000,000 events (60%), 150,000 events/s, ETA 3s"
        );
    }

    #[test]
    fn a_plain_line_of_uncounted_work_gives_the_time_spent() {
        let p = phase("generating 250,000 sessions", Measure::Nothing, None, 6);
        let line = plain_line("generate", &p, 0, 0);
        assert_eq!(line, "generate: generating 250,000 sessions (6s)");
    }

    #[test]
    fn every_style_template_parses() {
        for measure in [Measure::Nothing, Measure::Bytes, Measure::Events] {
            for total in [false, true] {
                let _ = style(measure, total);
            }
        }
    }

    #[test]
    fn quick_work_prints_nothing_and_the_reader_counts_bytes() {
        let progress = Progress::start("test");
        progress.phase("", Measure::Bytes, Some(3));
        let mut reader = progress.tracker().reader(&b"abc"[..]);
        let mut out = String::new();
        reader.read_to_string(&mut out).unwrap();
        assert_eq!(progress.shared.done.load(Ordering::Relaxed), 3);
        assert!(progress.shared.bar.is_hidden());
        progress.finish();
    }
}
