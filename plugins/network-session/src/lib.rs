//! network-session: one story per network session, across sensors.
//!
//! Firewalls, endpoint agents, DNS resolvers, HTTP proxies, TLS inspectors and IDSs each report a
//! piece of the same connection. This rule joins those pieces into one `network-session` story
//! per connection:
//!
//! - **any kind of record**: every event that names both addresses and ports joins the session
//!   of its two endpoints, whatever its kind and whether or not it names the transport (Zeek's
//!   `ldap`, `kerberos`, `smb_files`; Suricata's `alert`, `anomaly`...); the kind and the ECS
//!   fields only decide what it adds to the story (DNS names, HTTP, TLS, users, processes,
//!   alerts' signatures, file names). A record with both addresses and no ports joins the
//!   connection of its address pair nearest in time (a file seen between two hosts), even one
//!   seen after it. Only an event without usable addresses is a story of its own;
//! - **clock skew**: each sensor's clock offset is learned from the records sensors share (the
//!   SDK's `SensorClocks`: the median per pair of sensors), every time is corrected before it is
//!   compared, and a sensor whose clock is known needs only `residual_skew_ms` (1 s) of
//!   tolerance instead of `skew_ms` (30 s); one sensor's records compared with each other need
//!   none. The offsets are published in each story (`clock_offsets_ms`) and logged;
//! - **direction**: sessions are keyed by their endpoints in a fixed order, so A→B and B→A are
//!   one key; client and server are decided from the tuple (the higher, ephemeral port is the
//!   client) or, when the tuple cannot tell, by the earliest report, never by arrival order;
//! - **reused tuples**: a sensor reports a connection in one flow record (per direction), so its
//!   second flow record of the same ports is another connection even seconds after the first
//!   ended; otherwise a gap of `gap_ms` ends a session;
//! - **late records and arrival order**: a flow record written when the connection ended
//!   reaches back over its `event.duration`, hours past `max_span_ms` if the connection lasted
//!   that long (up to `late_flow_ms`); a record arriving after publication reopens the
//!   story and publishes the next revision of the same id (for `reopen_ms`, ten minutes; a
//!   connection's story that no flow record has joined waits `late_flow_ms` more, a day, for
//!   the record its sensor writes when a long connection ends); a record that bridges two
//!   sessions merges them (the sessionizer's session windows);
//! - **DNS**: a lookup has its own tuple (client → resolver:53). When a sensor reports that
//!   exchange as a flow, the lookup stays with it; otherwise (by default) it joins the
//!   connection its answer led to (same client, answered address, starting within
//!   `dns_window_ms` after it), whether it arrives before or after that connection. A
//!   connection takes one lookup; a lookup prefers a connection without one, then the first to
//!   start. A lookup that finds no free connection waits (`dns_window_ms + gap_ms + skew_ms` of
//!   watermark), then joins the best connection it fits even if taken, or becomes a
//!   `dns-lookup` story. `dns_joins_connection: false` keeps every lookup with its exchange.
//!   A DNS exchange that stays a story of its own ends by its sensor's timing: Zeek's records
//!   (`event.module: zeek`) after `zeek_dns_gap_ms` (19 s) without records, on any port;
//!   other sensors' exchanges with a DNS server (port 53) after `dns_gap_ms` (by default
//!   `gap_ms`: set it to their DNS timeout); other name services after `gap_ms`;
//! - **files**: a record of a file without ports (Zeek's `files`) joins the connection whose
//!   `http`, `smtp` or `ftp` record listed its id, whichever came first;
//!
//! Routing sends every event to the shard of the connection's client address, so the DNS
//! lookup the client made and every report of the connection meet in one instance.
//!
//! # Layout
//! - `config`: the JSON configuration and its checks.
//! - `observe`: what one event says (class, transport, client/server, facts) and its route;
//!   pure functions shared by `process` and `route`.
//! - `state`: the rule: how an event joins a story; the snapshot format.
//! - `lookups`: DNS lookups waiting for their connection, indexed by address pair and deadline.
//! - `pairs`: address pair → connection keys, with lazy pruning.
//! - `story`: what a story accumulates and the published fields.
//!
//! Build: `cargo build --target wasm32-wasip2 --profile plugin -p network-session`; the sample
//! in `sample/events.jsonl` shows every case above (see `sample/README.md`).

