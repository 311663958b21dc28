//! The quality benchmark: how right a rule's stories are on data nobody here wrote.
//!
//! Real sensor logs (Zeek, Suricata) carry each sensor's own session key (`uid`, `flow_id`):
//! the benchmark takes it out of every event, keeps it as the ground truth, runs the rule's
//! component on the events as the host would (one-second insert-time buckets in the order
//! sensors write), and scores the stories pairwise against the truth ([`score`]), beside the
//! naive rule ("same address and port pair either way round, split on a 60 s gap"). Each data
//! set runs plain and perturbed as real fleets are: every sensor's clock off by up to ±30 s and
//! 30 % of the records reported in the reverse direction ([`data::perturb`]). `storyline
//! generate` output runs too, with its own truth.

pub mod data;
pub mod score;

use std::collections::HashMap;

use storyline_sdk::format::InputEvent;

use crate::model::{Bucket, Event, TenantId};
use crate::plugin::{Limits, Plugin};

pub use data::{Dataset, generated, load_dir, perturb};
pub use score::{Score, naive, score};

/// An event with its ground truth and the time it reaches storyline.
#[derive(Debug, Clone)]
pub struct Labeled {
    /// The event as the rule gets it (the session key removed).
    pub event: InputEvent,
    /// The connection it belongs to; `None` when the sensor named none.
    pub truth: Option<String>,
    /// When it arrives, epoch ms: the insert time that decides its bucket.
    pub arrival_ms: i64,
}

/// What running a rule over a data set gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The story each event ended in (latest revisions), by index of the data set's events.
    pub story_of: Vec<Option<String>>,
    /// Events in no story, or in more than one.
    pub misplaced: usize,
}

/// Runs `plugin` (with `config`) over `events` as the host would: `bucket_ms` buckets by
/// arrival, each bucket's events in id order, the bucket's end as the watermark; then drain.
pub fn run_rule(
    plugin: &Plugin,
    config: &str,
    events: &[Labeled],
    bucket_ms: i64,
) -> anyhow::Result<Outcome> {
    let tenant = TenantId::new("quality")?;
    let limits = Limits { memory_bytes: 4 << 30, ..Limits::default() };
    let mut instance =
        plugin.instantiate(&tenant, config, limits).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].arrival_ms, i));
    let mut latest: HashMap<String, (u32, Vec<String>)> = HashMap::new();
    let mut keep = |stories: Vec<crate::model::Story>| {
        for s in stories {
            let entry = latest.entry(s.id).or_insert((s.revision, Vec::new()));
            if s.revision >= entry.0 {
                *entry = (s.revision, s.event_ids);
            }
        }
    };
    let mut at = 0;
    while at < order.len() {
        let start = events[order[at]].arrival_ms.div_euclid(bucket_ms) * bucket_ms;
        let mut bucket_events = Vec::new();
        while at < order.len() && events[order[at]].arrival_ms < start + bucket_ms {
            let i = order[at];
            let e = events[i].event.clone();
            bucket_events.push(Event {
                id: format!("q{i:09}"),
                source: e.source,
                kind: e.kind,
                event_time: e.time,
                insert_time: events[i].arrival_ms,
                attributes: e.attributes,
                payload: e.payload,
            });
            at += 1;
        }
        bucket_events.sort_by(|a, b| a.id.cmp(&b.id));
        let bucket = Bucket {
            tenant: tenant.to_string(),
            shard: 0,
            start,
            end: start + bucket_ms,
            watermark: start + bucket_ms,
            events: bucket_events,
        };
        keep(instance.process(&bucket, &|_| true).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    keep(instance.drain(&|_| true).map_err(|e| anyhow::anyhow!("{e}"))?);
    let mut story_of: Vec<Option<String>> = vec![None; events.len()];
    let mut misplaced = 0;
    for (id, (_, event_ids)) in latest {
        for e in event_ids {
            let Some(i) = e.strip_prefix('q').and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            match &story_of[i] {
                Some(_) => misplaced += 1,
                None => story_of[i] = Some(id.clone()),
            }
        }
    }
    misplaced += story_of.iter().filter(|s| s.is_none()).count();
    Ok(Outcome { story_of, misplaced })
}

/// One row of the table: a data set, a rule, its score.
#[derive(Debug, Clone)]
pub struct Row {
    /// The data set.
    pub data: String,
    /// The rule.
    pub rule: String,
    /// Its score.
    pub score: Score,
    /// Events in no story or in several (always 0 for the naive rule).
    pub misplaced: usize,
}

/// Scores `plugin` and the naive rule on `data`: two rows. With `dump`, writes one line per
/// event there (TSV: index, arrival, time, sensor, kind, truth, the rule's story, the naive
/// rule's story, payload), to see where a rule and the truth part ways.
pub fn rows(
    plugin: &Plugin,
    config: &str,
    data: &Dataset,
    dump: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Row>> {
    let outcome = run_rule(plugin, config, &data.events, 1000)?;
    let naive_stories = naive(&data.events, 60_000);
    if let Some(path) = dump {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (i, e) in data.events.iter().enumerate() {
            writeln!(
                out,
                "{i}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.arrival_ms,
                e.event.time,
                e.event.source,
                e.event.kind,
                e.truth.as_deref().unwrap_or("-"),
                outcome.story_of[i].as_deref().unwrap_or("-"),
                naive_stories[i].as_deref().unwrap_or("-"),
                String::from_utf8_lossy(&e.event.payload)
            )?;
        }
    }
    let rule = Row {
        data: data.name.clone(),
        rule: plugin.info().name.replace('_', "-"),
        score: score(&data.events, &outcome.story_of),
        misplaced: outcome.misplaced,
    };
    let naive = Row {
        data: data.name.clone(),
        rule: "naive (pair, 60 s gap)".into(),
        score: score(&data.events, &naive_stories),
        misplaced: 0,
    };
    Ok(vec![rule, naive])
}

/// The table, aligned, one line per row.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let width = rows.iter().map(|r| r.data.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:width$}  {:>8}  {:24}  {:>9}  {:>6}  {:>6}  {:>9}\n",
        "data", "events", "rule", "precision", "recall", "F1", "misplaced"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:width$}  {:>8}  {:24}  {:>9.4}  {:>6.4}  {:>6.4}  {:>9}",
            r.data,
            r.score.events,
            r.rule,
            r.score.precision,
            r.score.recall,
            r.score.f1(),
            r.misplaced
        );
    }
    out
}
