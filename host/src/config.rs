//! The configuration file, `storyline.toml`: what the command-line flags say, written once for a
//! deployment, plus what flags cannot say (each tenant's plugin file, tokens and layout).
//!
//! Every value is optional, so that a value the file leaves out is told apart from one it sets
//! to the default: the command line fills only what neither a flag nor a `STORYLINE_*`
//! variable gave (see `cli::Cli::with_config`). Unknown keys are refused, with the keys that
//! are allowed, so that a typo is never a silently ignored setting. No file at all is
//! [`Config::default`]: everything as the flags' defaults say.
//!
//! This module parses and checks; it leaves merging with the flags to [`crate::cli`] and applying
//! the values to the modules that own them.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{OnFailureArg, StoreKind};
use crate::model::TenantId;
use crate::store::Layout;

/// The file looked for in the current directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "storyline.toml";

/// Most shards a tenant may have: each is a lease, an offset and a plugin instance.
pub const MAX_SHARDS: u32 = 1024;

/// Longest retention, seconds: 20 years, CQL's longest TTL (as `--retention-secs`).
pub const MAX_RETENTION_SECS: i64 = 630_720_000;

/// A configuration file that cannot be used. Each names the file; a value error names the key
/// as a dotted path and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` (or `STORYLINE_CONFIG`) names a file that does not exist.
    #[error("configuration file {} does not exist (given by --config-file or STORYLINE_CONFIG)", file.display())]
    Missing {
        /// The file named.
        file: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read configuration file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type; the message from the TOML parser
    /// has the line, the column and, for an unknown key, the keys allowed there.
    #[error("{}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value out of its range or of the wrong form.
    #[error("{}: {key} = {value}: {allowed}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key, as a dotted path (`tenants.acme.shards`).
        key: String,
        /// The value as written.
        value: String,
        /// What is allowed.
        allowed: String,
    },
}

/// `storyline.toml`. Every field is optional: absent means "as the flags' defaults say".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this was read from (`None`: no file, the defaults).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// `--data-dir`; relative to the file's directory.
    pub data_dir: Option<PathBuf>,
    /// `--plugin-dir`; relative to the file's directory.
    pub plugin_dir: Option<PathBuf>,
    /// `--log`.
    pub log: Option<String>,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[run]`: the flags of `storyline run`.
    #[serde(default)]
    pub run: RunConfig,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[tenants.<name>]`, by tenant name (checked with [`TenantId::new`] on load).
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `--store`: `embedded` or `scylla`.
    pub kind: Option<StoreKind>,
    /// `--scylla-nodes`, one `host:port` per element.
    pub nodes: Option<Vec<String>>,
    /// `--scylla-replication`, as CQL.
    pub replication: Option<String>,
    /// `--scylla-tables`: `keyspace-per-tenant` or `shared`.
    pub tables: Option<crate::cli::TablesArg>,
    /// `--scylla-keyspace`: the keyspace of the shared tables.
    pub keyspace: Option<String>,
    /// `--retention-secs`.
    pub retention_secs: Option<i64>,
}

/// `[run]`: the flags of `storyline run` of the same names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `--delay-ms`.
    pub delay_ms: Option<i64>,
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--checkpoint-ms`.
    pub checkpoint_ms: Option<i64>,
    /// `--attempts`.
    pub attempts: Option<u32>,
    /// `--on-failure`: `skip` or `pause`.
    pub on_failure: Option<OnFailureArg>,
    /// `--backoff-ms`.
    pub backoff_ms: Option<u64>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// `--memory-mb`.
    pub memory_mb: Option<usize>,
}

/// `[http]`: the HTTP API's listener (see [`crate::http`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The socket address to listen on, e.g. `127.0.0.1:8080` (`run --http-addr`).
    pub listen: Option<SocketAddr>,
    /// Largest request body, bytes, also once decompressed (default 64 MiB).
    pub max_body_bytes: Option<u64>,
}

/// `[tenants.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's plugin: this file of its folder in the plugin directory, whatever else
    /// the folder holds (see [`crate::catalog::Choice::Named`]).
    pub plugin: Option<String>,
    /// SHA-256 hashes of the tenant's bearer tokens, `sha256:<64 lowercase hex>`; never the
    /// tokens themselves (`storyline config hash-token` computes one).
    pub tokens: Option<Vec<String>>,
    /// Shards of the tenant's first events (an existing tenant keeps its own).
    pub shards: Option<u32>,
    /// Bucket length of the tenant's first events, ms (an existing tenant keeps its own).
    pub bucket_ms: Option<i64>,
    /// The tenant's `run --delay-ms` (over the value for every tenant).
    pub delay_ms: Option<i64>,
    /// The tenant's `--retention-secs`: how long its events are kept (over the value for
    /// every tenant).
    pub retention_secs: Option<i64>,
    /// The tenant's `run --memory-mb`: its plugin instances' memory in `run` (over the value
    /// for every tenant).
    pub memory_mb: Option<usize>,
}

