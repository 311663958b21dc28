//! Write storyline correlation rules in Rust and build them as WebAssembly components.
//!
//! A rule is a type that implements [`Correlator`]: the host gives it one bucket of events at
//! a time and publishes the [`Story`] values it returns. [`export_correlator!`] turns the type
//! into the component's exports; built with `cargo build --target wasm32-wasip2`, the crate is a
//! plugin for the world `storyline:correlator/plugin@0.2.0` (see `wit/` and [`WIT_VERSION`]).
//! The same crate builds natively, so the rule is unit-tested and benchmarked without Wasm
//! through [`testing::Harness`].
//!
//! What every rule needs is here: [`community_id`] (the standard direction-insensitive flow
//! hash), [`session`] (sessions with gap, span and clock-skew tolerance, deterministic ids and
//! serialisable state), [`json`] and [`ecs`] (field access that borrows from the payload), and
//! [`log`](fn@log) into the host's log.
//!
//! ```
//! use storyline_sdk::{Bucket, Correlator, Error, Story, export_correlator};
//! use storyline_sdk::session::{SessionConfig, Sessionizer};
//!
//! /// Groups events by their `source` sensor into sessions.
//! struct BySource {
//!     sessions: Sessionizer<()>,
//! }
//!
//! impl Correlator for BySource {
//!     fn init(_config: &str) -> Result<Self, Error> {
//!         Ok(BySource { sessions: Sessionizer::new(SessionConfig::default()) })
//!     }
//!
//!     fn process(&mut self, bucket: &Bucket) -> Result<Vec<Story>, Error> {
//!         for e in &bucket.events {
//!             self.sessions.add(&e.source, &e.id, e.event_time, 0, bucket.watermark);
//!         }
//!         Ok(self.sessions.advance(bucket.watermark, |s| s.story("by-source")))
//!     }
//!
//!     fn drain(&mut self) -> Result<Vec<Story>, Error> {
//!         Ok(self.sessions.drain(|s| s.story("by-source")))
//!     }
//! }
//!
//! export_correlator!(BySource);
//!
//! // Natively, the harness runs it over JSONL events:
//! let events = r#"{"id":"a","source":"fw-1","kind":"flow","time":1000}
//! {"id":"b","source":"fw-1","kind":"flow","time":2000}
//! {"id":"c","source":"dns-1","kind":"dns","time":2000}"#;
//! let mut harness = storyline_sdk::testing::Harness::<BySource>::new("{}").unwrap();
//! let stories = harness.run_jsonl(events).unwrap();
//! assert_eq!(stories.len(), 2);
//! ```
#![deny(missing_docs)]

// Lets generated bindings name this crate the same way from inside it and from a plugin crate.
extern crate self as storyline_sdk;

pub mod clocks;
pub mod community_id;
pub mod ecs;
pub mod format;
pub mod json;
mod model;
pub mod packed;
pub mod session;
pub mod testing;

pub use model::{Bucket, Error, Event, Fields, FieldsBuilder, Level, Story, TimestampMs};

/// The version of the WIT package `storyline:correlator` this SDK builds plugins for.
pub const WIT_VERSION: &str = "0.2.0";

/// A correlation rule. The host calls `init` once, then `process` for every bucket in order.
///
/// State kept across buckets (open sessions) must come back from [`Correlator::snapshot`]
/// through [`Correlator::restore`]: the host checkpoints it with the shard's offset and may
/// restore it into a fresh instance (after a crash, a reload or on another machine). Output must
/// be deterministic: the same state and bucket give the same stories, in the same order (prefer
/// `BTreeMap` to `HashMap`, whose order differs between instances).
pub trait Correlator: Sized + 'static {
    /// Creates the rule from its configuration, the text of a JSON object (`{}` by default).
    fn init(config: &str) -> Result<Self, Error>;

    /// Correlates one bucket and returns the stories that are complete (or grew) now.
    fn process(&mut self, bucket: &Bucket) -> Result<Vec<Story>, Error>;

    /// Closes every open session and returns its story. Default: nothing is kept open.
    fn drain(&mut self) -> Result<Vec<Story>, Error> {
        Ok(Vec::new())
    }

    /// The routing key of an event: events with the same key go to the same shard, so the
    /// events of one story should share it. Default: `None` (the host hashes the event id).
    fn route(&self, _event: &Event) -> Option<String> {
        None
    }

    /// The state kept across buckets, as bytes. Default: empty (a stateless rule).
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Replaces the state with a snapshot. Default: accepts only an empty snapshot.
    fn restore(&mut self, state: &[u8]) -> Result<(), Error> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidState("this rule keeps no state but was given some".into()))
        }
    }
}

/// Writes a record into the host's log (tagged there with tenant and plugin). Natively it
/// goes to standard error. The host caps bytes and records per call: log per bucket, not
/// per event.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    guest::log(level, message, fields);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut line = format!("[{level}] {message}");
        for (k, v) in fields {
            line.push_str(&format!(" {k}={v}"));
        }
        eprintln!("{line}");
    }
}

/// Exports a [`Correlator`] as the plugin's implementation of the WIT world. Use it once per
/// plugin crate. It expands to nothing in a native build, so the crate also builds natively.
#[macro_export]
macro_rules! export_correlator {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __StorylineExport;
            impl $crate::__private::Guest for __StorylineExport {
                fn init(config: String) -> Result<(), $crate::__private::WitError> {
                    $crate::__private::init::<$ty>(config)
                }
                fn process(
                    bucket: $crate::__private::WitBucket,
                ) -> Result<Vec<$crate::__private::WitStory>, $crate::__private::WitError> {
                    $crate::__private::process::<$ty>(bucket)
                }
                fn drain() -> Result<Vec<$crate::__private::WitStory>, $crate::__private::WitError>
                {
                    $crate::__private::drain::<$ty>()
                }
                fn route(events: Vec<u8>) -> Vec<Option<String>> {
                    $crate::__private::route::<$ty>(events)
                }
                fn snapshot() -> Vec<u8> {
                    $crate::__private::snapshot::<$ty>()
                }
                fn restore(state: Vec<u8>) -> Result<(), $crate::__private::WitError> {
                    $crate::__private::restore::<$ty>(state)
                }
            }
            $crate::__private::bindings::__export_plugin_world!(
                __StorylineExport with_types_in $crate::__private::bindings
            );
        };
    };
}

#[cfg(target_arch = "wasm32")]
mod guest;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use guest::glue as __private;
