//! The network-session plugin as a component: same output as native, ground truth recovered,
//! state carried across instances.

use std::collections::{BTreeMap, BTreeSet};

use storyline::generate::{GenConfig, arrival_buckets, generate};
use storyline::model::latest_revisions;
use storyline::model::{Bucket, Story};
use storyline_sdk::Correlator;
use storyline_sdk::testing::Harness;

use crate::support::instance;

fn stream(sessions: usize) -> (Vec<Bucket>, BTreeMap<String, String>) {
    let events = generate(&GenConfig { sessions, ..GenConfig::default() });
    let buckets = arrival_buckets(&events, "acme", 1000);
    let truth = buckets
        .iter()
        .flat_map(|b| &b.events)
        .map(|e| (e.id.clone(), e.attribute("gen.session").unwrap().to_string()))
        .collect();
    (buckets, truth)
}

fn run_wasm(buckets: &[Bucket]) -> Vec<Story> {
    let mut inst = instance("network-session", "acme", "{}");
    let mut out = Vec::new();
    for b in buckets {
        out.extend(inst.process(b, &|_| true).unwrap_or_else(|e| panic!("{e}")));
    }
    out.extend(inst.drain(&|_| true).unwrap());
    out
}

#[test]
fn the_component_publishes_exactly_what_the_native_build_publishes() {
    let (buckets, _) = stream(300);
    let native = Harness::<network_session::NetworkSession>::new("{}")
        .unwrap()
        .run_buckets(buckets.clone())
        .unwrap()
        .into_iter()
        .map(Story::from)
        .collect::<Vec<_>>();
    assert_eq!(run_wasm(&buckets), native);
}

#[test]
fn every_generated_session_becomes_exactly_one_story() {
    let (buckets, truth) = stream(400);
    let stories = latest_revisions(run_wasm(&buckets));
    let mut seen = BTreeSet::new();
    let mut story_of_session: BTreeMap<&str, &str> = BTreeMap::new();
    for s in &stories {
        let sessions: BTreeSet<&str> = s.event_ids.iter().map(|id| truth[id].as_str()).collect();
        assert_eq!(sessions.len(), 1, "story {} mixes sessions {sessions:?}", s.id);
        let session = sessions.into_iter().next().unwrap();
        if let Some(other) = story_of_session.insert(session, &s.id) {
            panic!("session {session} split over stories {other} and {}", s.id);
        }
        for id in &s.event_ids {
            assert!(seen.insert(id.clone()), "event {id} in two stories");
        }
    }
    assert_eq!(seen.len(), truth.len(), "every event lands in a story");
}

#[test]
fn state_restored_into_a_new_instance_continues_exactly() {
    let (buckets, _) = stream(200);
    let uninterrupted = run_wasm(&buckets);
    let (first, second) = buckets.split_at(buckets.len() / 2);
    let mut a = instance("network-session", "acme", "{}");
    let mut out = Vec::new();
    for b in first {
        out.extend(a.process(b, &|_| true).unwrap());
    }
    let state = a.snapshot().unwrap();
    drop(a);
    let mut b = instance("network-session", "acme", "{}");
    b.restore(&state).unwrap();
    for bucket in second {
        out.extend(b.process(bucket, &|_| true).unwrap());
    }
    out.extend(b.drain(&|_| true).unwrap());
    assert_eq!(out, uninterrupted);
}

#[test]
fn garbage_state_is_refused_by_restore_and_the_instance_keeps_working() {
    let mut inst = instance("network-session", "acme", "{}");
    let err = inst.restore(b"\x01\x02garbage").unwrap_err();
    assert!(
        matches!(
            err.failure,
            storyline::plugin::Failure::Guest(storyline::plugin::GuestError::InvalidState(_))
        ),
        "{err:?}"
    );
    let (buckets, _) = stream(20);
    assert!(inst.process(&buckets[0], &|_| true).is_ok());
    let _ = network_session::NetworkSession::init("{}").unwrap();
}