impl Config {
    /// The file to read: `explicit` (`--config-file`), which must exist; else `./storyline.toml` if
    /// there is one; else none.
    pub fn locate(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
        match explicit {
            Some(file) if file.is_file() => Ok(Some(file.to_path_buf())),
            Some(file) => Err(ConfigError::Missing { file: file.to_path_buf() }),
            None => Ok(Path::new(DEFAULT_FILE).is_file().then(|| PathBuf::from(DEFAULT_FILE))),
        }
    }

    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Config::parse(&text, file)
    }

    /// Parses and checks `text`, read from `file`. Relative directories are made relative to
    /// the file's directory, so that the file means the same from wherever it is used.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.file = Some(file.to_path_buf());
        let base = file.parent().unwrap_or(Path::new(""));
        for dir in [&mut config.data_dir, &mut config.plugin_dir].into_iter().flatten() {
            if dir.is_relative() && !base.as_os_str().is_empty() {
                *dir = base.join(&*dir);
            }
        }
        config.check()?;
        Ok(config)
    }

    /// What the file says of `tenant`, if anything.
    pub fn tenant(&self, tenant: &TenantId) -> Option<&TenantConfig> {
        self.tenants.get(tenant.as_str())
    }

    /// The layout of `tenant`'s first events: the file's `shards` and `bucket_ms` over the
    /// built-in [`Layout::default`].
    pub fn first_layout(&self, tenant: &TenantId) -> Layout {
        let base = Layout::default();
        let Some(t) = self.tenant(tenant) else { return base };
        Layout {
            shards: t.shards.unwrap_or(base.shards),
            bucket_ms: t.bucket_ms.unwrap_or(base.bucket_ms),
        }
    }

    /// Each tenant's configured plugin file name.
    pub fn plugin_files(&self) -> BTreeMap<TenantId, String> {
        self.tenants
            .iter()
            .filter_map(|(name, t)| Some((TenantId::new(name).ok()?, t.plugin.clone()?)))
            .collect()
    }

    /// Every value in its range and of its form.
    fn check(&self) -> Result<(), ConfigError> {
        let file = self.file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        let bad = |key: &str, value: &dyn Display, allowed: &str| ConfigError::Invalid {
            file: file.clone(),
            key: key.to_string(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        };
        if let Some(log) = &self.log
            && tracing_subscriber::EnvFilter::try_new(log).is_err()
        {
            return Err(bad(
                "log",
                &quoted(log),
                "must be a log filter, e.g. \"info\" or \"storyline=debug,guest=info\"",
            ));
        }
        if let Some(nodes) = &self.store.nodes {
            if nodes.is_empty() {
                return Err(bad("store.nodes", &"[]", "must name at least one \"host:port\""));
            }
            for node in nodes {
                if !is_host_port(node) {
                    return Err(bad(
                        "store.nodes",
                        &quoted(node),
                        "each node must be \"host:port\", e.g. \"10.0.0.5:9042\"",
                    ));
                }
            }
        }
        if let Some(r) = &self.store.replication
            && r.trim().is_empty()
        {
            return Err(bad(
                "store.replication",
                &quoted(r),
                "must be CQL replication, e.g. \"{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}\"",
            ));
        }
        in_range(
            &bad,
            "store.retention_secs",
            self.store.retention_secs,
            1,
            Some(MAX_RETENTION_SECS),
        )?;
        let run = &self.run;
        in_range(&bad, "run.delay_ms", run.delay_ms, 0, None)?;
        in_range(&bad, "run.threads", run.threads, 1, Some(1024))?;
        in_range(&bad, "run.checkpoint_ms", run.checkpoint_ms, 0, None)?;
        in_range(&bad, "run.attempts", run.attempts, 1, None)?;
        in_range(&bad, "run.memory_mb", run.memory_mb, 1, Some(1 << 20))?;
        in_range(&bad, "http.max_body_bytes", self.http.max_body_bytes, 1, None)?;
        for (name, t) in &self.tenants {
            let key = |k: &str| format!("tenants.{name}.{k}");
            if TenantId::new(name).is_err() {
                return Err(bad(
                    &format!("tenants.{name}"),
                    &"{ ... }",
                    "a tenant name is 1 to 48 lowercase letters, digits, '-' or '_', starting with a letter",
                ));
            }
            if let Some(plugin) = &t.plugin
                && !is_plugin_file_name(plugin)
            {
                return Err(bad(
                    &key("plugin"),
                    &quoted(plugin),
                    "must be a file name ending in .wasm, inside the tenant's folder (no '/', not starting with '.')",
                ));
            }
            for token in t.tokens.iter().flatten() {
                if !is_token_hash(token) {
                    // The value is not shown: it may be a token pasted by mistake.
                    return Err(bad(
                        &key("tokens"),
                        &"[...]",
                        "each token must be given as its hash, \"sha256:<64 lowercase hex digits>\" (storyline config hash-token TOKEN prints it), never the token itself",
                    ));
                }
            }
            in_range(&bad, &key("shards"), t.shards, 1, Some(MAX_SHARDS))?;
            in_range(&bad, &key("bucket_ms"), t.bucket_ms, 1, None)?;
            in_range(&bad, &key("delay_ms"), t.delay_ms, 0, None)?;
            in_range(&bad, &key("retention_secs"), t.retention_secs, 1, Some(MAX_RETENTION_SECS))?;
            in_range(&bad, &key("memory_mb"), t.memory_mb, 1, Some(1 << 20))?;
        }
        Ok(())
    }
}

