//! Loading: real plugins pass; every kind of wrong file gets its own error; compiled
//! components are cached on disk.

use std::path::Path;

use storyline::plugin::{LoadError, Origin, Runtime, SUPPORTED_VERSIONS};

use crate::support::{Scratch, component_exporting, plugin, runtime};

fn load(bytes: &[u8]) -> Result<storyline::plugin::Plugin, LoadError> {
    runtime().load_bytes(Path::new("p.wasm"), bytes)
}

#[test]
fn every_real_plugin_loads_and_reports_its_world() {
    for name in ["network-session", "template", "faulty"] {
        let p = runtime().load(&plugin(name)).unwrap_or_else(|e| panic!("{e}"));
        let info = p.info();
        assert_eq!(info.manifest.version, storyline_sdk::WIT_VERSION);
        let export = format!("storyline:correlator/correlator@{}", storyline_sdk::WIT_VERSION);
        assert!(info.manifest.exports.contains(&export));
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(info.name, name.replace('-', "_"));
    }
}

#[test]
fn an_empty_file_is_rejected_as_empty() {
    let err = load(b"").err().unwrap();
    assert!(matches!(err, LoadError::Empty { .. }), "got {err:?}");
    assert!(err.to_string().contains("rename it into place"), "{err}");
}

#[test]
fn a_text_file_is_not_webassembly() {
    let err = load(b"#!/bin/sh\necho hi\n").err().unwrap();
    assert!(matches!(err, LoadError::NotWasm { .. }), "got {err:?}");
}

#[test]
fn a_core_module_is_told_to_build_a_component() {
    let err = load(&wat::parse_str("(module)").unwrap()).err().unwrap();
    assert!(matches!(err, LoadError::CoreModule { .. }), "got {err:?}");
    assert!(err.to_string().contains("--target wasm32-wasip2"), "{err}");
}

#[test]
fn a_truncated_plugin_is_corrupt() {
    let bytes = std::fs::read(plugin("template")).unwrap();
    for cut in [9, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = load(&bytes[..cut]).err().unwrap();
        assert!(matches!(err, LoadError::Corrupt { .. }), "cut at {cut}: got {err:?}");
    }
}

#[test]
fn a_plugin_for_another_contract_version_names_both_versions() {
    let err = load(&component_exporting("storyline:correlator/correlator@0.9.0")).err().unwrap();
    match &err {
        LoadError::WrongVersion { found, .. } => assert_eq!(found, "0.9.0"),
        other => panic!("expected wrong version, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("built for storyline:correlator@0.9.0"), "{msg}");
    assert!(
        msg.contains(&format!("this host supports {}", SUPPORTED_VERSIONS.join(", "))),
        "{msg}"
    );
    assert!(msg.ends_with("rebuild it with a storyline-sdk for 0.2.0"), "{msg}");
}

#[test]
fn a_component_of_another_world_is_not_a_plugin() {
    let err = load(&component_exporting("example:other/thing@1.0.0")).err().unwrap();
    match &err {
        LoadError::NotAPlugin { exports, .. } => {
            assert_eq!(exports, &vec!["example:other/thing@1.0.0".to_string()])
        }
        other => panic!("expected not a plugin, got {other:?}"),
    }
}

#[test]
fn a_component_claiming_the_version_with_the_wrong_shape_is_the_wrong_world() {
    for v in SUPPORTED_VERSIONS {
        let err = load(&component_exporting(&format!("storyline:correlator/correlator@{v}")))
            .err()
            .unwrap();
        assert!(
            matches!(err, LoadError::WrongWorld { ref version, .. } if version == v),
            "{v}: got {err:?}"
        );
    }
}

/// The `template` plugin as built for 0.1.0 (the fixture) and as built today.
fn template_builds() -> (storyline::plugin::Plugin, storyline::plugin::Plugin) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/template-wit-0.1.0.wasm");
    let old = runtime().load(&fixture).unwrap_or_else(|e| panic!("{e}"));
    (old, runtime().load(&plugin("template")).unwrap())
}

/// The events of `sessions` generated sessions, ids `e<line>`.
fn generated_events(sessions: usize) -> Vec<storyline::model::Event> {
    let config = storyline::generate::GenConfig { sessions, ..Default::default() };
    storyline::generate::generate(&config)
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let e = storyline_sdk::format::parse_line(&l.line, i + 1).unwrap();
            e.into_event(|| format!("e{i:04}"), 1_000)
        })
        .collect()
}

