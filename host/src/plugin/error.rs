//! What can go wrong with a plugin: loading a file, or a call into an instance.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::model::{BucketStart, ShardId, TenantId};

/// A plugin file that cannot be used. The previous version of a plugin, if any, keeps running.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is empty (often: still being copied).
    #[error(
        "plugin {path}: the file is empty (if it is being copied, copy to a temporary name and rename it into place)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Not WebAssembly at all.
    #[error("plugin {path}: not a WebAssembly file (it does not start with \\0asm)")]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core module, not a component.
    #[error(
        "plugin {path}: this is a core WebAssembly module, not a component; build the plugin with `cargo build --target wasm32-wasip2` against storyline-sdk"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// Truncated or corrupt.
    #[error(
        "plugin {path}: truncated or corrupt component ({reason}); if it is being copied, copy to a temporary name and rename it into place"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// Built for a version of the contract this host does not serve.
    #[error(
        "plugin {path}: built for storyline:correlator@{found}, but this host supports {}; rebuild it with a storyline-sdk for {}",
        supported_list(),
        newest()
    )]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The version the component exports.
        found: String,
    },
    /// A component that does not export the correlator interface.
    #[error(
        "plugin {path}: does not export storyline:correlator/correlator (it exports: {}); is it a storyline plugin built with export_correlator!?",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
    )]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// The component exports the interface, but with other functions or types, or imports
    /// something the sandbox does not provide.
    #[error(
        "plugin {path}: does not match the world storyline:correlator/plugin@{version}: {reason}"
    )]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// The version it claims.
        version: String,
        /// What does not match.
        reason: String,
    },
    /// Compilation failed.
    #[error("plugin {path}: cannot compile: {reason}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
}

fn supported_list() -> String {
    super::SUPPORTED_VERSIONS.join(", ")
}

fn newest() -> &'static str {
    super::SUPPORTED_VERSIONS.last().copied().unwrap_or_default()
}

/// Which bucket a call was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRef {
    /// The shard.
    pub shard: ShardId,
    /// The bucket's start.
    pub start: BucketStart,
}

/// A failed call into a plugin instance: who, what, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tenant {tenant}, plugin {plugin}, {call}{}: {failure}", bucket.map(|b| format!(" of bucket {} on shard {}", b.start, b.shard)).unwrap_or_default())]
pub struct CallError {
    /// The tenant whose instance failed.
    pub tenant: TenantId,
    /// The plugin (name and short content hash).
    pub plugin: String,
    /// The call: `init`, `process`, `drain`, `route`, `snapshot`, `restore` or `instantiate`.
    pub call: &'static str,
    /// The bucket being processed, for `process`.
    pub bucket: Option<BucketRef>,
    /// Why it failed.
    pub failure: Failure,
}

/// Why a call failed. A trap, a limit and a guest's refusal are different things: after any of
/// the first four the instance is poisoned and must be re-created; after a refusal
/// ([`Failure::Guest`]) or malformed output it can go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap {
        /// The trap, with the guest's backtrace when available.
        message: String,
        /// The last lines the guest wrote to stderr (a Rust panic message lands here).
        stderr: String,
    },
    /// The call ran past its deadline and was interrupted.
    Timeout {
        /// The deadline.
        limit: Duration,
    },
    /// The guest tried to grow its memories past the tenant's limit.
    MemoryLimit {
        /// The limit in bytes.
        limit: usize,
    },
    /// The call returned more bytes of stories than allowed.
    OutputTooLarge {
        /// Bytes returned.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// `snapshot` returned a state larger than allowed.
    StateTooLarge {
        /// Bytes returned.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The call returned stories that break the contract.
    Malformed {
        /// What is wrong, naming the story.
        reason: String,
    },
    /// The plugin returned its own error.
    Guest(GuestError),
    /// The instance trapped or hit a limit earlier and was not re-created.
    Poisoned,
}

impl Failure {
    /// A short name of the kind of failure (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap { .. } => "trap",
            Failure::Timeout { .. } => "deadline",
            Failure::MemoryLimit { .. } => "memory",
            Failure::OutputTooLarge { .. } => "output_too_large",
            Failure::StateTooLarge { .. } => "state_too_large",
            Failure::Malformed { .. } => "malformed_output",
            Failure::Guest(_) => "guest_error",
            Failure::Poisoned => "poisoned",
        }
    }

    /// Whether the instance is unusable after this failure.
    pub fn poisons(&self) -> bool {
        matches!(
            self,
            Failure::Trap { .. }
                | Failure::Timeout { .. }
                | Failure::MemoryLimit { .. }
                | Failure::Poisoned
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap { message, stderr } => {
                write!(f, "plugin trapped: {message}")?;
                if !stderr.is_empty() {
                    write!(f, "; guest stderr: {}", stderr.trim_end())?;
                }
                Ok(())
            }
            Failure::Timeout { limit } => {
                write!(f, "plugin ran past its {} ms deadline and was stopped", limit.as_millis())
            }
            Failure::MemoryLimit { limit } => write!(
                f,
                "plugin tried to use more than the tenant's {} MiB memory limit (all its instances together) and was stopped; raise it (`run --memory-mb`) or make the plugin keep less",
                limit / (1 << 20)
            ),
            Failure::OutputTooLarge { bytes, limit } => {
                write!(f, "plugin returned {bytes} bytes of stories; the limit is {limit}")
            }
            Failure::StateTooLarge { bytes, limit } => write!(
                f,
                "plugin state is {bytes} bytes; the limit is {limit} (the plugin keeps too much open: lower its session timeouts, or raise Limits::state_bytes)"
            ),
            Failure::Malformed { reason } => {
                write!(f, "plugin returned malformed output: {reason}")
            }
            Failure::Guest(e) => write!(f, "plugin refused: {e}"),
            Failure::Poisoned => {
                write!(f, "instance is unusable after an earlier trap or limit; re-create it")
            }
        }
    }
}

/// The error variant a plugin returned (the WIT `error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestError {
    /// `invalid-config`.
    InvalidConfig(String),
    /// `invalid-state`.
    InvalidState(String),
    /// `failed`.
    Failed(String),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestError::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            GuestError::InvalidState(m) => write!(f, "invalid state: {m}"),
            GuestError::Failed(m) => write!(f, "{m}"),
        }
    }
}
