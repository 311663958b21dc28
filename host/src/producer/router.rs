//! Routing keys from the tenant's plugin, with the plugin kept away from intake.
//!
//! A rule's `route` is guest code like `process`: it can trap, loop, write to stderr or hit its
//! memory limit. Intake must survive all of it, so every call here
//! - runs off the async runtime (on a blocking thread): WASI's stderr and clocks are driven by
//!   blocking on the runtime, which panics on one of its own threads;
//! - runs under a short deadline ([`ROUTE_DEADLINE`]): a batch of events never waits on a rule
//!   longer than that;
//! - catches a host panic, so the batch it was routing is never dropped;
//! - on failure routes that batch by event id (the fallback every event has), says so with the
//!   guest's error and stderr, and re-creates the instance for the next batch. A rule that
//!   fails [`MAX_FAILURES`] batches in a row, or runs past its deadline once, is not asked again
//!   for the rest of this ingest.

use std::time::Duration;

use storyline_sdk::format::InputEvent;

use crate::model::{ShardId, TenantId};
use crate::plugin::{CallError, EventView, Failure, Limits, Plugin, PluginInstance};

/// Longest a `route` call may run. Routing a batch of 1,000 events takes about a millisecond;
/// a rule that needs seconds is broken, and intake must not wait for it.
pub const ROUTE_DEADLINE: Duration = Duration::from_secs(2);

/// Batches in a row a rule may fail to route before it is no longer asked.
pub const MAX_FAILURES: u32 = 3;

/// The plugin version that computes routing keys, and what became of it.
pub struct Router {
    /// The version asked.
    plugin: Plugin,
    /// Its `init` configuration.
    config: String,
    /// The tenant whose events it routes.
    tenant: TenantId,
    /// Limits of its instance (the deadline at most [`ROUTE_DEADLINE`]).
    limits: Limits,
    /// Where the version came from, for the report ("the version the running host serves").
    origin: String,
    /// The instance; `None` until first needed and after a failure.
    instance: Option<PluginInstance>,
    /// Batches failed in a row.
    failures_in_a_row: u32,
    /// Set once the rule is no longer asked; every event is routed by id from then on.
    given_up: bool,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("plugin", &self.plugin.info().label())
            .field("origin", &self.origin)
            .field("given_up", &self.given_up)
            .finish_non_exhaustive()
    }
}

/// What routing one batch came to.
#[derive(Debug, Default)]
pub struct Routed {
    /// A key per event asked about (`None`: route by id).
    pub keys: Vec<Option<String>>,
    /// Why the rule gave no keys for this batch, if it failed.
    pub failure: Option<String>,
}

impl Router {
    /// A router asking `plugin` (instantiated with `config` on first use). `origin` says where
    /// the version came from, in the ingest report.
    pub fn new(
        plugin: Plugin,
        config: String,
        tenant: TenantId,
        limits: Limits,
        origin: impl Into<String>,
    ) -> Self {
        let limits = Limits { call_timeout: limits.call_timeout.min(ROUTE_DEADLINE), ..limits };
        Router {
            plugin,
            config,
            tenant,
            limits,
            origin: origin.into(),
            instance: None,
            failures_in_a_row: 0,
            given_up: false,
        }
    }

    /// How the report names this router: the plugin's label and where it came from.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.plugin.info().label(), self.origin)
    }

    /// Whether the rule is no longer asked.
    pub fn given_up(&self) -> bool {
        self.given_up
    }

    /// The routing keys of `events[i]` for each `i` in `which`, computed on the calling thread
    /// (which must not be one of the async runtime's: see the module docs). Never panics and
    /// never fails: a failure is reported in [`Routed::failure`] and yields no keys.
    pub fn keys_blocking(
        &mut self,
        events: &[(InputEvent, Option<ShardId>)],
        which: &[usize],
    ) -> Routed {
        if self.given_up {
            return Routed::default();
        }
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_keys(events, which)));
        let failure = match caught {
            Ok(Ok(keys)) => {
                self.failures_in_a_row = 0;
                return Routed { keys, failure: None };
            }
            Ok(Err(e)) => {
                let stop = matches!(e.failure, Failure::Timeout { .. });
                (e.to_string(), stop)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                (
                    format!(
                        "tenant {}, plugin {}, route: the host panicked while calling it: {what}",
                        self.tenant,
                        self.plugin.info().label()
                    ),
                    false,
                )
            }
        };
        let (message, stop_now) = failure;
        // The instance's state is unknown after any failure: a fresh one serves the next batch.
        self.instance = None;
        self.failures_in_a_row += 1;
        if stop_now || self.failures_in_a_row >= MAX_FAILURES {
            self.given_up = true;
            tracing::error!(
                tenant = %self.tenant,
                "{message}; routing every further event of this ingest by event id (fix the rule's `route`; `storyline plugin test` calls it)"
            );
        } else {
            tracing::warn!(
                tenant = %self.tenant,
                "{message}; this batch is routed by event id"
            );
        }
        Routed { keys: Vec::new(), failure: Some(message) }
    }

    fn try_keys(
        &mut self,
        events: &[(InputEvent, Option<ShardId>)],
        which: &[usize],
    ) -> Result<Vec<Option<String>>, CallError> {
        let instance = match &mut self.instance {
            Some(i) => i,
            None => self.instance.insert(self.plugin.instantiate(
                &self.tenant,
                &self.config,
                self.limits,
            )?),
        };
        let views: Vec<EventView<'_>> = which
            .iter()
            .map(|&i| {
                let e = &events[i].0;
                EventView {
                    id: e.id.as_deref().unwrap_or_default(),
                    source: &e.source,
                    kind: &e.kind,
                    event_time: e.time,
                    insert_time: 0,
                    attributes: &e.attributes,
                    payload: &e.payload,
                }
            })
            .collect();
        instance.route_all(&views)
    }
}
