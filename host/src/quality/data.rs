//! Data sets for the quality benchmark: real sensor logs read through the input adapters, with
//! each sensor's own session key taken out of the event and kept as the ground truth, and the
//! perturbations real fleets add (clock skew per sensor, reports in the reverse direction).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};
use storyline_sdk::format::InputEvent;

use super::Labeled;
use crate::generate::Rng;
use crate::producer::format::{Adapter, Format};

/// A named set of labeled events.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What to call it in the table.
    pub name: String,
    /// The events, each with its truth and arrival time.
    pub events: Vec<Labeled>,
    /// Lines the adapters refused (reports, statistics, broken lines).
    pub skipped: usize,
}

/// How a file of a data set is read.
fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.contains("summary") || name.ends_with(".gz") {
        return None;
    }
    if name.starts_with("eve") && name.ends_with(".json") {
        return Some(Format::Suricata);
    }
    // `conn.log`, `conn.09:00:00-10:00:00.log`, `conn.json`, a labelled `conn.log.labeled`.
    (name.ends_with(".log") || name.ends_with(".json") || name.contains(".log."))
        .then_some(Format::Zeek)
}

/// Every file under `dir` that holds sensor records, in name order.
fn files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Format)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = format_of(&p) {
                out.push((p, f));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a directory of Zeek logs (JSON or TSV, any log types) and Suricata EVE files.
///
/// The sensor's session key (`zeek.uid`, a file's first connection uid,
/// `suricata.flow_id`) is removed from the payload, with `network.community_id`, and becomes
/// the truth. Arrival order is the order sensors write in: a flow record when its connection
/// ends (its time plus `event.duration`), anything else at its time; one second later each.
pub fn load_dir(dir: &Path, name: &str) -> anyhow::Result<Dataset> {
    let mut events = Vec::new();
    let mut skipped = 0;
    let listed = files(dir)?;
    if listed.is_empty() {
        anyhow::bail!(
            "{} holds no Zeek logs (*.log, *.json) or Suricata EVE files (eve*.json)",
            dir.display()
        );
    }
    for (path, format) in listed {
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut adapter = Adapter::new(format);
        if let Some(n) = &file_name {
            adapter = adapter.file_name(n);
        }
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let Ok(line) = line else {
                skipped += 1;
                continue;
            };
            match adapter.parse(&line, i + 1) {
                Ok(Some(event)) => events.push(label(event)),
                Ok(None) => {}
                Err(_) => skipped += 1,
            }
        }
    }
    events.sort_by_key(|e| e.arrival_ms);
    Ok(Dataset { name: name.to_string(), events, skipped })
}

/// Takes the sensor's session key out of `event` as its truth; names its sensor by kind; sets
/// its arrival.
fn label(mut event: InputEvent) -> Labeled {
    let mut truth = None;
    let mut duration_ms = 0;
    if let Ok(Value::Object(mut payload)) = serde_json::from_slice::<Value>(&event.payload) {
        truth = take_truth(&mut payload);
        if let Some(Value::Object(net)) = payload.get_mut("network") {
            net.remove("community_id");
        }
        duration_ms = payload
            .get("event")
            .and_then(|e| e.get("duration"))
            .and_then(Value::as_i64)
            .map_or(0, |ns| (ns / 1_000_000).max(0));
        event.payload = Value::Object(payload).to_string().into_bytes();
    }
    let arrival_ms = event.time.saturating_add(duration_ms).saturating_add(1000);
    Labeled { event, truth, arrival_ms }
}

/// Removes the session keys of the original record kept in the payload and returns the one
/// that names the connection.
fn take_truth(payload: &mut Map<String, Value>) -> Option<String> {
    if let Some(Value::Object(zeek)) = payload.get_mut("zeek") {
        let uid = zeek.remove("uid");
        let conn_uids = zeek.remove("conn_uids");
        zeek.remove("uids");
        zeek.remove("community_id");
        let first_conn =
            conn_uids.as_ref().and_then(|v| v.as_array()).and_then(|a| a.first().cloned());
        return uid.or(first_conn).and_then(|v| v.as_str().map(str::to_owned));
    }
    if let Some(Value::Object(eve)) = payload.get_mut("suricata") {
        let id = eve.remove("flow_id");
        eve.remove("parent_id");
        eve.remove("community_id");
        return id.map(|v| v.to_string());
    }
    None
}

