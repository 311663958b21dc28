//! The plugin's configuration: the JSON object given to `init`.

use serde::Deserialize;
use storyline_sdk::Error;
use storyline_sdk::session::{Awaiting, SessionConfig};

/// Largest accepted value of any setting: 30 days. Bounding every timeout keeps the sums the
/// rule and the [`storyline_sdk::session::Sessionizer`] compute (`gap + skew + reach`, deadlines)
/// far from overflowing, and no real session needs more.
pub const MAX_MS: i64 = 30 * 24 * 3_600_000;

/// Timeouts and tolerances, in milliseconds. `{}` keeps every default.
///
/// ```json
/// {"gap_ms": 60000, "dns_gap_ms": 60000, "zeek_dns_gap_ms": 19000, "max_span_ms": 3600000,
///  "skew_ms": 30000, "reopen_ms": 600000,
///  "dns_window_ms": 30000, "residual_skew_ms": 1000, "late_flow_ms": 86400000,
///  "late_flow_mb": 32}
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Inactivity that ends a session. Default 60 000 (one minute).
    pub gap_ms: i64,
    /// Inactivity that ends the story of an exchange with a DNS server (port 53) of its own
    /// (lookups on one tuple that no flow record joined). Set it to the DNS timeout of the
    /// sensors, so that a client that asks its resolver from the same port every few seconds
    /// makes one story per burst as they count it, not one for the hour: Zeek ends a DNS
    /// exchange after 10 s without packets (`dns_session_timeout`). Default 60 000, as
    /// `gap_ms` (sensors time DNS differently); at most `gap_ms`. Zeek's records
    /// (`event.module: zeek`) take `zeek_dns_gap_ms` instead.
    pub dns_gap_ms: i64,
    /// `dns_gap_ms` for the records Zeek wrote (`event.module: zeek`), on any port its DNS
    /// analyzer reads (53, NetBIOS 137, mDNS 5353, LLMNR 5355): Zeek ends such an exchange at
    /// a check made every `dns_session_timeout` (10 s) once it has been 9 s without packets,
    /// so a pause under 9 s never ends one and a pause of 19 s always does. Default 19 000
    /// (a pause Zeek may or may not end keeps the exchange whole); at most `gap_ms`.
    pub zeek_dns_gap_ms: i64,
    /// Longest span of one session; later traffic on the same 5-tuple is a new session.
    /// A flow record whose `event.duration` says its connection lasted longer spans its
    /// connection (up to `late_flow_ms`). Default 3 600 000 (one hour).
    pub max_span_ms: i64,
    /// How far two sensors' clocks may disagree. Default 30 000.
    pub skew_ms: i64,
    /// How long a published session is kept so that a late event publishes the next revision
    /// of the same story instead of a new story. Default 600 000 (ten minutes).
    pub reopen_ms: i64,
    /// How soon after a DNS answer the connection it led to must start (plus `skew_ms`).
    /// Default 30 000.
    pub dns_window_ms: i64,
    /// How far a sensor's clock may still be off once the rule has learned its offset from
    /// the connections it shares with other sensors (it then replaces `skew_ms` when an event
    /// is matched to a session). Default 1 000.
    pub residual_skew_ms: i64,
    /// Whether a DNS lookup joins the connection its answer led to (default `true`: the story
    /// of a session starts with the lookup that found its server). With `false` a lookup is a
    /// record of its own exchange with the resolver, like any other: it joins that exchange's
    /// flow records and nothing else, as a sensor that keys sessions by connection (Zeek's
    /// `uid`) counts it.
    pub dns_joins_connection: bool,
    /// Whether each sensor reports a connection in one flow record per direction (Zeek's
    /// `conn`, Suricata's `flow`, firewalls' session-end logs). Default `true`: a sensor's
    /// second flow record of a tuple in the same direction is then another connection, even
    /// seconds after the first ended. Set `false` for exporters that split long connections
    /// into several records (NetFlow's active timeout).
    pub one_flow_record_per_connection: bool,
    /// How long past `reopen_ms` a published connection story that no flow record has joined
    /// yet is kept for one: a sensor writes a connection's flow record when the connection
    /// ends (Zeek's `conn`, Suricata's `flow`), hours after its TLS or HTTP records for a long
    /// connection, and the record then revises that story instead of starting another.
    /// Default 86 400 000 (one day); 0 keeps them for `reopen_ms` only.
    pub late_flow_ms: i64,
    /// Most memory those stories may hold while they wait, MiB (about 0.5 KiB each); stories
    /// published while it is spent wait for `reopen_ms` only. Default 32.
    pub late_flow_mb: u32,
}

impl Default for Config {
    fn default() -> Self {
        let s = SessionConfig::default();
        Config {
            gap_ms: s.gap_ms,
            dns_gap_ms: 60_000,
            zeek_dns_gap_ms: 19_000,
            max_span_ms: s.max_span_ms,
            skew_ms: s.skew_ms,
            reopen_ms: s.reopen_ms,
            dns_window_ms: 30_000,
            residual_skew_ms: 1_000,
            dns_joins_connection: true,
            one_flow_record_per_connection: true,
            late_flow_ms: 86_400_000,
            late_flow_mb: 32,
        }
    }
}

