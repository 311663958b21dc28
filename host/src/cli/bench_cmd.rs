//! `storyline bench quality` and `storyline bench tenants`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::plugin::Runtime;
use crate::quality::{self, Dataset};

/// Scores the rule in `plugin` (with its configuration) on each data directory, plain and
/// perturbed, and on generated sessions; prints the table as it goes.
pub fn quality(
    data_dir: &Path,
    (plugin, config, generated_config): (&Path, &str, &str),
    data: &[PathBuf],
    generated: usize,
    (skew_ms, reversed, seed): (i64, f64, u64),
    dump: Option<&Path>,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&reversed) {
        anyhow::bail!("--reversed is a share between 0 and 1, got {reversed}");
    }
    let config = super::plugin_cmd::config_arg(config)?;
    let generated_config = super::plugin_cmd::config_arg(generated_config)?;
    let runtime = Runtime::new(Some(data_dir.join("cache").join("components")))?;
    let plugin = runtime.load(plugin)?;
    let mut sets: Vec<Dataset> = Vec::new();
    for dir in data {
        let name = dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let set = quality::load_dir(dir, &name)
            .with_context(|| format!("cannot read data set {}", dir.display()))?;
        eprintln!(
            "{name}: {} events ({} with a session key), {} lines skipped",
            set.events.len(),
            set.events.iter().filter(|e| e.truth.is_some()).count(),
            set.skipped
        );
        sets.push(set);
    }
    if generated > 0 {
        sets.push(quality::generated(generated, skew_ms, seed));
    }
    let mut rows = Vec::new();
    for set in &sets {
        let is_generated = set.name.starts_with("storyline generate");
        let config = if is_generated { &generated_config } else { &config };
        // Generated sensors already have their own clocks and directions.
        let perturbed = (!is_generated).then(|| quality::perturb(set, skew_ms, reversed, seed));
        for (n, data) in std::iter::once(set).chain(perturbed.as_ref()).enumerate() {
            let started = std::time::Instant::now();
            let file = dump.map(|d| {
                d.join(format!("{}-{n}.tsv", data.name.split(' ').next().unwrap_or("data")))
            });
            if let Some(d) = dump {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
            }
            rows.extend(quality::rows(&plugin, config, data, file.as_deref())?);
            eprintln!("{}: scored in {:.1} s", data.name, started.elapsed().as_secs_f64());
        }
    }
    let mut out = std::io::stdout().lock();
    out.write_all(quality::table(&rows).as_bytes())?;
    Ok(())
}

/// What `storyline bench tenants` measures.
#[derive(Debug, Clone)]
pub struct TenantsBench {
    /// The rule every tenant runs.
    pub plugin: PathBuf,
    /// Numbers of idle tenants to try.
    pub counts: Vec<usize>,
    /// Seconds of idleness over which CPU is measured.
    pub idle_secs: u64,
    /// Sessions of the busy tenant's backlog (about four events each).
    pub busy_sessions: usize,
    /// Times the busy tenant runs alone and beside the idle ones, alternating.
    pub rounds: usize,
    /// Pool threads (default: one per core).
    pub threads: Option<usize>,
}

/// The busy tenant's name: after every idle tenant's (`t00000`...) in name order.
const BUSY: &str = "zbusy";

/// Resident memory (bytes), threads and CPU time (seconds) of this process, from `/proc`.
fn process_usage() -> (u64, u64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks (100 per second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum()
        })
        .unwrap_or(0);
    (field("VmRSS:") * 1024, field("Threads:"), ticks as f64 / 100.0)
}

/// A host on a fresh data directory with `idle` tenants without events, and, if `busy` is
/// given, a tenant `busy` whose backlog of `busy` events was written before it started.
struct BenchHost {
    dirs: super::Dirs,
    store: crate::store::embedded::EmbeddedStore,
}

