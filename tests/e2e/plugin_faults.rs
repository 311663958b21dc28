//! A faulty plugin fails with the exact typed error, and the host goes on serving.

use std::time::Duration;

use storyline::model::{BucketStart, ShardId, TenantId};
use storyline::plugin::{BucketRef, Failure, GuestError, PluginInstance};

use crate::support::{bucket, bucket_of_kind, instance, loaded, test_limits};

/// An instance in a tenant of its own per mode: a tenant's memory budget is shared by all its
/// instances, and these tests run concurrently.
fn faulty(mode: &str) -> PluginInstance {
    instance("faulty", &format!("acme-{mode}"), &format!(r#"{{"mode": "{mode}"}}"#))
}

fn no_earlier_events(_: &str) -> bool {
    false
}

/// After a failure, a fresh instance of the same plugin for the same tenant serves normally.
fn assert_a_new_instance_serves() {
    let mut fresh = faulty("none");
    let stories = fresh.process(&bucket("acme", 5000, &["x", "y"]), &no_earlier_events).unwrap();
    assert_eq!(stories.len(), 2);
}

#[test]
fn a_trap_names_tenant_plugin_bucket_and_panic_and_poisons_the_instance() {
    let mut inst = faulty("trap");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    assert_eq!(err.tenant, TenantId::new("acme-trap").unwrap());
    assert_eq!(err.call, "process");
    assert_eq!(err.bucket, Some(BucketRef { shard: ShardId(0), start: BucketStart(1000) }));
    assert!(err.plugin.starts_with("faulty@"), "{}", err.plugin);
    match &err.failure {
        Failure::Trap { message, stderr } => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(stderr.contains("deliberate trap in bucket starting at 1000"), "{stderr}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(inst.is_poisoned());
    let again = inst.process(&bucket("acme", 2000, &["b"]), &no_earlier_events).unwrap_err();
    assert_eq!(again.failure, Failure::Poisoned);
    assert_a_new_instance_serves();
}

#[test]
fn a_loop_is_stopped_at_the_deadline() {
    let mut inst = faulty("loop");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    assert_eq!(err.failure, Failure::Timeout { limit: Duration::from_millis(500) });
    assert!(err.to_string().contains("ran past its 500 ms deadline"), "{err}");
    assert!(inst.is_poisoned());
    assert_a_new_instance_serves();
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let mut inst = faulty("alloc");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    assert_eq!(err.failure, Failure::MemoryLimit { limit: 64 << 20 });
    assert!(inst.is_poisoned());
    assert_a_new_instance_serves();
    // The trapped instance gave its memory back at once: the tenant can start another one
    // while the poisoned instance still exists.
    let tenant = TenantId::new("acme-alloc").unwrap();
    let none = r#"{"mode": "none"}"#;
    let mut next = loaded("faulty").instantiate(&tenant, none, test_limits()).unwrap();
    assert_eq!(next.process(&bucket("acme", 2000, &["b"]), &no_earlier_events).unwrap().len(), 1);
    drop(inst);
}

#[test]
fn the_memory_limit_is_the_tenants_across_all_its_instances() {
    let limits = storyline::plugin::Limits { memory_bytes: 16 << 20, ..test_limits() };
    let tenant = TenantId::new("acme-budget").unwrap();
    let none = r#"{"mode": "none"}"#;
    // Each instance reserves its initial memory from the tenant's 16 MiB: a handful fit.
    let mut held = Vec::new();
    let refused = loop {
        match loaded("faulty").instantiate(&tenant, none, limits) {
            Ok(i) => held.push(i),
            Err(e) => break e,
        }
        assert!(held.len() < 64, "16 MiB held {} instances: the limit is not shared", held.len());
    };
    assert_eq!(refused.failure, Failure::MemoryLimit { limit: 16 << 20 });
    assert!(!held.is_empty());
    // Another tenant has its own budget.
    let other = TenantId::new("acme-budget-other").unwrap();
    assert!(loaded("faulty").instantiate(&other, none, limits).is_ok());
    // Dropping an instance gives its memory back to the tenant.
    held.pop();
    assert!(loaded("faulty").instantiate(&tenant, none, limits).is_ok());
}

#[test]
fn the_memory_a_tenants_instances_hold_is_reported_and_given_back() {
    let runtime = crate::support::runtime();
    let tenant = TenantId::new("acme-gauge").unwrap();
    let none = r#"{"mode": "none"}"#;
    assert_eq!(runtime.memory_in_use(&tenant), 0);
    let mut a = loaded("faulty").instantiate(&tenant, none, test_limits()).unwrap();
    let b = loaded("faulty").instantiate(&tenant, none, test_limits()).unwrap();
    assert!(a.memory_bytes() > 0);
    assert_eq!(runtime.memory_in_use(&tenant), a.memory_bytes() + b.memory_bytes());
    // A guest that grows its memory holds more.
    let before = a.memory_bytes();
    let ids: Vec<String> = (0..20_000).map(|i| format!("event-{i:06}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    a.process(&bucket("acme-gauge", 1000, &ids), &no_earlier_events).unwrap();
    assert!(a.memory_bytes() > before, "{} then {}", before, a.memory_bytes());
    assert_eq!(runtime.memory_in_use(&tenant), a.memory_bytes() + b.memory_bytes());
    drop(a);
    assert_eq!(runtime.memory_in_use(&tenant), b.memory_bytes());
    drop(b);
    assert_eq!(runtime.memory_in_use(&tenant), 0);
}

#[test]
fn a_guest_error_is_a_refusal_not_a_trap_and_the_instance_goes_on() {
    let mut inst = instance("faulty", "acme", r#"{"mode": "fail", "only_kind": "poison"}"#);
    let err = inst
        .process(&bucket_of_kind("acme", 1000, &["a"], "poison"), &no_earlier_events)
        .unwrap_err();
    assert_eq!(err.failure, Failure::Guest(GuestError::Failed("refusing bucket 1000".into())));
    assert!(!inst.is_poisoned());
    let ok = inst.process(&bucket("acme", 2000, &["b"]), &no_earlier_events).unwrap();
    assert_eq!(ok[0].event_ids, vec!["b".to_string()]);
}

#[test]
fn stories_naming_unknown_events_are_malformed_output() {
    let mut inst = faulty("unknown-ids");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    match &err.failure {
        Failure::Malformed { reason } => {
            assert!(reason.contains("lists event \"no-such-event\""), "{reason}")
        }
        other => panic!("expected malformed output, got {other:?}"),
    }
    // Events of earlier buckets are accepted when the caller knows them.
    let mut inst = faulty("unknown-ids");
    let ok = inst.process(&bucket("acme", 1000, &["a"]), &|id| id == "no-such-event").unwrap();
    assert_eq!(ok.len(), 2);
}

#[test]
fn a_state_over_the_limit_is_refused_with_its_size() {
    let limits = storyline::plugin::Limits { state_bytes: 64, ..test_limits() };
    let mut inst = loaded("network-session")
        .instantiate(&TenantId::new("acme-state").unwrap(), "{}", limits)
        .unwrap();
    let line = |i: u32| {
        format!(
            r#"{{"id":"f{i}","source":"fw","kind":"flow","time":1000,"payload":{{"source":{{"ip":"10.0.0.{i}","port":4000}},"destination":{{"ip":"10.9.9.9","port":443}},"network":{{"transport":"tcp"}}}}}}"#
        )
    };
    let events = (1..20)
        .map(|i| {
            storyline_sdk::format::parse_line(&line(i), i as usize)
                .unwrap()
                .into_event(String::new, 1000)
        })
        .collect();
    let b = storyline::model::Bucket {
        tenant: "acme".into(),
        shard: 0,
        start: 1000,
        end: 2000,
        watermark: 2000,
        events,
    };
    inst.process(&b, &no_earlier_events).unwrap();
    let err = inst.snapshot().unwrap_err();
    assert_eq!(err.call, "snapshot");
    match err.failure {
        Failure::StateTooLarge { bytes, limit } => assert!(limit == 64 && bytes > 64, "{bytes}"),
        other => panic!("expected state too large, got {other:?}"),
    }
    assert!(err.to_string().contains("the limit is 64"), "{err}");
}

#[test]
fn oversized_output_is_refused() {
    let mut inst = faulty("oversized");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    match err.failure {
        Failure::OutputTooLarge { bytes, limit } => {
            assert_eq!(limit, 8 << 20);
            assert!(bytes > 12 << 20, "{bytes}");
        }
        other => panic!("expected output too large, got {other:?}"),
    }
}

#[test]
fn an_empty_story_id_is_malformed_output() {
    let mut inst = faulty("empty-id");
    let err = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Malformed { reason: "a story id is 0 bytes; ids must be 1 to 256 bytes".into() }
    );
}

#[test]
fn a_bad_configuration_fails_init_with_the_plugins_message() {
    let err = loaded("faulty")
        .instantiate(&TenantId::new("acme").unwrap(), r#"{"mode": "bogus"}"#, test_limits())
        .unwrap_err();
    assert_eq!(err.call, "init");
    match &err.failure {
        Failure::Guest(GuestError::InvalidConfig(m)) => {
            assert!(m.starts_with("unknown mode \"bogus\"; known modes: none, trap"), "{m}")
        }
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn a_chatty_plugin_is_capped_and_its_call_still_succeeds() {
    let mut inst = faulty("chatty");
    let stories = inst.process(&bucket("acme", 1000, &["a"]), &no_earlier_events).unwrap();
    assert_eq!(stories.len(), 1);
    // 10,000 records logged: 100 forwarded (the per-call cap), the rest dropped and counted.
    assert_eq!(inst.log_counts(), (100, 9_900));
}

#[test]
fn guest_logs_are_rate_limited_across_calls() {
    let caps = storyline::plugin::LogCaps { records_per_second: 150, ..Default::default() };
    let limits = storyline::plugin::Limits { log: caps, ..test_limits() };
    let tenant = TenantId::new("acme-chatty-rate").unwrap();
    let mut inst = loaded("faulty").instantiate(&tenant, r#"{"mode": "chatty"}"#, limits).unwrap();
    let b = bucket("acme", 1000, &["a"]);
    inst.process(&b, &no_earlier_events).unwrap();
    inst.process(&b, &no_earlier_events).unwrap();
    // Two calls within a second: 100, then only the 50 left of the second's 150.
    assert_eq!(inst.log_counts().0, 150);
    std::thread::sleep(Duration::from_millis(1100));
    inst.process(&b, &no_earlier_events).unwrap();
    assert_eq!(inst.log_counts().0, 250);
}

#[test]
fn a_looping_tenant_does_not_stop_another_tenant() {
    let looping = std::thread::spawn(|| {
        let mut inst = instance("faulty", "bad", r#"{"mode": "loop"}"#);
        inst.process(&bucket("bad", 1000, &["a"]), &no_earlier_events).unwrap_err().failure
    });
    let mut good = instance("faulty", "good", "{}");
    for i in 0..20 {
        let id = format!("e{i}");
        let stories = good.process(&bucket("good", i * 1000, &[&id]), &no_earlier_events).unwrap();
        assert_eq!(stories[0].event_ids, vec![id]);
    }
    assert_eq!(looping.join().unwrap(), Failure::Timeout { limit: Duration::from_millis(500) });
}
