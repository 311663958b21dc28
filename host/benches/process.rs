//! Events per second through `process` for `network-session`: the Wasm component run by the
//! host (with its limits on) against the same correlator compiled natively.
//!
//! Run: `cargo bench -p storyline --bench process` (`-- --events N` to change the size).
//! Buckets hold about 1,300 events in arrival order, as the worker reads them; payloads are the
//! generator's ECS JSON (about 300 bytes). `-- --bucket-ms N --interval-ms M` sets the bucket
//! length (17,000 by default) and the time between session starts (50 ms, four events each), so
//! that `--bucket-ms 1000 --interval-ms 4` is one shard of a tenant at 1,000 events/s with the
//! default 1 s buckets: the rule then keeps sessions over 690 buckets (gap, skew and reopen), as
//! it would in a live deployment. Then the cost of `snapshot` of the state all of it
//! leaves behind (sessions kept for late events), Wasm and native.

use std::time::{Duration, Instant};

use storyline::generate::{GenConfig, arrival_buckets, generate};
use storyline::model::{Bucket, Story, TenantId};
use storyline::plugin::{Limits, Runtime};
use storyline_sdk::Correlator;

#[path = "../../tests/e2e/plugin_build.rs"]
mod plugin_build;

const ROUNDS: usize = 7;

/// The generator emits ~4 events per session, a session every `interval_ms`.
fn buckets(events: usize, bucket_ms: i64, interval_ms: i64) -> Vec<Bucket> {
    let generated =
        generate(&GenConfig { sessions: events / 4, interval_ms, ..GenConfig::default() });
    arrival_buckets(&generated, "bench", bucket_ms)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events = arg(&args, "--events").unwrap_or(100_000usize);
    let bucket_ms = arg(&args, "--bucket-ms").unwrap_or(17_000i64);
    let interval_ms = arg(&args, "--interval-ms").unwrap_or(50i64);
    let buckets = buckets(events, bucket_ms, interval_ms);
    let total: usize = buckets.iter().map(|b| b.events.len()).sum();
    let payload: usize = buckets.iter().flat_map(|b| &b.events).map(|e| e.payload.len()).sum();
    println!(
        "network-session process(): {total} events in {} buckets of {bucket_ms} ms (mean {} events), mean payload {} bytes, best of {ROUNDS}",
        buckets.len(),
        total / buckets.len().max(1),
        payload / total.max(1)
    );

    let native_round = || {
        let mut c = network_session::NetworkSession::init("{}").expect("init");
        let started = Instant::now();
        let mut stories = 0;
        // Stories leave as publishable values, fields as JSON text, as they leave the component.
        for b in &buckets {
            stories += c.process(b).expect("process").into_iter().map(Story::from).count();
        }
        stories += c.drain().expect("drain").into_iter().map(Story::from).count();
        (started.elapsed(), stories)
    };

    let runtime = Runtime::new(None).expect("runtime");
    let plugin = runtime.load(&plugin_build::plugin("network-session")).expect("load plugin");
    let tenant = TenantId::new("bench").expect("tenant");
    let wasm_round = || {
        let mut inst = plugin.instantiate(&tenant, "{}", Limits::default()).expect("instantiate");
        let started = Instant::now();
        let mut stories = 0;
        for b in &buckets {
            stories += inst.process(b, &|_| true).expect("process").len();
        }
        stories += inst.drain(&|_| true).expect("drain").len();
        (started.elapsed(), stories)
    };
    // Rounds alternate so that both sides see the same machine noise; the best of each counts.
    let mut native = (Duration::MAX, 0);
    let mut wasm = (Duration::MAX, 0);
    for _ in 0..ROUNDS {
        native = native.min(native_round());
        wasm = wasm.min(wasm_round());
    }
    let ((native, native_stories), (wasm, wasm_stories)) = (native, wasm);

    assert_eq!(native_stories, wasm_stories, "native and Wasm must publish the same stories");
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("  native  {:>10.0} events/s  ({:?})", rate(native), native);
    println!(
        "  wasm    {:>10.0} events/s  ({:?}, epoch deadline + memory limit + output checks)",
        rate(wasm),
        wasm
    );
    println!(
        "  wasm/native time ratio: {:.2}x  ({native_stories} story publications)",
        wasm.as_secs_f64() / native.as_secs_f64()
    );

    // Snapshot of the state after every bucket (before drain), best of ROUNDS.
    let mut c = network_session::NetworkSession::init("{}").expect("init");
    let mut inst = plugin.instantiate(&tenant, "{}", Limits::default()).expect("instantiate");
    for b in &buckets {
        c.process(b).expect("process");
        inst.process(b, &|_| true).expect("process");
    }
    // Before any snapshot: what holding the state takes (a snapshot needs room on top).
    let memory = inst.memory_bytes();
    let best = |f: &mut dyn FnMut() -> usize| {
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                let n = f();
                (started.elapsed(), n)
            })
            .min()
            .unwrap_or_default()
    };
    let (native, bytes) = best(&mut || c.snapshot().len());
    let (wasm, wasm_bytes) = best(&mut || inst.snapshot().expect("snapshot").len());
    assert_eq!(bytes, wasm_bytes, "native and Wasm must take the same snapshot");
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!("snapshot of the state left ({:.1} MB):", bytes as f64 / 1e6);
    println!("  native  {:>8.0} MB/s  ({native:?})", mbps(native));
    println!("  wasm    {:>8.0} MB/s  ({wasm:?}, with the copy out of the guest)", mbps(wasm));
    println!(
        "guest memory holding that state: {:.1} MB ({:.1}x the snapshot)",
        memory as f64 / 1e6,
        memory as f64 / bytes.max(1) as f64
    );
}