impl BenchHost {
    fn new(
        root: &Path,
        name: &str,
        plugin: &Path,
        idle: usize,
        busy: bool,
    ) -> anyhow::Result<Self> {
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let plugins = dir.join("plugins");
        let names = (0..idle).map(|i| format!("t{i:05}")).chain(busy.then(|| BUSY.to_string()));
        for tenant in names {
            let folder = plugins.join(&tenant);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
            let file = folder.join("rule.wasm");
            // A link where the file system allows it: ten thousand copies are 7 GB.
            if std::fs::hard_link(plugin, &file).is_err() {
                std::fs::copy(plugin, &file)
                    .with_context(|| format!("cannot copy {}", plugin.display()))?;
            }
        }
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let dirs =
            super::Dirs { data: data.clone(), plugins, socket: None, config: Default::default() };
        Ok(BenchHost { dirs, store: crate::store::embedded::EmbeddedStore::new(data) })
    }

    /// Writes `events` for `tenant`, now, as a producer would (routed by event id).
    fn ingest(
        &self,
        rt: &tokio::runtime::Runtime,
        tenant: &str,
        events: &[crate::generate::GenEvent],
    ) -> anyhow::Result<()> {
        let tenant = super::tenant_arg(tenant)?;
        let mut producer = crate::producer::Producer::new(
            &self.store,
            tenant,
            crate::store::Layout::default(),
            None,
        );
        let mut report = crate::producer::IngestReport::default();
        rt.block_on(async {
            for (n, e) in events.iter().enumerate() {
                producer.push_line(&e.line, n + 1, &mut report).await?;
            }
            producer.flush(&mut report).await
        })?;
        Ok(())
    }

    fn start(
        &self,
        rt: &tokio::runtime::Runtime,
        tenants: &[String],
        threads: Option<usize>,
    ) -> anyhow::Result<super::run_cmd::Running<crate::store::embedded::EmbeddedStore>> {
        let options = super::run_cmd::RunOptions {
            delay_ms: 2000,
            exit_when_idle: false,
            stories_out: None,
            checkpoint_ms: 5000,
            attempts: 3,
            on_failure: crate::worker::OnFailure::Skip,
            backoff_ms: 1000,
            metrics_addr: None,
            http_addr: None,
            limits: crate::plugin::Limits::default(),
            threads,
        };
        super::run_cmd::start(rt, &self.store, &self.dirs, tenants, &options)
    }
}

