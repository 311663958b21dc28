//! Sensor clocks learned from the data: how far each sensor's clock is from the others'.
//!
//! Two sensors that report the same connection report it at about the same true time, so the
//! difference of their timestamps is a measurement of the difference of their clocks. One
//! measurement is noisy (one sensor stamps the handshake, the other a request a moment later;
//! a sensor may report a connection long after it started), but the median of many is not.
//! [`SensorClocks`] keeps, for every pair of sensors that met, a window of the latest
//! measurements, and derives one offset per sensor against a reference so that a rule can put
//! every event on one clock before it compares times. A sensor is *calibrated* once its offset
//! rests on [`MIN_SAMPLES`] measurements; until then a rule falls back to its configured
//! tolerance.
//!
//! Deterministic: the same measurements in the same order give the same offsets, and the whole
//! state serialises with the rule's snapshot.
//!
//! ```
//! use storyline_sdk::clocks::SensorClocks;
//!
//! let mut clocks = SensorClocks::default();
//! let (fw, dns) = (clocks.sensor("fw-1"), clocks.sensor("dns-1"));
//! for i in 0..40 {
//!     // The firewall's clock runs 12 s ahead of the resolver's; each report ±300 ms of noise.
//!     let noise = (i * 37 % 600) - 300;
//!     clocks.observe(fw, 1_000_000 + i * 5_000 + 12_000 + noise, dns, 1_000_000 + i * 5_000);
//! }
//! clocks.settle();
//! let fw_off = clocks.offset(fw).unwrap();
//! let dns_off = clocks.offset(dns).unwrap();
//! assert!((fw_off - dns_off - 12_000).abs() < 500);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::TimestampMs;

/// Measurements a sensor's offset must rest on before it is believed.
pub const MIN_SAMPLES: usize = 8;

/// Measurements kept per pair of sensors (the latest): a window long enough for a robust
/// median, short enough to follow a clock that drifts.
pub const WINDOW: usize = 63;

/// A measurement farther than this from zero is not a clock difference but two different
/// events (a connection reported once at its start, once an hour later).
pub const MAX_OFFSET_MS: i64 = 15 * 60_000;

/// A sensor, by number (see [`SensorClocks::sensor`]).
pub type SensorId = u16;

/// The latest measurements of one pair's difference: a ring of at most [`WINDOW`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    samples: Vec<i64>,
    /// Measurements seen in all; the next one replaces `samples[seen % WINDOW]` once full.
    seen: u64,
}

impl Window {
    fn push(&mut self, d: i64) {
        if self.samples.len() < WINDOW {
            self.samples.push(d);
        } else {
            self.samples[(self.seen % WINDOW as u64) as usize] = d;
        }
        self.seen += 1;
    }

    fn median(&self) -> Option<i64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }
}

/// Learned clock offsets of a set of sensors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorClocks {
    /// Sensor names by number.
    names: Vec<String>,
    /// Measurements of `clock(a) - clock(b)` for `a < b`.
    pairs: BTreeMap<(SensorId, SensorId), Window>,
    /// Each sensor's offset against the reference (ms to subtract from its times), once
    /// calibrated; recomputed by [`SensorClocks::settle`].
    offsets: Vec<Option<i64>>,
}