/// `Err` naming `key` when `value` is set and below `min` or above `max` (`None`: no bound
/// worth saying beyond the type's own).
fn in_range<T: PartialOrd + Display + Copy>(
    bad: &dyn Fn(&str, &dyn Display, &str) -> ConfigError,
    key: &str,
    value: Option<T>,
    min: T,
    max: Option<T>,
) -> Result<(), ConfigError> {
    let Some(v) = value else { return Ok(()) };
    match max {
        Some(max) if v < min || v > max => {
            Err(bad(key, &v, &format!("must be between {min} and {max}")))
        }
        None if v < min => Err(bad(key, &v, &format!("must be at least {min}"))),
        _ => Ok(()),
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `host:port` with a non-empty host and a port number.
fn is_host_port(node: &str) -> bool {
    match node.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// A plain file name ending in `.wasm` that the catalog would consider (not hidden).
fn is_plugin_file_name(name: &str) -> bool {
    let path = Path::new(name);
    name.len() > ".wasm".len()
        && name.ends_with(".wasm")
        && !name.starts_with('.')
        && path.file_name().is_some_and(|f| f == name)
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_token_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The form a bearer token is written in the file: `sha256:<hex of its SHA-256>`.
pub fn hash_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("storyline.toml"))
    }

    fn message(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let config = parse("").unwrap();
        assert!(config.data_dir.is_none() && config.store.kind.is_none());
        assert!(config.tenants.is_empty());
    }

    #[test]
    fn every_section_parses_into_its_fields() {
        let config = parse(
            r#"
            data_dir = "/srv/storyline"
            plugin_dir = "plugins"
            log = "info"
            [store]
            kind = "scylla"
            nodes = ["10.0.0.5:9042", "db.example:9042"]
            replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
            retention_secs = 86400
            tables = "shared"
            keyspace = "storyline_prod"
            [run]
            delay_ms = 500
            threads = 2
            on_failure = "pause"
            metrics_addr = "127.0.0.1:9464"
            [http]
            listen = "0.0.0.0:8080"
            max_body_bytes = 1048576
            [tenants.acme]
            plugin = "rules.wasm"
            tokens = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
            shards = 8
            bucket_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/srv/storyline")));
        assert_eq!(config.store.kind, Some(StoreKind::Scylla));
        assert_eq!(config.store.tables, Some(crate::cli::TablesArg::Shared));
        assert_eq!(config.store.keyspace.as_deref(), Some("storyline_prod"));
        assert_eq!(config.run.on_failure, Some(OnFailureArg::Pause));
        assert_eq!(config.http.listen, Some("0.0.0.0:8080".parse().unwrap()));
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(config.first_layout(&acme), Layout { shards: 8, bucket_ms: 500 });
        assert_eq!(config.plugin_files().get(&acme).map(String::as_str), Some("rules.wasm"));
        let other = TenantId::new("other").unwrap();
        assert_eq!(config.first_layout(&other), Layout::default());
    }

    #[test]
    fn relative_directories_are_relative_to_the_file() {
        let config = Config::parse(
            "data_dir = \"data\"\nplugin_dir = \"/abs\"",
            Path::new("/etc/sl/s.toml"),
        )
        .unwrap();
        assert_eq!(config.data_dir, Some(PathBuf::from("/etc/sl/data")));
        assert_eq!(config.plugin_dir, Some(PathBuf::from("/abs")));
    }

    #[test]
    fn an_out_of_range_value_names_file_key_value_and_range() {
        assert_eq!(
            message("[tenants.acme]\nshards = 0"),
            "storyline.toml: tenants.acme.shards = 0: must be between 1 and 1024"
        );
        assert_eq!(
            message("[tenants.acme]\nbucket_ms = -5"),
            "storyline.toml: tenants.acme.bucket_ms = -5: must be at least 1"
        );
        assert_eq!(
            message("[store]\nretention_secs = 0"),
            "storyline.toml: store.retention_secs = 0: must be between 1 and 630720000"
        );
        assert_eq!(
            message("[run]\nthreads = 0"),
            "storyline.toml: run.threads = 0: must be between 1 and 1024"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_the_keys_allowed() {
        let m = message("[tenants.acme]\nshard = 4");
        assert!(m.starts_with("storyline.toml: "), "{m}");
        assert!(m.contains("line 2"), "{m}");
        assert!(m.contains("unknown field `shard`") && m.contains("`shards`"), "{m}");
    }

    #[test]
    fn broken_toml_names_the_line() {
        let m = message("[store]\nkind = \"embedded\"\nnodes = [\"a:1\"\n");
        assert!(m.starts_with("storyline.toml: ") && m.contains("line 3"), "{m}");
    }

    #[test]
    fn an_unknown_store_kind_lists_the_kinds() {
        let m = message("[store]\nkind = \"postgres\"");
        assert!(m.contains("line 2") && m.contains("embedded") && m.contains("scylla"), "{m}");
    }

    #[test]
    fn a_bad_tenant_name_is_refused_with_the_rule() {
        let m = message("[tenants.Acme]\nshards = 2");
        assert!(m.starts_with("storyline.toml: tenants.Acme = "), "{m}");
        assert!(m.contains("lowercase letters"), "{m}");
    }

    #[test]
    fn tokens_must_be_hashes_and_a_plain_token_is_never_echoed() {
        let m = message("[tenants.acme]\ntokens = [\"hunter2\"]");
        assert!(m.contains("tenants.acme.tokens") && m.contains("sha256:<64"), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(!is_token_hash(&upper));
        assert!(is_token_hash(&hash_token("hunter2")));
    }

    #[test]
    fn hash_token_is_sha256_in_lowercase_hex() {
        assert_eq!(
            hash_token("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn a_plugin_is_a_wasm_file_name_inside_the_folder() {
        for bad in ["rules", "../other/rules.wasm", "sub/rules.wasm", ".rules.wasm", ".wasm"] {
            let m = message(&format!("[tenants.acme]\nplugin = {bad:?}"));
            assert!(m.contains("tenants.acme.plugin") && m.contains(".wasm"), "{bad}: {m}");
        }
        assert!(parse("[tenants.acme]\nplugin = \"rules-v2.wasm\"").is_ok());
    }

    #[test]
    fn nodes_are_host_and_port() {
        let m = message("[store]\nnodes = [\"10.0.0.5\"]");
        assert!(m.contains("store.nodes = \"10.0.0.5\"") && m.contains("host:port"), "{m}");
        assert!(parse("[store]\nnodes = [\"[::1]:9042\", \"db:9042\"]").is_ok());
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let err = Config::locate(Some(Path::new("/nonexistent/storyline.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "got {err:?}");
        assert!(err.to_string().contains("/nonexistent/storyline.toml"), "{err}");
    }
}