/// `tests/fixtures/template-wit-0.1.0.wasm` is the `template` plugin as the SDK built it for
/// `storyline:correlator@0.1.0` (events as a list of records, `route` one event per call).
/// Plugins built then keep working: the fixture and today's build of the same rule route and
/// correlate the same events alike, call for call.
#[test]
fn a_plugin_built_for_0_1_0_still_runs_and_agrees_with_its_0_2_0_build() {
    use storyline::model::Bucket;
    use storyline::plugin::{EventView, Limits};
    let (old, new) = template_builds();
    assert_eq!(old.info().manifest.version, "0.1.0");
    assert_eq!(new.info().manifest.version, "0.2.0");
    let tenant = storyline::model::TenantId::new("acme").unwrap();
    let events = generated_events(50);
    let views: Vec<EventView<'_>> = events.iter().map(EventView::from).collect();
    let mut outputs = Vec::new();
    for plugin in [&old, &new] {
        let mut i = plugin.instantiate(&tenant, "{}", Limits::default()).unwrap();
        let keys = i.route_all(&views).unwrap();
        assert_eq!(keys.len(), events.len());
        assert!(keys.iter().all(Option::is_some));
        assert_eq!(i.route(views[0]).unwrap(), keys[0]);
        let end = events.iter().map(|e| e.event_time).max().unwrap() + 1;
        let bucket = Bucket {
            tenant: "acme".into(),
            shard: 0,
            start: 0,
            end,
            watermark: end,
            events: events.clone(),
        };
        let mut stories = i.process(&bucket, &|_| false).unwrap();
        stories.extend(i.drain(&|id| events.iter().any(|e| e.id == id)).unwrap());
        let stories: Vec<(String, Vec<String>)> =
            stories.into_iter().map(|s| (s.id, s.event_ids)).collect();
        assert!(!stories.is_empty());
        outputs.push((keys, stories));
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// A tenant upgrading from a 0.1.0 build to a 0.2.0 build of its rule while it runs: the new
/// version restores the old one's snapshot and goes on as if it had run from the start.
#[test]
fn state_handed_from_a_0_1_0_plugin_to_its_0_2_0_build_goes_on_alike() {
    use storyline::model::Bucket;
    use storyline::plugin::Limits;
    let (old, new) = template_builds();
    let tenant = storyline::model::TenantId::new("acme").unwrap();
    let mut events = generated_events(100);
    events.sort_by_key(|e| e.event_time);
    // Two buckets by event time; sessions span both.
    let middle = events[events.len() / 2].event_time;
    let end = events.last().unwrap().event_time + 1;
    let bucket = |from: i64, to: i64| Bucket {
        tenant: "acme".into(),
        shard: 0,
        start: from,
        end: to,
        watermark: to,
        events: events.iter().filter(|e| (from..to).contains(&e.event_time)).cloned().collect(),
    };
    let (first, second) = (bucket(i64::MIN, middle), bucket(middle, end));
    let any = |_: &str| true;
    let ids = |v: Vec<storyline::model::Story>| {
        let mut v: Vec<(String, Vec<String>)> =
            v.into_iter().map(|s| (s.id, s.event_ids)).collect();
        v.sort();
        v
    };
    // Upgraded half way.
    let mut a = old.instantiate(&tenant, "{}", Limits::default()).unwrap();
    let mut upgraded = a.process(&first, &any).unwrap();
    let state = a.snapshot().unwrap();
    let mut b = new.instantiate(&tenant, "{}", Limits::default()).unwrap();
    b.restore(&state).unwrap();
    upgraded.extend(b.process(&second, &any).unwrap());
    upgraded.extend(b.drain(&any).unwrap());
    // The new build all along.
    let mut c = new.instantiate(&tenant, "{}", Limits::default()).unwrap();
    let mut straight = c.process(&first, &any).unwrap();
    straight.extend(c.process(&second, &any).unwrap());
    straight.extend(c.drain(&any).unwrap());
    assert!(!state.is_empty() && !straight.is_empty());
    assert_eq!(ids(upgraded), ids(straight));
}

#[test]
fn compiled_components_are_shared_cached_and_a_bad_cache_entry_is_recompiled() {
    let scratch = Scratch::new("cache");
    let rt = Runtime::new(Some(scratch.path("cache"))).unwrap();
    let first = rt.load(&plugin("template")).unwrap();
    assert_eq!(first.info().origin, Origin::Compiled);
    // The same bytes under another path (another tenant's folder): one compiled copy.
    let copy = scratch.path("other/template.wasm");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(plugin("template"), &copy).unwrap();
    let shared = rt.load(&copy).unwrap();
    assert_eq!(shared.info().origin, Origin::Shared);
    assert_eq!(shared.info().path, copy);
    drop((first, shared));
    // Nothing uses it any more: the next load comes from the disk cache.
    let second = rt.load(&plugin("template")).unwrap();
    assert_eq!(second.info().origin, Origin::Cached);
    drop(second);

    let entries: Vec<_> = std::fs::read_dir(scratch.path("cache")).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);
    std::fs::write(entries[0].path(), b"not a compiled component").unwrap();
    let third = rt.load(&plugin("template")).unwrap();
    assert_eq!(third.info().origin, Origin::Compiled);
    let mut inst = third
        .instantiate(&"acme".parse().unwrap(), "{}", Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let stories = inst.process(&crate::support::bucket("acme", 0, &["a"]), &|_| false).unwrap();
    assert_eq!(stories.len(), 0, "template keeps the session open until it times out");
    assert_eq!(inst.drain(&|_| true).unwrap().len(), 1);
}
