//! The configuration file on the command line: taking its values for the flags left unset
//! ([`Cli::with_config`]), `storyline config check` and `storyline config hash-token`.
//!
//! Precedence, highest first: a flag, its `STORYLINE_*` variable, the file, the built-in
//! default. clap says where each value came from ([`ValueSource`]); a value that came from a
//! flag's default (or an optional flag that is absent) is the one the file may replace.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use super::{Cli, Command, ConfigCommand, Dirs, StoreKind};
use crate::config::Config;
use crate::store::scylla::{ScyllaConfig, Tables};

impl Cli {
    /// The command line of this process, with the configuration file's values for what it
    /// leaves unset. Exits (as clap does) on `--help`, `--version` and usage errors.
    pub fn from_args_and_config() -> anyhow::Result<Cli> {
        use clap::CommandFactory;
        Cli::with_config(&Cli::command().get_matches())
    }

    /// The parsed command line `matches`, completed from the configuration file: `--config-file`
    /// (or `STORYLINE_CONFIG`), which must exist; else `./storyline.toml` if there is one;
    /// else nothing changes. The file's settings are kept in [`Cli::settings`].
    pub fn with_config(matches: &ArgMatches) -> anyhow::Result<Cli> {
        let mut cli = Cli::from_arg_matches(matches)?;
        // Hashing a token reads no file: it is how a broken `tokens` entry gets fixed.
        if matches!(cli.command, Command::Config(ConfigCommand::HashToken { .. })) {
            return Ok(cli);
        }
        let config = match Config::locate(cli.config.as_deref())? {
            Some(file) => Config::load(&file)?,
            None => Config::default(),
        };
        fill(&mut cli, matches, &config);
        cli.settings = Arc::new(config);
        Ok(cli)
    }
}

/// Whether the value of `id` is not the user's: a flag's default, or an optional flag absent.
fn unset(matches: &ArgMatches, id: &str) -> bool {
    matches!(matches.value_source(id), None | Some(ValueSource::DefaultValue))
}

/// Sets `target` to the file's `value` when the flag `id` is unset.
fn take<T>(matches: &ArgMatches, id: &str, target: &mut T, value: Option<T>) {
    if let Some(value) = value
        && unset(matches, id)
    {
        *target = value;
    }
}

/// Takes the file's values for every flag left unset.
fn fill(cli: &mut Cli, m: &ArgMatches, config: &Config) {
    take(m, "data_dir", &mut cli.data_dir, config.data_dir.clone());
    take(m, "plugin_dir", &mut cli.plugin_dir, config.plugin_dir.clone());
    take(m, "log", &mut cli.log, config.log.clone());
    let store = &config.store;
    take(m, "store", &mut cli.store, store.kind);
    take(m, "scylla_nodes", &mut cli.scylla_nodes, store.nodes.as_ref().map(|n| n.join(",")));
    take(m, "scylla_replication", &mut cli.scylla_replication, store.replication.clone());
    take(m, "scylla_tables", &mut cli.scylla_tables, store.tables);
    take(m, "scylla_keyspace", &mut cli.scylla_keyspace, store.keyspace.clone());
    take(m, "retention_secs", &mut cli.retention_secs, store.retention_secs.map(Some));
    if let Command::Run {
        delay_ms,
        checkpoint_ms,
        attempts,
        on_failure,
        backoff_ms,
        metrics_addr,
        http_addr,
        memory_mb,
        threads,
        ..
    } = &mut cli.command
        && let Some(("run", m)) = m.subcommand()
    {
        let run = &config.run;
        take(m, "delay_ms", delay_ms, run.delay_ms);
        take(m, "checkpoint_ms", checkpoint_ms, run.checkpoint_ms);
        take(m, "attempts", attempts, run.attempts);
        take(m, "on_failure", on_failure, run.on_failure);
        take(m, "backoff_ms", backoff_ms, run.backoff_ms);
        take(m, "metrics_addr", metrics_addr, run.metrics_addr.map(Some));
        take(m, "memory_mb", memory_mb, run.memory_mb);
        take(m, "threads", threads, run.threads.map(Some));
        take(m, "http_addr", http_addr, config.http.listen.map(Some));
    }
}