/// Waits until the run has handed `n` events to plugins; the seconds since `since`.
fn drained(
    progress: &crate::worker::Progress,
    n: u64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    use std::sync::atomic::Ordering;
    loop {
        let done = progress.events.load(Ordering::Relaxed);
        if done >= n {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > limit {
            anyhow::bail!("only {done} of {n} events processed in {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Stops a run as SIGTERM does; how long it took.
fn stop<S: crate::store::Store + Clone>(
    running: super::run_cmd::Running<S>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    running.shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    running.wait()?;
    Ok(started.elapsed().as_secs_f64())
}

/// Starts many tenants with one rule and prints what idleness costs, how fast a waking
/// tenant is served, and what a busy tenant gets beside the idle ones.
pub fn tenants(root: &Path, bench: &TenantsBench) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let rt = super::tokio_runtime()?;
    let root = root.join("bench-tenants");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let gen_at = |sessions: usize, seed: u64| {
        crate::generate::generate(&crate::generate::GenConfig {
            sessions,
            start_ms: crate::producer::now_ms() - 60_000,
            interval_ms: 5,
            seed,
            ..crate::generate::GenConfig::default()
        })
    };
    println!(
        "plugin {}; pool threads {}",
        bench.plugin.display(),
        bench.threads.map_or_else(|| "one per core".to_string(), |n| n.to_string())
    );
    for &count in &bench.counts {
        // Idle: N tenants with the rule and no events.
        let host = BenchHost::new(&root, &format!("idle-{count}"), &bench.plugin, count, false)?;
        let before = Instant::now();
        let running = host.start(&rt, &[], bench.threads)?;
        let startup = before.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let (_, _, cpu0) = process_usage();
        std::thread::sleep(Duration::from_secs(bench.idle_secs));
        let (rss, threads, cpu1) = process_usage();
        let idle_cpu = (cpu1 - cpu0) / bench.idle_secs as f64;
        // A tenant wakes up: its first bucket is ready at its end plus the read delay.
        let base = running.progress.events.load(Ordering::Relaxed);
        let wake = gen_at(5, 3);
        let written = crate::producer::now_ms();
        host.ingest(&rt, "t00000", &wake)?;
        let ready_at = (written / 1000 + 1) * 1000 + 2000;
        drained(
            &running.progress,
            base + wake.len() as u64,
            Instant::now(),
            Duration::from_secs(60),
        )?;
        let first_bucket_ms = crate::producer::now_ms() - ready_at;
        let stop_s = stop(running)?;
        drop(host);
        println!(
            "{count} idle tenants: start-up {startup:.1} s; resident {:.0} MiB; {threads} threads; CPU {:.2} % of a core over {} s idle; a waking tenant's first bucket processed {first_bucket_ms} ms after it was ready; stop {stop_s:.2} s",
            rss as f64 / (1 << 20) as f64,
            idle_cpu * 100.0,
            bench.idle_secs
        );
        // One busy tenant, alone and beside the idle ones, alternating. (Its events are made
        // only now, so that the memory measured above is the host's alone.)
        let busy_events = gen_at(bench.busy_sessions, 7);
        let n_busy = busy_events.len() as u64;
        let (mut alone, mut beside) = (Vec::new(), Vec::new());
        for round in 0..bench.rounds {
            for with_idle in [false, true] {
                let name = format!("busy-{count}-{round}-{with_idle}");
                let idle = if with_idle { count } else { 0 };
                let host = BenchHost::new(&root, &name, &bench.plugin, idle, true)?;
                host.ingest(&rt, BUSY, &busy_events)?;
                let tenants = if with_idle { vec![] } else { vec![BUSY.to_string()] };
                let running = host.start(&rt, &tenants, bench.threads)?;
                // The busy tenant sorts last, so it is served once every idle one is: its
                // backlog (ready since it was written) is timed from then to the last event.
                let secs =
                    drained(&running.progress, n_busy, Instant::now(), Duration::from_secs(600))?;
                stop(running)?;
                drop(host);
                let rate = n_busy as f64 / secs.max(1e-9);
                eprintln!(
                    "round {round}: busy tenant {} {rate:.0} events/s",
                    if with_idle { "beside the idle ones" } else { "alone" }
                );
                if with_idle { beside.push(rate) } else { alone.push(rate) }
            }
        }
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.0}–{hi:.0}")
        };
        if bench.rounds > 0 {
            println!(
                "{count} idle tenants: one busy tenant ({n_busy} events) processes {} events/s beside them, {} alone ({} rounds each)",
                range(&beside),
                range(&alone),
                bench.rounds
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// What `storyline bench store` measures.
#[derive(Debug, Clone)]
pub struct StoreBench {
    /// The rule that routes and processes (network-session).
    pub plugin: PathBuf,
    /// Generated sessions (about four events each).
    pub sessions: usize,
    /// Runs per store, alternating between the stores.
    pub rounds: usize,
    /// ScyllaDB / Cassandra contact points (`None`: the embedded store only).
    pub scylla_nodes: Option<String>,
    /// Replication of the benchmark's keyspaces.
    pub scylla_replication: String,
    /// The process id of a local node, whose CPU is counted too.
    pub node_pid: Option<u32>,
}

/// CPU seconds (user and system) of this process's waited-for children, and of process `pid`
/// (`/proc/<pid>/stat`, 100 ticks per second).
fn cpu_seconds(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name: utime, stime are the 12th and 13th fields; cutime, cstime the
    // 14th and 15th.
    let skip = if children { 13 } else { 11 };
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace().skip(skip).take(2).filter_map(|v| v.parse::<u64>().ok()).sum()
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// One measured command: wall seconds, this host's CPU seconds, the node's.
fn measured(
    command: &mut std::process::Command,
    node_pid: Option<u32>,
) -> anyhow::Result<(f64, f64, f64)> {
    let node = |pid: Option<u32>| pid.map_or(0.0, |p| cpu_seconds(&p.to_string(), false));
    let (host0, node0) = (cpu_seconds("self", true), node(node_pid));
    let started = Instant::now();
    let out = command.output().context("cannot start storyline")?;
    let wall = started.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!("{:?} failed: {}", command, String::from_utf8_lossy(&out.stderr));
    }
    Ok((wall, cpu_seconds("self", true) - host0, node(node_pid) - node0))
}

/// Ingests the same generated events into each store and runs the workers over them
/// (`run --exit-when-idle`), as separate processes of this binary; prints events/s and CPU per
/// event of the host (and of a local node).
pub fn store(bench: &StoreBench) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    // A short path of its own: each run's `storyline run` listens on a Unix socket in its data
    // directory, and socket paths are limited to about 100 bytes.
    let root = std::env::temp_dir().join(format!("storyline-bench-{}", std::process::id()));
    eprintln!("scratch directory {} (removed at the end)", root.display());
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let events = crate::generate::generate(&crate::generate::GenConfig {
        sessions: bench.sessions,
        start_ms: crate::producer::now_ms() - 3_600_000,
        ..crate::generate::GenConfig::default()
    });
    let file = root.join("events.jsonl");
    let mut text = String::new();
    for e in &events {
        text.push_str(&e.line);
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    let n = events.len() as f64;
    drop(events);
    println!("{} events; plugin {}", n, bench.plugin.display());
    let mut stores = vec!["embedded"];
    if bench.scylla_nodes.is_some() {
        stores.push("scylla");
    }
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    for round in 0..bench.rounds {
        for kind in &stores {
            let dir = root.join(format!("{kind}-{round}"));
            let tenant = format!("bench{}{round}", crate::producer::now_ms() % 1_000_000);
            let plugins = dir.join("plugins").join(&tenant);
            std::fs::create_dir_all(&plugins)?;
            std::fs::copy(&bench.plugin, plugins.join("rule.wasm"))
                .with_context(|| format!("cannot copy {}", bench.plugin.display()))?;
            let base = |args: &[&str]| {
                let mut c = std::process::Command::new(&exe);
                c.arg("--store").arg(kind).arg("--data-dir").arg(dir.join("data"));
                c.arg("--plugin-dir").arg(dir.join("plugins"));
                if let Some(nodes) = &bench.scylla_nodes {
                    c.args(["--scylla-nodes", nodes, "--scylla-replication"]);
                    c.arg(&bench.scylla_replication);
                }
                c.args(args);
                c
            };
            let ingest = measured(
                base(&["ingest", "--tenant", &tenant]).arg(&file),
                (*kind == "scylla").then_some(bench.node_pid).flatten(),
            )?;
            let run = measured(
                &mut base(&["run", "--exit-when-idle", "--tenant", &tenant]),
                (*kind == "scylla").then_some(bench.node_pid).flatten(),
            )?;
            for (phase, (wall, host, node)) in [("ingest", ingest), ("run", run)] {
                let line = format!(
                    "round {round} {kind} {phase}: {:.0} events/s, host {:.1} µs CPU per event{}",
                    n / wall,
                    host * 1e6 / n,
                    if node > 0.0 {
                        format!(", node {:.1} µs", node * 1e6 / n)
                    } else {
                        String::new()
                    }
                );
                eprintln!("{line}");
                rows.push((format!("{kind} {phase}"), n / wall, host * 1e6 / n, node * 1e6 / n));
            }
        }
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        if (hi - lo).abs() < 0.05 { format!("{lo:.1}") } else { format!("{lo:.1}–{hi:.1}") }
    };
    for kind in &stores {
        for phase in ["ingest", "run"] {
            let name = format!("{kind} {phase}");
            let mine: Vec<_> = rows.iter().filter(|r| r.0 == name).collect();
            let rate = range(mine.iter().map(|r| r.1 / 1000.0).collect());
            let host = range(mine.iter().map(|r| r.2).collect());
            let node = range(mine.iter().map(|r| r.3).collect());
            println!(
                "{name}: {rate}k events/s; host {host} µs CPU per event{} ({} runs)",
                if bench.node_pid.is_some() && *kind == "scylla" {
                    format!("; node {node} µs")
                } else {
                    String::new()
                },
                mine.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
