//! The `storyline` command line. Each subcommand lives in its own module; this one holds the
//! argument definitions and the dispatch.

mod plugin_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Turns events from many sensors into stories, with per-tenant correlation rules as Wasm
/// components.
#[derive(Debug, Parser)]
#[command(name = "storyline", version, about)]
pub struct Cli {
    /// Directory of the embedded store and of the compiled-plugin cache.
    #[arg(long, global = true, env = "STORYLINE_DATA_DIR", default_value = "./storyline-data")]
    pub data_dir: PathBuf,

    /// Plugin directory: a tenant's plugins live in DIR/<tenant>/*.wasm.
    #[arg(long, global = true, env = "STORYLINE_PLUGIN_DIR", default_value = "./plugins")]
    pub plugin_dir: PathBuf,

    /// Log filter, e.g. `info` or `storyline=debug,guest=info`.
    #[arg(long, global = true, env = "STORYLINE_LOG", default_value = "warn")]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check or try out a plugin component.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// `storyline plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a component: world version, exports, imports, size, hash, compile time.
    Check {
        /// The component (.wasm).
        file: PathBuf,
    },
    /// Run a component over a JSONL file of events cut into buckets by event time; print the
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
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log);
    match cli.command {
        Command::Plugin(PluginCommand::Check { file }) => plugin_cmd::check(&cli.data_dir, &file),
        Command::Plugin(PluginCommand::Test {
            file,
            events,
            bucket_ms,
            config,
            tenant,
            latest,
        }) => plugin_cmd::test(&cli.data_dir, &file, &events, bucket_ms, &config, &tenant, latest),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (tests running several commands in one process) is harmless.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
