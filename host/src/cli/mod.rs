//! The `storyline` command line. Each subcommand lives in its own module; this one holds the
//! argument definitions and the dispatch.

mod bench_cmd;
mod config_cmd;
mod generate_cmd;
mod ingest_cmd;
mod ingest_remote;
mod ingest_socket;
mod plugin_cmd;
mod progress;
mod run_cmd;
mod scaffold;
mod stories_cmd;

pub(crate) use ingest_cmd::{Ingested, InputOptions, ingest_stream};
pub use stories_cmd::mark_replay;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::model::TenantId;
use crate::producer::Format;
use crate::store::embedded::EmbeddedStore;
use crate::store::scylla::{SHARED_KEYSPACE, ScyllaConfig, ScyllaStore, Tables, schema_cql};

/// Turns events from many sensors into stories, with per-tenant correlation rules as Wasm
/// components.
#[derive(Debug, Parser)]
#[command(name = "storyline", version, about)]
pub struct Cli {
    /// Configuration file (see README "Configuration file"); default `./storyline.toml` if
    /// there is one. Flags and `STORYLINE_*` variables override what it says.
    /// (Named `--config-file`: `plugin test` and `bench quality` take a plugin's `--config`.)
    #[arg(
        id = "config_file",
        long = "config-file",
        global = true,
        env = "STORYLINE_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// What the configuration file says (the defaults without one); filled by
    /// [`Cli::with_config`], which also takes its values for the flags left unset.
    #[arg(skip)]
    pub settings: std::sync::Arc<crate::config::Config>,

    /// Directory of the embedded store and of the compiled-plugin cache.
    #[arg(long, global = true, env = "STORYLINE_DATA_DIR", default_value = "./storyline-data")]
    pub data_dir: PathBuf,

    /// Plugin directory: a tenant's plugin lives in DIR/<tenant>/<name>.wasm, with an optional
    /// DIR/<tenant>/<name>.json beside it passed to the plugin's init.
    #[arg(long, global = true, env = "STORYLINE_PLUGIN_DIR", default_value = "./plugins")]
    pub plugin_dir: PathBuf,

    /// Where events, offsets and stories live: `embedded` (in --data-dir) or `scylla`.
    #[arg(long, global = true, env = "STORYLINE_STORE", default_value = "embedded")]
    pub store: StoreKind,

    /// ScyllaDB (or Cassandra 4+) contact points, comma-separated `host:port`.
    #[arg(long, global = true, env = "STORYLINE_SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    pub scylla_nodes: String,

    /// Replication of new tenant keyspaces, as CQL.
    #[arg(
        long,
        global = true,
        env = "STORYLINE_SCYLLA_REPLICATION",
        default_value = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
    )]
    pub scylla_replication: String,

    /// Where tenants' rows live on ScyllaDB: a keyspace per tenant (`storyline_<tenant>`), or
    /// one set of tables shared by every tenant, keyed by tenant (for many tenants). One choice
    /// per deployment: every process on a cluster must make the same.
    #[arg(
        long,
        global = true,
        env = "STORYLINE_SCYLLA_TABLES",
        default_value = "keyspace-per-tenant"
    )]
    pub scylla_tables: TablesArg,

    /// The keyspace of the shared tables (with `--scylla-tables shared`).
    #[arg(long, global = true, env = "STORYLINE_SCYLLA_KEYSPACE", default_value = SHARED_KEYSPACE)]
    pub scylla_keyspace: String,

    /// How long events are kept after they are written, seconds: the TTL of the ScyllaDB
    /// tables (applied to existing ones too); on the embedded store, log segments are removed
    /// once that old. A tenant keeps the last one given; 7 days if never given. A shard
    /// lagging by half of it raises an alarm. At most 20 years (CQL's longest TTL).
    #[arg(long, global = true, env = "STORYLINE_RETENTION_SECS", value_parser = clap::value_parser!(i64).range(1..=630_720_000))]
    pub retention_secs: Option<i64>,

    /// Log filter, e.g. `info` or `storyline=debug,guest=info`.
    #[arg(long, global = true, env = "STORYLINE_LOG", default_value = "warn")]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store in --data-dir (needs nothing installed).
    Embedded,
    /// A ScyllaDB (or Cassandra 4+) cluster at --scylla-nodes.
    Scylla,
}

