//! End to end on the embedded store, in one process (the embedded store belongs to one
//! process): producer → durable batches → workers → network-session → published stories.
//!
//! Run: `cargo bench -p storyline --bench pipeline` (`-- --events N`, default 1,000,000;
//! `-- --config '{"gap_ms": 10000}'` for the plugin; `-- --reload-every-ms N` hot-reloads a
//! new plugin version every N ms through the watched plugin directory, to see the cost;
//! `-- --no-latency` stops after the throughput figures; `-- --checkpoint-ms N` changes how often
//! offsets and plugin state are committed, 5,000 by default as in `storyline run`; `-- --memory-mb N`
//! the tenant's memory limit, 2,048 by default as in `storyline run`; `-- --batch N` events per
//! durable batch, 1,000 as in `storyline ingest`; `-- --plugin NAME` another plugin of
//! `plugins/`, e.g. `template`, to see what the host's path costs with a lighter rule;
//! `-- --bucket-ms N --delay-ms N --shards N` the layout and read delay, 1,000 ms, 1,000 ms
//! and 4 by default as `storyline run`: shorter buckets hand the workers smaller, steadier
//! work).
//!
//! Prints: ingest rate; end-to-end rate (first event written → last event handed to the plugin
//! and committed, producer and workers running together); the CPU that took per event (all
//! threads, user and system) and how busy the two cores were; the steady rate (events through the
//! plugin per second while the producer writes, from a tenth of the input on); story latency p50/p99, measured for
//! each story as the publication time of its latest revision minus the insert time of its last
//! event. Latency includes the plugin's session timeout (a session closes after gap + skew
//! without events, 90 s by default), so it is printed with the configuration used.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use storyline::catalog::Catalog;
use storyline::generate::{GenConfig, generate};
use storyline::model::{BucketStart, ShardId, TenantId};
use storyline::plugin::{Limits, Runtime};
use storyline::producer::{IngestReport, Producer, now_ms};
use storyline::store::embedded::EmbeddedStore;
use storyline::store::{Layout, Store};
use storyline::worker::{Shared, WorkerConfig, run_tenant};