/// `storyline config check`: the file used and the settings in effect (flags and variables
/// included), tenants from the file. A file with errors never gets here: loading it failed.
pub fn check(
    dirs: &Dirs,
    (store, scylla): (StoreKind, &ScyllaConfig),
    log: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = &dirs.config;
    match &config.file {
        Some(file) => writeln!(out, "{}: valid", file.display())?,
        None => writeln!(
            out,
            "no configuration file (no --config-file, STORYLINE_CONFIG or ./{}): built-in defaults",
            crate::config::DEFAULT_FILE
        )?,
    }
    writeln!(out, "data_dir = {}", dirs.data.display())?;
    writeln!(out, "plugin_dir = {}", dirs.plugins.display())?;
    writeln!(out, "log = {log}")?;
    let retention = match scylla.retention_secs {
        Some(s) => format!("{s} s"),
        None => "as each tenant has it (7 days if never given)".to_string(),
    };
    match store {
        StoreKind::Embedded => writeln!(out, "store: embedded, retention {retention}")?,
        StoreKind::Scylla => writeln!(
            out,
            "store: scylla at {}, replication {}, {}, retention {retention}",
            scylla.nodes.join(","),
            scylla.replication,
            match &scylla.tables {
                Tables::KeyspacePerTenant => "a keyspace per tenant".to_string(),
                Tables::Shared { keyspace } => format!("tables shared in keyspace {keyspace}"),
            }
        )?,
    }
    let run = &config.run;
    let set: Vec<String> = [
        ("delay_ms", run.delay_ms.map(|v| v.to_string())),
        ("threads", run.threads.map(|v| v.to_string())),
        ("checkpoint_ms", run.checkpoint_ms.map(|v| v.to_string())),
        ("attempts", run.attempts.map(|v| v.to_string())),
        ("on_failure", run.on_failure.map(|v| format!("{v:?}").to_lowercase())),
        ("backoff_ms", run.backoff_ms.map(|v| v.to_string())),
        ("metrics_addr", run.metrics_addr.map(|v| v.to_string())),
        ("memory_mb", run.memory_mb.map(|v| v.to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(format!("{k} = {}", v?)))
    .collect();
    if !set.is_empty() {
        writeln!(out, "run (unless flags say otherwise): {}", set.join(", "))?;
    }
    let http = &config.http;
    if http.listen.is_some() || http.max_body_bytes.is_some() {
        writeln!(
            out,
            "http: listen {} (unless --http-addr says otherwise), max_body_bytes {}",
            http.listen.map_or("-".to_string(), |a| a.to_string()),
            http.max_body_bytes.unwrap_or(crate::http::DEFAULT_MAX_BODY_BYTES),
        )?;
    }
    writeln!(out, "tenants: {}", config.tenants.len())?;
    for (name, t) in &config.tenants {
        let mut parts = Vec::new();
        if let Some(p) = &t.plugin {
            parts.push(format!("plugin {}", dirs.plugins.join(name).join(p).display()));
        }
        // Counts only: even hashes of tokens stay in the file.
        parts.push(format!("{} tokens", t.tokens.as_ref().map_or(0, Vec::len)));
        if let Some(s) = t.shards {
            parts.push(format!("{s} shards"));
        }
        if let Some(b) = t.bucket_ms {
            parts.push(format!("{b} ms buckets"));
        }
        if let Some(d) = t.delay_ms {
            parts.push(format!("delay_ms {d}"));
        }
        if let Some(r) = t.retention_secs {
            parts.push(format!("retention_secs {r}"));
        }
        if let Some(m) = t.memory_mb {
            parts.push(format!("memory_mb {m}"));
        }
        writeln!(out, "  {name}: {}", parts.join(", "))?;
    }
    Ok(())
}

/// `storyline config hash-token [TOKEN]`.
pub fn hash_token(token: Option<&str>) -> anyhow::Result<()> {
    let token = match token {
        Some(t) => t.to_string(),
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("cannot read the token")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(!token.is_empty(), "no token given (as an argument or on stdin)");
    println!("{}", crate::config::hash_token(&token));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use clap::CommandFactory;

    use super::*;

    fn cli(args: &[&str], toml: &str) -> Cli {
        let matches = Cli::command().get_matches_from(args);
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        let config = Config::parse(toml, Path::new("/etc/storyline/storyline.toml")).unwrap();
        fill(&mut cli, &matches, &config);
        cli
    }

    #[test]
    fn the_file_fills_what_the_flags_leave_at_their_defaults() {
        let c = cli(
            &["storyline", "status", "--tenant", "acme"],
            "data_dir = \"/srv/data\"\n[store]\nkind = \"scylla\"\nnodes = [\"a:1\", \"b:2\"]\nretention_secs = 60\ntables = \"shared\"\nkeyspace = \"sl\"",
        );
        assert_eq!(c.data_dir, PathBuf::from("/srv/data"));
        assert_eq!(c.plugin_dir, PathBuf::from("./plugins"));
        assert_eq!(c.store, StoreKind::Scylla);
        assert_eq!(c.scylla_nodes, "a:1,b:2");
        assert_eq!(c.retention_secs, Some(60));
        assert_eq!(
            (c.scylla_tables, c.scylla_keyspace.as_str()),
            (super::super::TablesArg::Shared, "sl")
        );
    }

    #[test]
    fn a_flag_beats_the_file_before_or_after_the_subcommand() {
        for args in [
            &["storyline", "--data-dir", "/cli", "status", "--tenant", "a"][..],
            &["storyline", "status", "--tenant", "a", "--data-dir", "/cli"][..],
        ] {
            let c = cli(args, "data_dir = \"/srv/data\"\n[store]\nretention_secs = 60");
            assert_eq!(c.data_dir, PathBuf::from("/cli"), "{args:?}");
            assert_eq!(c.retention_secs, Some(60));
        }
        let c = cli(
            &["storyline", "--retention-secs", "5", "status", "--tenant", "a"],
            "[store]\nretention_secs = 60",
        );
        assert_eq!(c.retention_secs, Some(5));
    }

    #[test]
    fn run_flags_beat_the_run_section_which_beats_their_defaults() {
        let toml = "[run]\ndelay_ms = 100\nthreads = 3\non_failure = \"pause\"\nattempts = 7";
        let c = cli(&["storyline", "run", "--delay-ms", "50"], toml);
        let Command::Run { delay_ms, threads, on_failure, attempts, checkpoint_ms, .. } = c.command
        else {
            panic!("not run: {:?}", c.command)
        };
        assert_eq!(delay_ms, 50);
        assert_eq!(threads, Some(3));
        assert_eq!(on_failure, super::super::OnFailureArg::Pause);
        assert_eq!(attempts, 7);
        assert_eq!(checkpoint_ms, 5000);
    }

    #[test]
    fn http_addr_comes_from_the_flag_else_the_http_section() {
        let toml = "[http]\nlisten = \"127.0.0.1:8080\"";
        let addr = |c: Cli| match c.command {
            Command::Run { http_addr, .. } => http_addr,
            other => panic!("not run: {other:?}"),
        };
        assert_eq!(addr(cli(&["storyline", "run"], toml)), Some("127.0.0.1:8080".parse().unwrap()));
        let flag = cli(&["storyline", "run", "--http-addr", "127.0.0.1:9"], toml);
        assert_eq!(addr(flag), Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(addr(cli(&["storyline", "run"], "")), None);
    }
}
