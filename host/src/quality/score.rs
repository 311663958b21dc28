//! Pairwise precision and recall of a partition of events against the ground truth, and the
//! naive rule the benchmark compares against.
//!
//! Pairwise, at connection level: every pair of events that the truth puts in one connection
//! and the rule puts in one story is a true positive. Precision is the share of the rule's
//! pairs that are true, recall the share of the truth's pairs the rule found. Events without a
//! truth label (a sensor's statistics record, a notice about no connection) are left out of
//! both.

use std::collections::{BTreeMap, HashMap};

use storyline_sdk::ecs::EcsEvent;

use super::Labeled;

/// Pairwise scores of one partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// True pairs among the pairs the rule made.
    pub precision: f64,
    /// Pairs of the truth the rule made.
    pub recall: f64,
    /// Events scored (those with a truth label).
    pub events: usize,
    /// Stories the scored events fell into.
    pub stories: usize,
}

impl Score {
    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision, self.recall);
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Scores `story_of[i]` (the story event `i` ended in) against `events[i].truth`.
pub fn score(events: &[Labeled], story_of: &[Option<String>]) -> Score {
    let mut cells: HashMap<(&str, &str), u64> = HashMap::new();
    let mut by_story: HashMap<&str, u64> = HashMap::new();
    let mut by_truth: HashMap<&str, u64> = HashMap::new();
    let mut scored = 0;
    for (e, story) in events.iter().zip(story_of) {
        let (Some(truth), Some(story)) = (e.truth.as_deref(), story.as_deref()) else { continue };
        scored += 1;
        *cells.entry((story, truth)).or_default() += 1;
        *by_story.entry(story).or_default() += 1;
        *by_truth.entry(truth).or_default() += 1;
    }
    let tp: u64 = cells.values().map(|&n| pairs(n)).sum();
    let predicted: u64 = by_story.values().map(|&n| pairs(n)).sum();
    let actual: u64 = by_truth.values().map(|&n| pairs(n)).sum();
    // No pair made is no wrong pair; no pair to find is nothing missed.
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Score {
        precision: ratio(tp, predicted),
        recall: ratio(tp, actual),
        events: scored,
        stories: by_story.len(),
    }
}

/// The naive rule: events with the same address and port pair, in either direction, whatever
/// the transport, are one story until a gap of more than `gap_ms` between consecutive events
/// (by event time). An event without both addresses and ports is a story of its own.
pub fn naive(events: &[Labeled], gap_ms: i64) -> Vec<Option<String>> {
    let mut by_pair: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    let mut out: Vec<Option<String>> = vec![None; events.len()];
    for (i, e) in events.iter().enumerate() {
        match tuple(&e.event.payload) {
            Some(key) => by_pair.entry(key).or_default().push((e.event.time, i)),
            None => out[i] = Some(format!("single {i}")),
        }
    }
    for (key, mut list) in by_pair {
        list.sort_unstable();
        let mut part = 0;
        let mut last = i64::MIN;
        for (time, i) in list {
            if last != i64::MIN && time - last > gap_ms {
                part += 1;
            }
            last = time;
            out[i] = Some(format!("{key} #{part}"));
        }
    }
    out
}

/// Both endpoints with ports, in a fixed order.
fn tuple(payload: &[u8]) -> Option<String> {
    let ecs = EcsEvent::parse_network(payload).ok()?;
    let (a, ap) = ecs.source_addr()?;
    let (b, bp) = ecs.destination_addr()?;
    let (a, b) = ((a, ap?), (b, bp?));
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    Some(format!("{} {} {} {}", low.0, low.1, high.0, high.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use storyline_sdk::format::InputEvent;

    fn labeled(truth: Option<&str>, time: i64, payload: &str) -> Labeled {
        Labeled {
            event: InputEvent {
                id: None,
                source: "s".into(),
                kind: "k".into(),
                time,
                route: None,
                attributes: Vec::new(),
                payload: payload.as_bytes().to_vec(),
            },
            truth: truth.map(str::to_owned),
            arrival_ms: time,
        }
    }

    #[test]
    fn pairwise_scores_count_pairs_of_the_truth_and_of_the_rule() {
        let events: Vec<Labeled> =
            ["a", "a", "a", "b"].iter().map(|t| labeled(Some(t), 0, "{}")).collect();
        // The rule splits a's three events 2 + 1 and puts b with the third.
        let stories = ["x", "x", "y", "y"].map(|s| Some(s.to_string()));
        let s = score(&events, &stories);
        // Rule pairs: (0,1) true, (2,3) false. Truth pairs: (0,1), (0,2), (1,2).
        assert_eq!((s.precision, s.recall), (0.5, 1.0 / 3.0));
        assert_eq!((s.events, s.stories), (4, 2));
        assert!((s.f1() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn events_without_truth_are_not_scored() {
        let events = vec![labeled(Some("a"), 0, "{}"), labeled(None, 0, "{}")];
        let s = score(&events, &[Some("x".into()), Some("x".into())]);
        assert_eq!((s.precision, s.recall, s.events), (1.0, 1.0, 1));
    }

    #[test]
    fn the_naive_rule_joins_a_pair_either_way_round_and_splits_on_the_gap() {
        let fwd =
            r#"{"source":{"ip":"10.0.0.1","port":5000},"destination":{"ip":"10.0.0.2","port":80}}"#;
        let rev =
            r#"{"source":{"ip":"10.0.0.2","port":80},"destination":{"ip":"10.0.0.1","port":5000}}"#;
        let events = vec![
            labeled(None, 0, fwd),
            labeled(None, 30_000, rev),
            labeled(None, 100_000, fwd),
            labeled(None, 0, r#"{"source":{"ip":"10.0.0.1"}}"#),
        ];
        let p = naive(&events, 60_000);
        assert_eq!(p[0], p[1]);
        assert_ne!(p[1], p[2], "70 s later is a new story");
        assert!(p[3].as_deref().is_some_and(|s| s.starts_with("single")));
    }
}