#[path = "../../tests/e2e/plugin_build.rs"]
mod plugin_build;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// CPU time of this process so far (user and system), from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks of 1/100 s.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // Warnings and errors of the workers (a failing plugin call, a refused commit) go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("STORYLINE_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let events: usize = arg(&args, "--events").and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let plugin_config = arg(&args, "--config").unwrap_or_else(|| "{}".into());
    let plugin_name = arg(&args, "--plugin").unwrap_or_else(|| "network-session".into());
    let sessions = events / 4;
    let interval_ms = 50;
    let lines: Vec<String> = generate(&GenConfig {
        sessions,
        start_ms: now_ms() - sessions as i64 * interval_ms,
        interval_ms,
        ..GenConfig::default()
    })
    .into_iter()
    .map(|e| e.line)
    .collect();
    let total = lines.len() as u64;

    let dir = std::env::temp_dir().join(format!("storyline-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = EmbeddedStore::new(&dir);
    let reload_every: Option<u64> = arg(&args, "--reload-every-ms").and_then(|n| n.parse().ok());
    let runtime = Runtime::new(Some(dir.join("cache"))).expect("wasm runtime");
    let plugin = runtime.load(&plugin_build::plugin(&plugin_name)).expect("plugin");
    let tenant = TenantId::new("bench").expect("tenant");
    // The plugin directory, followed for changes like `storyline run` does.
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(plugins.join("bench")).expect("plugin dir");
    std::fs::copy(plugin_build::plugin(&plugin_name), plugins.join("bench/rules.wasm"))
        .expect("plugin copy");
    std::fs::write(plugins.join("bench/rules.json"), &plugin_config).expect("config");
    // `--memory-mb N`: the tenant's memory limit, as `run --memory-mb` (default 2048).
    let mut limits = Limits::default();
    if let Some(mb) = arg(&args, "--memory-mb").and_then(|n| n.parse::<usize>().ok()) {
        limits.memory_bytes = mb << 20;
    }
    let catalog = Catalog::new(runtime.clone(), &plugins, limits);
    catalog.reload(&tenant);
    let _watcher = catalog.watch(|_| {}).expect("watch");
    // `--bucket-ms N`, `--shards N`, `--delay-ms N`: the tenant's layout and the workers' read
    // delay (1,000 ms buckets, 4 shards and a 1,000 ms delay by default, as `storyline run`).
    let layout = Layout {
        bucket_ms: arg(&args, "--bucket-ms")
            .and_then(|n| n.parse().ok())
            .unwrap_or(Layout::default().bucket_ms),
        shards: arg(&args, "--shards")
            .and_then(|n| n.parse().ok())
            .unwrap_or(Layout::default().shards),
    };
    let delay_ms: i64 = arg(&args, "--delay-ms").and_then(|n| n.parse().ok()).unwrap_or(1000);
    println!(
        "pipeline: {total} events ({sessions} sessions), {} shards, {} ms buckets, plugin {plugin_name}, config {plugin_config}",
        layout.shards, layout.bucket_ms
    );

    let checkpoint_ms: i64 = arg(&args, "--checkpoint-ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or(WorkerConfig::default().checkpoint_ms);
    let shared = Shared::default();
    let worker = {
        let (handle, store, tenant, shared) =
            (rt.handle().clone(), store.clone(), tenant.clone(), shared.clone());
        let config = WorkerConfig { delay_ms, limits, checkpoint_ms, ..WorkerConfig::default() };
        let slot = catalog.slot(&tenant);
        std::thread::spawn(move || run_tenant(&handle, &store, &tenant, &slot, &config, &shared))
    };
    // New versions while the pipeline runs: the configuration changes (a new gap) each time.
    let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(every) = reload_every {
        let (plugins, reloads, progress) =
            (plugins.clone(), reloads.clone(), shared.progress.clone());
        std::thread::spawn(move || {
            while progress.events.load(Ordering::Relaxed) < total {
                std::thread::sleep(Duration::from_millis(every));
                let n = reloads.fetch_add(1, Ordering::Relaxed) + 1;
                let tmp = plugins.join("bench/.rules.tmp");
                let _ = std::fs::write(&tmp, format!(r#"{{"gap_ms": {}}}"#, 60_000 + n));
                let _ = std::fs::rename(&tmp, plugins.join("bench/rules.json"));
            }
        });
    }

    // The producer, on this thread, routing with its own plugin instance as `ingest` does.
    let router = storyline::producer::Router::new(
        plugin.clone(),
        plugin_config.clone(),
        tenant.clone(),
        limits,
        "the bench's own instance",
    );
    // `--batch N`: events per durable batch (1,000 by default, as `storyline ingest`).
    let batch: usize = arg(&args, "--batch")
        .and_then(|n| n.parse().ok())
        .unwrap_or(storyline::producer::DEFAULT_BATCH);
    let mut producer =
        Producer::new(&store, tenant.clone(), layout, Some(router)).batch_size(batch);
    let mut report = IngestReport::default();
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    // Workers' progress when a tenth of the input is written: the steady rate is measured from
    // there to the last write, without the start-up and the tail (read delay, last buckets).
    let mut tenth = (Duration::ZERO, 0);
    // One task for the whole input, as `storyline ingest` drives its producer.
    rt.block_on(async {
        for (i, line) in lines.iter().enumerate() {
            producer.push_line(line, i + 1, &mut report).await.expect("ingest");
            if i == lines.len() / 10 {
                tenth = (started.elapsed(), shared.progress.events.load(Ordering::Relaxed));
            }
        }
        producer.flush(&mut report).await.expect("flush");
    });
    let ingested = started.elapsed();
    let steady = (shared.progress.events.load(Ordering::Relaxed) - tenth.1) as f64
        / (ingested - tenth.0).as_secs_f64();
    while shared.progress.events.load(Ordering::Relaxed) < total {
        std::thread::sleep(Duration::from_millis(20));
    }
    let processed = started.elapsed();
    let cpu = cpu_seconds() - cpu_started;
    println!(
        "  ingest      {:>9.0} events/s  ({} events durable in {ingested:.2?}, fsync per {} events)",
        total as f64 / ingested.as_secs_f64(),
        report.accepted,
        batch
    );
    println!(
        "  end to end  {:>9.0} events/s  (all {total} events through the plugin, stories published, {processed:.2?} after the first write; offsets committed every {} s or more; 2 cores)",
        total as f64 / processed.as_secs_f64(),
        checkpoint_ms as f64 / 1000.0
    );
    println!(
        "  cpu         {:>9.1} µs/event  ({cpu:.1} s of CPU, user and system, in {processed:.2?}: {:.0}% of 2 cores)",
        cpu * 1e6 / total as f64,
        cpu / processed.as_secs_f64() / 2.0 * 100.0
    );
    if steady > 0.0 {
        println!(
            "  steady      {steady:>9.0} events/s  (through the plugin while the producer writes, from a tenth of the input to the last write)"
        );
    }
    if reload_every.is_some() {
        let status = catalog.slot(&tenant).status();
        println!(
            "  reloads     {} new versions written, {} loaded during the run (every shard switched at a bucket boundary)",
            reloads.load(Ordering::Relaxed),
            status.loads.saturating_sub(1)
        );
    }

    if args.iter().any(|a| a == "--no-latency") {
        shared.shutdown.store(true, Ordering::Relaxed);
        worker.join().expect("worker thread").expect("worker");
        // The producer holds the store too: its background work ends with the last holder.
        drop(producer);
        drop(store);
        remove_scratch(&dir);
        return;
    }
    // Wait until every session's story is out: sessions close on their timeout.
    let give_up = Instant::now() + Duration::from_secs(600);
    let stories = loop {
        std::thread::sleep(Duration::from_secs(5));
        let stories = rt.block_on(store.stories(&tenant, false)).expect("stories");
        let covered: usize = stories.iter().map(|s| s.story.event_ids.len()).sum();
        if covered as u64 >= total || Instant::now() > give_up {
            break stories;
        }
    };
    shared.shutdown.store(true, Ordering::Relaxed);
    worker.join().expect("worker thread").expect("worker");

    let mut insert_time: HashMap<String, i64> = HashMap::with_capacity(lines.len());
    for shard in 0..layout.shards {
        let mut after: Option<BucketStart> = None;
        while let Some(b) =
            rt.block_on(store.next_bucket(&tenant, ShardId(shard), after)).expect("index")
        {
            for e in rt
                .block_on(store.read_bucket(&tenant, ShardId(shard), b))
                .expect("read")
                .into_events()
            {
                insert_time.insert(e.id, e.insert_time);
            }
            after = Some(b);
        }
    }
    let mut latencies: Vec<i64> = stories
        .iter()
        .filter_map(|s| {
            let last = s.story.event_ids.iter().filter_map(|id| insert_time.get(id)).max()?;
            Some(s.published_ms - last)
        })
        .collect();
    latencies.sort_unstable();
    println!(
        "  latency     p50 {:.1} s, p99 {:.1} s over {} stories (last event written -> latest revision published)",
        percentile(&latencies, 0.5) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        latencies.len()
    );
    drop(producer);
    drop(store);
    remove_scratch(&dir);
}

/// Removes the bench's directory (over a gigabyte). The store's background threads may still be
/// finishing a flush into it when the last handle goes, so a failure is retried for a few
/// seconds, then reported.
fn remove_scratch(dir: &std::path::Path) {
    for _ in 0..50 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("pipeline: could not remove {}; remove it by hand", dir.display());
}