impl SensorClocks {
    /// The number of sensor `name`, given on first sight. At most 65,536 sensors are told
    /// apart; the rest share the last number (and, uncalibrated, the fallback tolerance).
    pub fn sensor(&mut self, name: &str) -> SensorId {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i as SensorId;
        }
        if self.names.len() > usize::from(SensorId::MAX) {
            return SensorId::MAX;
        }
        self.names.push(name.to_owned());
        self.offsets.push(None);
        (self.names.len() - 1) as SensorId
    }

    /// The number of sensor `name`, if it was seen.
    pub fn id_of(&self, name: &str) -> Option<SensorId> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| i.min(usize::from(SensorId::MAX)) as SensorId)
    }

    /// Records that sensor `a` stamped at `ta` what sensor `b` stamped at `tb`.
    pub fn observe(&mut self, a: SensorId, ta: TimestampMs, b: SensorId, tb: TimestampMs) {
        if a == b {
            return;
        }
        let d = ta.saturating_sub(tb);
        if d.abs() > MAX_OFFSET_MS {
            return;
        }
        let (key, d) = if a < b { ((a, b), d) } else { ((b, a), -d) };
        self.pairs.entry(key).or_default().push(d);
    }

    /// Recomputes every sensor's offset from the measurements (call it once per bucket, not per
    /// event). Each group of sensors linked by calibrated pairs takes its lowest-numbered sensor
    /// as the reference (offset 0); the others' offsets are the least-squares fit of the pairs'
    /// medians, by a few sweeps of relaxation from the chain of first links.
    pub fn settle(&mut self) {
        let n = self.names.len();
        let links: Vec<(usize, usize, i64)> = self
            .pairs
            .iter()
            .filter(|(_, w)| w.samples.len() >= MIN_SAMPLES)
            .filter_map(|(&(a, b), w)| Some((usize::from(a), usize::from(b), w.median()?)))
            .collect();
        let mut offsets: Vec<Option<i64>> = vec![None; n];
        let mut root_of_group = vec![false; n];
        // Breadth first from each unreached sensor: a first estimate along a spanning tree.
        for root in 0..n {
            if offsets[root].is_some() || !links.iter().any(|&(a, b, _)| a == root || b == root) {
                continue;
            }
            offsets[root] = Some(0);
            root_of_group[root] = true;
            let mut frontier = vec![root];
            while let Some(s) = frontier.pop() {
                let base = offsets[s].unwrap_or(0);
                for &(a, b, d) in &links {
                    // clock(a) - clock(b) = d: offset(a) = offset(b) + d.
                    let (other, value) = if a == s {
                        (b, base - d)
                    } else if b == s {
                        (a, base + d)
                    } else {
                        continue;
                    };
                    if offsets[other].is_none() {
                        offsets[other] = Some(value);
                        frontier.push(other);
                    }
                }
            }
        }
        // Relaxation: every non-reference sensor moves to the mean its links put it at.
        for _ in 0..8 {
            for s in 0..n {
                if offsets[s].is_none() || root_of_group[s] {
                    continue;
                }
                let (mut sum, mut count) = (0i64, 0i64);
                for &(a, b, d) in &links {
                    if a == s
                        && let Some(ob) = offsets[b]
                    {
                        sum += ob + d;
                        count += 1;
                    } else if b == s
                        && let Some(oa) = offsets[a]
                    {
                        sum += oa - d;
                        count += 1;
                    }
                }
                if count > 0 {
                    offsets[s] = Some(sum.div_euclid(count));
                }
            }
        }
        self.offsets = offsets;
    }

    /// The sensor's offset (ms its clock is ahead of the reference), once calibrated.
    pub fn offset(&self, sensor: SensorId) -> Option<i64> {
        self.offsets.get(usize::from(sensor)).copied().flatten()
    }

    /// `time` stamped by `sensor`, on the reference clock, and whether the sensor is
    /// calibrated (else `time` unchanged). While only one sensor has been seen, its clock is
    /// the reference: there is no other clock to disagree with.
    pub fn correct(&self, sensor: SensorId, time: TimestampMs) -> (TimestampMs, bool) {
        if self.names.len() == 1 {
            return (time, true);
        }
        match self.offset(sensor) {
            Some(o) => (time.saturating_sub(o), true),
            None => (time, false),
        }
    }

    /// Every calibrated sensor with its offset, by name.
    pub fn offsets(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        self.names.iter().zip(&self.offsets).filter_map(|(name, o)| o.map(|o| (name.as_str(), o)))
    }

    /// Number of sensors seen.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No sensor seen.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_sensors_are_put_on_one_clock_despite_outliers() {
        let mut c = SensorClocks::default();
        let (a, b, d) = (c.sensor("a"), c.sensor("b"), c.sensor("d"));
        // b is 20 s ahead of a, d 25 s behind a; a tenth of the measurements are wild.
        for i in 0..60i64 {
            let wild = if i % 10 == 0 { 400_000 } else { 0 };
            let noise = (i * 53) % 400 - 200;
            c.observe(b, 20_000 + noise + wild, a, 0);
            c.observe(d, -25_000 - noise, a, 0);
            c.observe(b, 45_000 + noise, d, 0);
        }
        c.settle();
        let off = |s| c.offset(s).unwrap() - c.offset(a).unwrap();
        assert!((off(b) - 20_000).abs() < 400, "{}", off(b));
        assert!((off(d) + 25_000).abs() < 400, "{}", off(d));
        let (t, calibrated) = c.correct(b, 1_000_000);
        assert!(calibrated);
        assert!((t - c.offset(a).unwrap() - 980_000).abs() < 400);
    }

    #[test]
    fn a_sensor_is_not_believed_before_enough_measurements() {
        let mut c = SensorClocks::default();
        let (a, b, lone) = (c.sensor("a"), c.sensor("b"), c.sensor("lone"));
        for _ in 0..MIN_SAMPLES - 1 {
            c.observe(a, 5_000, b, 0);
        }
        c.settle();
        assert_eq!(c.offset(a), None);
        assert_eq!(c.correct(a, 77), (77, false));
        c.observe(a, 5_000, b, 0);
        c.settle();
        assert_eq!(c.offset(a).unwrap() - c.offset(b).unwrap(), 5_000);
        assert_eq!(c.correct(lone, 77), (77, false));
        assert_eq!(c.sensor("a"), a, "names keep their numbers");
        assert_eq!(c.offsets().count(), 2);
    }

    #[test]
    fn the_same_measurements_give_the_same_offsets_and_survive_a_round_trip() {
        let build = || {
            let mut c = SensorClocks::default();
            let (a, b) = (c.sensor("a"), c.sensor("b"));
            for i in 0..100 {
                c.observe(a, i * 7 % 1000, b, 0);
            }
            c.settle();
            c
        };
        let c = build();
        assert_eq!(c, build());
        let bytes = postcard::to_allocvec(&c).unwrap();
        let back: SensorClocks = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, c);
    }
}