mod config;
mod lookups;
mod observe;
mod pairs;
mod state;
mod story;

#[cfg(test)]
mod tests;

use storyline_sdk::ecs::EcsEvent;
use storyline_sdk::{Bucket, Correlator, Error, Event, Level, Story, export_correlator};

pub use config::Config;

use state::State;

/// The network-session correlator. Build it with [`Correlator::init`].
#[derive(Debug)]
pub struct NetworkSession {
    /// Settings from `init`; they win over the ones a restored snapshot was taken with.
    config: Config,
    /// Everything kept across buckets, snapshotted as one value.
    state: State,
}

impl Correlator for NetworkSession {
    /// `config` is a JSON object of [`Config`] fields; `{}` (or empty text) keeps the defaults.
    fn init(config: &str) -> Result<Self, Error> {
        let config = Config::parse(config)?;
        Ok(NetworkSession { config, state: State::new(&config) })
    }

    /// Adds every event to its story, settles the DNS lookups whose wait is over, then publishes
    /// the stories that closed at the bucket's watermark.
    ///
    /// Never fails: a payload that is not ECS JSON is read as an event without fields (and
    /// logged once per bucket).
    fn process(&mut self, bucket: &Bucket) -> Result<Vec<Story>, Error> {
        let mut unreadable = Unreadable::default();
        let watermark = state::sane_time(bucket.watermark);
        // A file record waits for the record that lists its file only once such records are
        // known to come; a bucket that brings the first one says so before any of its events
        // is placed, so that its order does not matter.
        if !self.state.file_refs_seen() && self.state.look_for_file_refs(&bucket.events) {
            self.state.expect_file_refs();
        }
        for event in &bucket.events {
            let ecs = match EcsEvent::parse(&event.payload) {
                Ok(ecs) => ecs,
                Err(e) => {
                    unreadable.note(event, &e);
                    EcsEvent::default()
                }
            };
            self.state.add(&self.config, event, &ecs, watermark);
        }
        unreadable.log(bucket);
        self.state.expire_lookups(&self.config, watermark);
        self.state.sweep();
        Ok(self.state.advance(watermark))
    }

    /// Publishes every story still open, after settling the DNS lookups still waiting.
    fn drain(&mut self) -> Result<Vec<Story>, Error> {
        Ok(self.state.drain(&self.config))
    }

    /// The connection's client address (for DNS, the querying client), so that a connection
    /// and the lookup that led to it share a shard. `None` for events without addresses.
    fn route(&self, event: &Event) -> Option<String> {
        observe::route(event)
    }

    /// Open and recently published sessions, waiting DNS lookups and the pair index.
    fn snapshot(&self) -> Vec<u8> {
        self.state.encode()
    }

    /// Replaces the state with a snapshot; an empty one is an empty state.
    fn restore(&mut self, state: &[u8]) -> Result<(), Error> {
        self.state = State::decode(state, &self.config)?;
        Ok(())
    }
}

export_correlator!(NetworkSession);

/// Longest parse error logged, in bytes.
const MAX_ERROR_BYTES: usize = 200;

/// Payloads of one bucket that are not ECS JSON, logged once (the host caps log records, and
/// one bad sensor must not flood the log with one record per event).
#[derive(Debug, Default)]
struct Unreadable {
    count: usize,
    /// The first such event and why.
    first: Option<(String, String)>,
}

impl Unreadable {
    fn note(&mut self, event: &Event, error: &serde_json::Error) {
        self.count += 1;
        if self.first.is_none() {
            // serde quotes the offending value, which may be a whole payload: keep the start.
            let mut error = error.to_string();
            if error.len() > MAX_ERROR_BYTES {
                let mut cut = MAX_ERROR_BYTES;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push('…');
            }
            self.first = Some((event.id.clone(), error));
        }
    }

    fn log(self, bucket: &Bucket) {
        let Some((event_id, error)) = self.first else { return };
        let count = self.count.to_string();
        let start = bucket.start.to_string();
        storyline_sdk::log(
            Level::Warn,
            "payloads that are not ECS JSON objects were read as events without fields",
            &[
                ("count", &count),
                ("first_event", &event_id),
                ("error", &error),
                ("bucket_start", &start),
            ],
        );
    }
}