/// An example of a full configuration, quoted in error messages.
const EXAMPLE: &str = r#"{"gap_ms": 60000, "dns_gap_ms": 60000, "zeek_dns_gap_ms": 19000, "max_span_ms": 3600000, "skew_ms": 30000, "reopen_ms": 600000, "dns_window_ms": 30000, "residual_skew_ms": 1000, "dns_joins_connection": true, "late_flow_ms": 86400000, "late_flow_mb": 32}"#;

/// Largest accepted `late_flow_mb`: 4 GiB, more than a plugin instance may hold.
pub const MAX_LATE_FLOW_MB: u32 = 4096;

impl Config {
    /// Parses and checks the text given to `init`; an empty text means `{}`.
    pub fn parse(text: &str) -> Result<Config, Error> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        // serde would also read a struct from a JSON array, by position: refuse that form.
        if !text.trim_start().starts_with('{') {
            return Err(Error::InvalidConfig(format!(
                "the configuration must be a JSON object (times in ms), e.g. {EXAMPLE}"
            )));
        }
        let config: Config = serde_json::from_str(text).map_err(|e| {
            Error::InvalidConfig(format!(
                "{e}; expected a JSON object with any of these fields (times in ms): {EXAMPLE}"
            ))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that every value is between 0 and 30 days; the error names the first that is not.
    pub fn validate(&self) -> Result<(), Error> {
        let fields = [
            ("gap_ms", self.gap_ms),
            ("dns_gap_ms", self.dns_gap_ms),
            ("zeek_dns_gap_ms", self.zeek_dns_gap_ms),
            ("max_span_ms", self.max_span_ms),
            ("skew_ms", self.skew_ms),
            ("reopen_ms", self.reopen_ms),
            ("dns_window_ms", self.dns_window_ms),
            ("residual_skew_ms", self.residual_skew_ms),
            ("late_flow_ms", self.late_flow_ms),
        ];
        for (name, value) in fields {
            if !(0..=MAX_MS).contains(&value) {
                return Err(Error::InvalidConfig(format!(
                    "{name} is {value}; it must be between 0 and {MAX_MS} (30 days), in milliseconds"
                )));
            }
        }
        if self.late_flow_mb > MAX_LATE_FLOW_MB {
            return Err(Error::InvalidConfig(format!(
                "late_flow_mb is {}; it must be at most {MAX_LATE_FLOW_MB} (MiB)",
                self.late_flow_mb
            )));
        }
        self.sessions().validate()
    }

    /// How long, and within how much memory, the sessionizer keeps connection stories that
    /// await their flow record.
    pub fn late_flows(&self) -> Awaiting {
        Awaiting { ms: self.late_flow_ms, max_bytes: self.late_flow_mb as usize * (1 << 20) }
    }

    /// The longest duration a flow record reaches over: its connection, up to the longer of
    /// `max_span_ms` and `late_flow_ms` (past that, the stories it would join are gone).
    pub fn flow_reach(&self) -> i64 {
        self.max_span_ms.max(self.late_flow_ms)
    }

    /// The gap ending the story of a DNS exchange of its own: `zeek_dns_gap_ms` for a record
    /// Zeek wrote, else `dns_gap_ms` with a DNS server (port 53), else `gap_ms` (other name
    /// services logged as DNS, timed as any flow). Within `gap_ms`.
    pub fn lookup_gap(&self, from_zeek: bool, port_53: bool) -> i64 {
        let gap = if from_zeek {
            self.zeek_dns_gap_ms
        } else if port_53 {
            self.dns_gap_ms
        } else {
            self.gap_ms
        };
        gap.min(self.gap_ms)
    }

    /// The sessionizer's gap: the shortest of the gaps above. Every record reaches further by
    /// what its own gap has over it ([`Config::wide`], [`Config::lookup_gap`]).
    pub fn base_gap(&self) -> i64 {
        self.dns_gap_ms.min(self.zeek_dns_gap_ms).min(self.gap_ms)
    }

    /// The reach of a record in the sessionizer, widened by what `gap_ms` has over the base
    /// gap: every record but those of a DNS exchange's own story.
    pub fn wide(&self, reach: i64) -> i64 {
        reach.saturating_add(self.gap_ms - self.base_gap())
    }

    /// The part the SDK's sessionizer uses.
    ///
    /// Its gap is the shortest, [`Config::base_gap`]: every other session's records reach
    /// [`Config::wide`] further, which makes their gap `gap_ms` again.
    pub fn sessions(&self) -> SessionConfig {
        SessionConfig {
            gap_ms: self.base_gap(),
            max_span_ms: self.max_span_ms,
            skew_ms: self.skew_ms,
            reopen_ms: self.reopen_ms,
        }
    }
}
