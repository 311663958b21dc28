//! storyline turns security events from many sensors into stories — groups of events that tell
//! one network session — with each tenant's correlation rules running as a sandboxed
//! WebAssembly component.
//!
//! # Layout
//! - [`model`]: identifiers (tenant, shard, bucket, story) and the event/bucket/story values
//!   shared with plugins. Owns validation of ids; leaves the event format to the SDK.
//! - [`plugin`]: the Wasm runtime: loading and checking components, the compiled-component
//!   cache, per-tenant instances, limits, the sandbox. Knows nothing of stores or shards.
//! - [`store`]: the [`store::Store`] trait (events by shard and bucket, offsets with plugin
//!   state, leases, stories, dead letters) and its embedded implementation.
//! - [`catalog`]: the plugin directory while running: which version each tenant runs, hot
//!   reload with validation before the switch.
//! - [`producer`]: validation, shard choice by routing key, insert-time buckets, batches.
//! - [`worker`]: every shard of every tenant as a task on one pool of threads (`pool`), each
//!   shard's steps (`shard`): lease, offset, wait, read, plugin, publish, commit; idle shards
//!   sleep until the store, a timer or a plugin change wakes them.
//! - [`metrics`]: `/metrics` (lag, late events, dead letters, plugin calls, reloads, ingest),
//!   encoded with `prometheus-client`, and its route.
//! - [`http`]: the HTTP API of `run` (events in, stories and status out, health, metrics): a
//!   thin adapter over the commands' logic, mapping outcomes to status codes; owns tokens.
//! - [`generate`]: a realistic multi-sensor event stream with ground truth (demo, tests, benches).
//! - [`quality`]: how right a rule's stories are: real sensor logs with their session keys as
//!   ground truth, perturbed as fleets are, scored pairwise beside a naive rule.
//! - [`config`]: the configuration file, `storyline.toml`: parsed and checked, every value
//!   optional; leaves merging it under the flags to `cli` and applying it to the modules above.
//! - [`cli`]: the `storyline` command line; parses arguments and calls the modules above.

/// Every binary linking the host (the CLI, tests, benches) allocates with mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod catalog;
pub mod cli;
pub mod config;
pub mod generate;
pub mod http;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod producer;
pub mod quality;
pub mod store;
pub mod worker;