/// The data set as a fleet would deliver it: each kind of record of a sensor written by a
/// sensor of its own (`<sensor>/<kind>`: Zeek's `conn`, `dns`, `ssl`... as if each came from
/// another box), each such sensor's clock off by a fixed amount within ±`skew_ms`, and a share
/// `reversed` of the events reported destination → source, all drawn from `seed`. Arrival
/// times stay: sensors deliver on time, their clocks are what is wrong.
pub fn perturb(data: &Dataset, skew_ms: i64, reversed: f64, seed: u64) -> Dataset {
    let mut rng = Rng(seed);
    let mut skews: BTreeMap<String, i64> = BTreeMap::new();
    let mut events = data.events.clone();
    for e in &mut events {
        e.event.source = format!("{}/{}", e.event.source, e.event.kind);
    }
    for e in &events {
        skews.entry(e.event.source.clone()).or_insert(0);
    }
    for skew in skews.values_mut() {
        *skew = rng.range(-skew_ms, skew_ms);
    }
    for e in &mut events {
        e.event.time = e.event.time.saturating_add(skews[&e.event.source]);
        if rng.chance(reversed) {
            reverse(&mut e.event);
        }
    }
    Dataset {
        name: format!(
            "{} (clocks ±{} s, {:.0}% reversed)",
            data.name,
            skew_ms / 1000,
            reversed * 100.0
        ),
        events,
        skipped: data.skipped,
    }
}

/// Swaps `source` and `destination` in the payload.
fn reverse(event: &mut InputEvent) {
    let Ok(Value::Object(mut p)) = serde_json::from_slice::<Value>(&event.payload) else { return };
    let source = p.remove("source");
    let destination = p.remove("destination");
    if let Some(d) = destination {
        p.insert("source".into(), d);
    }
    if let Some(s) = source {
        p.insert("destination".into(), s);
    }
    event.payload = Value::Object(p).to_string().into_bytes();
}

/// `storyline generate` output with the truth it names (`gen.session`), in arrival order.
pub fn generated(sessions: usize, max_skew_ms: i64, seed: u64) -> Dataset {
    let config = crate::generate::GenConfig {
        sessions,
        max_skew_ms,
        seed,
        ..crate::generate::GenConfig::default()
    };
    let mut events = Vec::new();
    for g in crate::generate::generate(&config) {
        if let Ok(mut event) = storyline_sdk::format::parse_line(&g.line, 0) {
            // The truth travels in an attribute: rules must not see it.
            event.attributes.retain(|(k, _)| k != "gen.session");
            events.push(Labeled {
                event,
                truth: Some(g.session.to_string()),
                arrival_ms: g.arrival_ms,
            });
        }
    }
    events.sort_by_key(|e| e.arrival_ms);
    Dataset {
        name: format!("storyline generate ({sessions} sessions, clocks ±{} s)", max_skew_ms / 1000),
        events,
        skipped: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(payload: &str) -> InputEvent {
        InputEvent {
            id: None,
            source: "zeek".into(),
            kind: "ssl".into(),
            time: 1_000,
            route: None,
            attributes: Vec::new(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_session_key_is_taken_out_of_the_event_and_kept_as_truth() {
        let e = label(input(
            r#"{"source":{"ip":"10.0.0.1","port":1},"network":{"community_id":"1:x","transport":"tcp"},"zeek":{"uid":"CAbc","community_id":"1:x","ts":1.0}}"#,
        ));
        assert_eq!(e.truth.as_deref(), Some("CAbc"));
        let text = String::from_utf8(e.event.payload).unwrap();
        assert!(!text.contains("CAbc") && !text.contains("1:x"), "{text}");
        assert_eq!(e.arrival_ms, 2_000);
        let files = label(input(r#"{"zeek":{"conn_uids":["C1","C2"],"fuid":"F1"}}"#));
        assert_eq!(files.truth.as_deref(), Some("C1"));
        let eve = label(input(r#"{"suricata":{"flow_id":123456,"event_type":"alert"}}"#));
        assert_eq!(eve.truth.as_deref(), Some("123456"));
        assert!(!String::from_utf8(eve.event.payload).unwrap().contains("123456"));
    }

    #[test]
    fn a_flow_record_arrives_when_its_connection_ends() {
        let e = label(input(r#"{"event":{"duration":5000000000},"zeek":{"uid":"C"}}"#));
        assert_eq!(e.arrival_ms, 1_000 + 5_000 + 1_000);
    }

    #[test]
    fn perturbation_shifts_each_sensor_by_one_amount_and_reverses_a_share() {
        let data = Dataset {
            name: "d".into(),
            events: (0..1000)
                .map(|i| {
                    let mut e = label(input(
                        r#"{"source":{"ip":"10.0.0.1","port":1},"destination":{"ip":"10.0.0.2","port":2},"zeek":{"uid":"C"}}"#,
                    ));
                    e.event.source = format!("sensor-{}", i % 4);
                    e
                })
                .collect(),
            skipped: 0,
        };
        let p = perturb(&data, 30_000, 0.3, 7);
        let mut shifts = BTreeMap::new();
        let mut reversed = 0;
        for (before, after) in data.events.iter().zip(&p.events) {
            let shift = after.event.time - before.event.time;
            assert!(shift.abs() <= 30_000);
            assert_eq!(after.event.source, format!("{}/ssl", before.event.source));
            assert_eq!(*shifts.entry(&before.event.source).or_insert(shift), shift);
            reversed += usize::from(after.event.payload != before.event.payload);
        }
        assert_eq!(shifts.len(), 4);
        assert!((200..400).contains(&reversed), "{reversed} of 1000 reversed");
    }
}