/// `--scylla-tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TablesArg {
    /// A keyspace of its own per tenant, `storyline_<tenant>`.
    KeyspacePerTenant,
    /// One set of tables (keyspace `--scylla-keyspace`), the tenant in every partition key.
    Shared,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailureArg {
    /// Dead-letter the bucket and go on.
    Skip,
    /// Dead-letter the bucket and stay on it until it goes through.
    Pause,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read events (a file or stdin) in storyline's JSONL or a sensor's own log format,
    /// validate them and write them to the store.
    Ingest {
        /// The tenant the events belong to.
        #[arg(long)]
        tenant: String,
        /// Events file; `-` or nothing for stdin. A Zeek log's file name gives its log type
        /// when its records do not (`conn.log`, `dns.09:00:00-10:00:00.log`).
        file: Option<PathBuf>,
        /// How the input is written (see README "Input formats").
        #[arg(long, value_enum, default_value_t = Format::Storyline)]
        format: Format,
        /// The sensor name of every event, for `--format zeek`, `suricata` or `ecs`. Default:
        /// what each record says (Zeek's `_node_name`, Suricata's `host`, ECS's
        /// `observer.name`...), else the format's name.
        #[arg(long)]
        source: Option<String>,
        /// Shards of a new tenant (an existing tenant keeps its own).
        #[arg(long)]
        shards: Option<u32>,
        /// Bucket length of a new tenant, ms (an existing tenant keeps its own).
        #[arg(long)]
        bucket_ms: Option<i64>,
        /// Events per durable batch.
        #[arg(long, default_value_t = crate::producer::DEFAULT_BATCH)]
        batch: usize,
        /// Print `durable N` on stdout each time a batch is durable (N events so far): what a
        /// crash cannot take back.
        #[arg(long)]
        progress: bool,
        /// Post the events to the HTTP API of a `storyline run` at this address
        /// (`http://HOST:PORT`) instead of the local store; needs --token.
        #[arg(long, env = "STORYLINE_URL", requires = "token")]
        url: Option<String>,
        /// The tenant's bearer token, for --url.
        #[arg(long, env = "STORYLINE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run the workers: every shard of every tenant in the plugin directory (or of --tenant).
    Run {
        /// Only these tenants (repeatable).
        #[arg(long)]
        tenant: Vec<String>,
        /// Read a bucket once it ended this many ms ago.
        #[arg(long, default_value_t = 2000)]
        delay_ms: i64,
        /// Stop (exit 0) once caught up and idle for a bucket, after draining open sessions.
        #[arg(long)]
        exit_when_idle: bool,
        /// Also write stories as JSONL to this file, appended (`-` for stdout).
        #[arg(long)]
        stories_out: Option<PathBuf>,
        /// Commit offsets and plugin state at most this often while buckets flow, ms (a large
        /// state spaces commits to 20 times its snapshot's cost). A crash replays at most this
        /// much; the replayed stories are the same and overwrite themselves.
        #[arg(long, default_value_t = 5000)]
        checkpoint_ms: i64,
        /// Attempts at a bucket the plugin fails on before it is dead-lettered.
        #[arg(long, default_value_t = 3)]
        attempts: u32,
        /// After the last attempt: `skip` the bucket (replay it later with `storyline replay`)
        /// or `pause` the shard on it, trying again with backoff until the plugin is fixed.
        #[arg(long, value_enum, default_value = "skip")]
        on_failure: OnFailureArg,
        /// First wait between attempts, ms; doubles up to 30 s, starts over after a healthy
        /// minute.
        #[arg(long, default_value_t = 1000)]
        backoff_ms: u64,
        /// Serve Prometheus metrics (lag, late events, dead letters, reloads) at this address,
        /// e.g. `127.0.0.1:9464`.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Serve the HTTP API (events in, stories and status out, health, metrics; see README
        /// "HTTP API") at this address, e.g. `127.0.0.1:8080`; port 0 picks a free port, printed
        /// as `http at http://ADDR`.
        #[arg(long, env = "STORYLINE_HTTP_ADDR")]
        http_addr: Option<std::net::SocketAddr>,
        /// Memory of each tenant's plugin instances together (all shards and versions), MiB.
        #[arg(long, default_value_t = 2048)]
        memory_mb: usize,
        /// Threads that run plugins, shared by every shard of every tenant (default: one per
        /// core). A shard waiting for data holds none.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Process the tenant's dead-lettered buckets again (after the plugin was fixed): the
    /// running workers pick them up, publish their stories and drop the letters.
    Replay {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Print published stories as JSONL: the latest revision of each.
    Stories {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Every revision, not only the latest.
        #[arg(long)]
        all: bool,
        /// Keep printing stories as they are published.
        #[arg(long)]
        follow: bool,
    },
    /// Show per shard: owner, committed bucket, lag, dead letters.
    Status {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Print a realistic multi-sensor event stream (JSONL) with skew, reversals and late events.
    Generate {
        /// Number of network sessions (about 4 events each).
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Seed: the same seed gives the same stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of HTTP/TLS logs that arrive 1 to 8 minutes late.
        #[arg(long, default_value_t = 0.05)]
        late_share: f64,
        /// Largest sensor clock skew, ms.
        #[arg(long, default_value_t = 20_000)]
        max_skew_ms: i64,
        /// Mean time between session starts, ms.
        #[arg(long, default_value_t = 50)]
        interval_ms: i64,
    },
    /// Print the CQL that creates a tenant's keyspace and tables on ScyllaDB (or, with
    /// `--scylla-tables shared`, the tables every tenant shares).
    Schema {
        /// The tenant (a keyspace per tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Leave out the options only ScyllaDB understands (for Apache Cassandra).
        #[arg(long)]
        cassandra: bool,
    },
    /// Create, check or try out a plugin component.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Measure: how right a rule's stories are on real sensor logs.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check the configuration file, or hash a bearer token for it.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `storyline config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and check the configuration file (--config, else ./storyline.toml): print the file
    /// used and a summary of the settings in effect (tokens as counts); exit 1 naming the
    /// file, key and allowed values of the first problem.
    Check,
    /// Print the form a tenant's bearer token is written in the file, `sha256:<hex>`. Without
    /// TOKEN, reads it from the first line of stdin (keeps it out of the shell's history).
    HashToken {
        /// The token.
        token: Option<String>,
    },
}

/// `storyline bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Score a rule's stories on sensor logs against the sensors' own session keys
    /// (pairwise precision, recall, F1 at connection level), beside a naive rule; each data
    /// set plain and with every sensor's clock off by up to --skew-ms and --reversed of the
    /// records reported the other way round. See README "Correlation quality".
    Quality {
        /// The rule's component (.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// Its configuration for the sensor logs: JSON text, or @FILE. Sensors' own session
        /// keys count a DNS lookup in its own exchange, not in the connection it led to:
        /// `{"dns_joins_connection": false}` scores network-session as they count.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Its configuration for the generated sessions (whose truth puts a DNS lookup in the
        /// connection it led to).
        #[arg(long, default_value = "{}")]
        generated_config: String,
        /// Directories of Zeek logs (JSON or TSV) and Suricata EVE files, one data set each.
        data: Vec<PathBuf>,
        /// Also `storyline generate` output of this many sessions (0: none).
        #[arg(long, default_value_t = 2000)]
        generated: usize,
        /// Largest clock error of a sensor in the perturbed runs, ms.
        #[arg(long, default_value_t = 30_000)]
        skew_ms: i64,
        /// Share of records reported destination → source in the perturbed runs.
        #[arg(long, default_value_t = 0.3)]
        reversed: f64,
        /// Seed of the perturbations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write every event with its truth and both rules' stories here, one TSV file per
        /// run (`<data set>-0.tsv` plain, `-1` perturbed): where a rule and the truth differ.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Ingest the same generated events into the embedded store and, with
    /// STORYLINE_SCYLLA_NODES (or --scylla-nodes) set, into ScyllaDB / Cassandra, then run the
    /// workers over them (`run --exit-when-idle`); print events/s and CPU per event of this
    /// host, and of a local node given by --node-pid. See README "ScyllaDB".
    Store {
        /// The rule that routes and processes, e.g. the network-session plugin.
        #[arg(long)]
        plugin: PathBuf,
        /// Generated sessions (about four events each).
        #[arg(long, default_value_t = 50_000)]
        sessions: usize,
        /// Runs per store, alternating between the stores.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Also count the CPU of this process (a local node), from /proc.
        #[arg(long)]
        node_pid: Option<u32>,
    },
    /// Start many tenants running one rule, in this process, on scratch directories under
    /// --data-dir: print resident memory, threads, start-up time and CPU while idle, how soon
    /// a waking tenant's first bucket is processed, the time to stop, and the throughput of
    /// one busy tenant beside the idle ones and alone. See README "Performance".
    Tenants {
        /// The rule every tenant runs (.wasm), e.g. the network-session plugin.
        #[arg(long)]
        plugin: PathBuf,
        /// Numbers of idle tenants (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        tenants: Vec<usize>,
        /// Seconds of idleness over which CPU is measured.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// Sessions in the busy tenant's backlog (about four events each).
        #[arg(long, default_value_t = 50_000)]
        busy_sessions: usize,
        /// Runs of the busy tenant alone and beside the idle tenants, alternating (0: none).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Pool threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// `storyline plugin ...`
///
/// `check` and `test` keep compiled components in the user's cache directory
/// (`$XDG_CACHE_HOME/storyline`, else `~/.cache/storyline`) unless `--data-dir` is given.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write the crate of a new rule, made from the `template` plugin.
    ///
    /// Cargo.toml (the SDK of this release), src/lib.rs, a sample events.jsonl and a test of
    /// it, README.md. It builds with `cargo build --target wasm32-wasip2 --release`.
    New {
        /// The rule's crate name: lowercase ASCII letters, digits, `-` and `_`, starting with a
        /// letter (e.g. `my-rule`).
        name: String,
        /// Create the crate in DIR/NAME (which must not exist).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Validate a component: world version, exports, imports, size, hash, compile time.
    Check {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Run a component over a JSONL file of events cut into buckets by event time (or, with
    /// --arrival, as `run` hands them over); ask it for every event's routing key; print the
    /// stories as JSONL on stdout and a summary on stderr.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// Events, one JSON object per line (see README "Event format"); `-` for stdin.
        #[arg(long)]
        events: PathBuf,
        /// Bucket length in milliseconds.
        #[arg(long, default_value_t = 1000)]
        bucket_ms: i64,
        /// Plugin configuration: JSON text, or @FILE.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Tenant name the plugin sees.
        #[arg(long, default_value = "test")]
        tenant: String,
        /// Print only the latest revision of each story, after the run.
        #[arg(long)]
        latest: bool,
        /// Longest one call (init, a bucket's process, drain) may run, ms: a rule that loops
        /// fails after this long. The default is the host's.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        deadline_ms: u64,
        /// Cut buckets as `run` does: events in the file's order (their arrival), inserted at
        /// the latest event time seen so far, a bucket's events in id order; a line after later
        /// ones stays late. Default: by event time.
        #[arg(long)]
        arrival: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log);
    // With the embedded store, a running `storyline run` owns the data directory and takes
    // events through its ingest socket.
    let socket = (cli.store == StoreKind::Embedded).then(|| ingest_socket::path(&cli.data_dir));
    let dirs = Dirs { data: cli.data_dir, plugins: cli.plugin_dir, socket, config: cli.settings };
    // Tenants' own retentions from the configuration file, over --retention-secs.
    let tenant_retention: std::collections::HashMap<String, i64> = dirs
        .config
        .tenants
        .iter()
        .filter_map(|(name, t)| t.retention_secs.map(|secs| (name.clone(), secs)))
        .collect();
    let scylla = ScyllaConfig {
        nodes: cli.scylla_nodes.split(',').map(|n| n.trim().to_string()).collect(),
        replication: cli.scylla_replication,
        tables: match cli.scylla_tables {
            TablesArg::KeyspacePerTenant => Tables::KeyspacePerTenant,
            TablesArg::Shared => Tables::Shared { keyspace: cli.scylla_keyspace },
        },
        retention_secs: cli.retention_secs,
        tenant_retention_secs: tenant_retention.clone(),
        ..ScyllaConfig::default()
    };
    // Runs `$body` with `$store` bound to the chosen backend.
    macro_rules! with_store {
        (|$rt:ident, $store:ident| $body:expr) => {{
            let $rt = tokio_runtime()?;
            match cli.store {
                StoreKind::Embedded => {
                    ensure_dir(&dirs.data)?;
                    let mut $store = EmbeddedStore::new(&dirs.data);
                    if let Some(secs) = cli.retention_secs {
                        $store = $store.with_retention(secs.saturating_mul(1000));
                    }
                    let own = tenant_retention
                        .iter()
                        .filter_map(|(t, secs)| {
                            TenantId::new(t).ok().map(|t| (t, secs.saturating_mul(1000)))
                        })
                        .collect();
                    $store = $store.with_tenant_retention(own);
                    $body
                }
                StoreKind::Scylla => {
                    let $store = $rt.block_on(ScyllaStore::connect(scylla.clone()))?;
                    $body
                }
            }
        }};
    }
    match cli.command {
        Command::Ingest {
            tenant, file, url: Some(url), token, format, shards, bucket_ms, ..
        } => {
            if format != Format::Storyline || shards.is_some() || bucket_ms.is_some() {
                anyhow::bail!(
                    "--url posts storyline's own format and the tenant keeps the remote host's layout: drop --format, --shards and --bucket-ms"
                );
            }
            let tenant = tenant_arg(&tenant)?;
            ingest_remote::ingest_remote(&url, &token.unwrap_or_default(), &tenant, file.as_deref())
        }
        Command::Ingest {
            tenant,
            file,
            format,
            source,
            shards,
            bucket_ms,
            batch,
            progress,
            ..
        } => {
            with_store!(|rt, store| {
                ingest_cmd::ingest(
                    &rt,
                    &store,
                    &dirs,
                    &tenant,
                    (file.as_deref(), format, source.as_deref()),
                    (shards, bucket_ms),
                    (batch, progress),
                )
            })
        }
        Command::Run {
            tenant,
            delay_ms,
            exit_when_idle,
            stories_out,
            checkpoint_ms,
            attempts,
            on_failure,
            backoff_ms,
            metrics_addr,
            http_addr,
            memory_mb,
            threads,
        } => {
            let on_failure = match on_failure {
                OnFailureArg::Skip => crate::worker::OnFailure::Skip,
                OnFailureArg::Pause => crate::worker::OnFailure::Pause,
            };
            let options = run_cmd::RunOptions {
                delay_ms,
                exit_when_idle,
                stories_out,
                checkpoint_ms,
                attempts: attempts.max(1),
                on_failure,
                backoff_ms,
                metrics_addr,
                http_addr,
                limits: crate::plugin::Limits {
                    memory_bytes: memory_mb.saturating_mul(1 << 20),
                    ..crate::plugin::Limits::default()
                },
                threads,
            };
            with_store!(|rt, store| run_cmd::run(&rt, &store, &dirs, &tenant, &options))
        }
        Command::Stories { tenant, all, follow } => {
            with_store!(|rt, store| stories_cmd::stories(&rt, &store, &dirs, &tenant, all, follow))
        }
        Command::Replay { tenant } => {
            with_store!(|rt, store| stories_cmd::replay(&rt, &store, &dirs, &tenant))
        }
        Command::Status { tenant } => {
            with_store!(|rt, store| stories_cmd::status(&rt, &store, &dirs, &tenant))
        }
        Command::Generate { sessions, seed, late_share, max_skew_ms, interval_ms } => {
            generate_cmd::generate(sessions, seed, late_share, max_skew_ms, interval_ms)
        }
        Command::Schema { tenant, cassandra } => {
            let tenant = match (&scylla.tables, tenant) {
                (_, Some(tenant)) => Some(tenant_arg(&tenant)?),
                (Tables::Shared { .. }, None) => None,
                (Tables::KeyspacePerTenant, None) => {
                    anyhow::bail!("storyline schema needs --tenant (or --scylla-tables shared)")
                }
            };
            for cql in schema_cql(tenant.as_ref(), &scylla, !cassandra) {
                println!("{cql};");
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            config_cmd::check(&dirs, (cli.store, &scylla), &cli.log, &mut std::io::stdout())
        }
        Command::Config(ConfigCommand::HashToken { token }) => {
            config_cmd::hash_token(token.as_deref())
        }
        Command::Plugin(PluginCommand::New { name, dir }) => plugin_cmd::new(&name, &dir),
        Command::Plugin(PluginCommand::Check { file }) => {
            plugin_cmd::check(plugin_cmd::compile_cache(&dirs.data).as_deref(), &file)
        }
        Command::Bench(BenchCommand::Store { plugin, sessions, rounds, node_pid }) => {
            let nodes_given = std::env::var_os("STORYLINE_SCYLLA_NODES").is_some()
                || cli.store == StoreKind::Scylla;
            bench_cmd::store(&bench_cmd::StoreBench {
                plugin,
                sessions,
                rounds,
                scylla_nodes: nodes_given.then(|| scylla.nodes.join(",")),
                scylla_replication: scylla.replication.clone(),
                node_pid,
            })
        }
        Command::Bench(BenchCommand::Tenants {
            plugin,
            tenants,
            idle_secs,
            busy_sessions,
            rounds,
            threads,
        }) => bench_cmd::tenants(
            &dirs.data,
            &bench_cmd::TenantsBench {
                plugin,
                counts: tenants,
                idle_secs,
                busy_sessions,
                rounds,
                threads,
            },
        ),
        Command::Bench(BenchCommand::Quality {
            plugin,
            config,
            generated_config,
            data,
            generated,
            skew_ms,
            reversed,
            seed,
            dump,
        }) => bench_cmd::quality(
            &dirs.data,
            (&plugin, &config, &generated_config),
            &data,
            generated,
            (skew_ms, reversed, seed),
            dump.as_deref(),
        ),
        Command::Plugin(PluginCommand::Test {
            file,
            events,
            bucket_ms,
            config,
            tenant,
            latest,
            deadline_ms,
            arrival,
        }) => plugin_cmd::test(
            plugin_cmd::compile_cache(&dirs.data).as_deref(),
            &file,
            &plugin_cmd::TestOptions {
                events: &events,
                bucket_ms,
                config: &config,
                tenant: &tenant,
                latest,
                deadline: std::time::Duration::from_millis(deadline_ms),
                arrival,
            },
        ),
    }
}

/// The directories every command works in.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `--data-dir`.
    pub data: PathBuf,
    /// `--plugin-dir`.
    pub plugins: PathBuf,
    /// The ingest socket of the data directory, when the store belongs to one process
    /// (embedded): `run` serves it, `ingest` forwards to it when someone listens.
    pub socket: Option<PathBuf>,
    /// The configuration file's settings (the defaults without one): each tenant's plugin file
    /// and the layout of its first events.
    pub config: std::sync::Arc<crate::config::Config>,
}

impl Dirs {
    /// The compiled-component cache.
    pub fn cache(&self) -> PathBuf {
        self.data.join("cache").join("components")
    }

    /// Each tenant's last plugin version that loaded (see [`crate::catalog::KnownGood`]).
    pub fn known_good(&self) -> crate::catalog::KnownGood {
        crate::catalog::KnownGood::new(self.data.join("cache").join("known-good"))
    }

    /// Tenants that have a directory in the plugin directory.
    pub fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let entries = std::fs::read_dir(&self.plugins)
            .with_context(|| format!("cannot read plugin directory {}", self.plugins.display()))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            if e.path().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                match TenantId::new(&name) {
                    Ok(t) => out.push(t),
                    Err(err) => tracing::warn!("skipping {}: {err}", e.path().display()),
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A runtime for commands that talk to a store.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn tenant_arg(name: &str) -> anyhow::Result<TenantId> {
    Ok(TenantId::new(name)?)
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (tests running several commands in one process) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        // Clap's own checks (unique names across global and subcommand flags, defaults that
        // parse...), which otherwise fire only when the faulty subcommand is run.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
