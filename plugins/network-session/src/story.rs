//! What a story accumulates (`SessionData`) and how it is published (`story_of`).
//!
//! Every collection is a `BTreeSet`/`BTreeMap`, so the published fields do not depend on the
//! order events arrived in, and the whole value serialises (the sessionizer snapshots it).

use std::cmp::Ordering;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use storyline_sdk::clocks::{SensorClocks, SensorId};
use storyline_sdk::community_id::proto;
use storyline_sdk::session::{Mergeable, Session};
use storyline_sdk::{Fields, Story, TimestampMs};

use crate::observe::{Endpoint, Extra, Facts, Flow};
use crate::state::is_flow_record;

/// At most this many distinct values are kept per list of a story (the smallest, so the
/// choice does not depend on arrival order). An analyst needs examples, not ten thousand URLs,
/// and the host caps the size of a plugin's output.
pub const MAX_VALUES: usize = 100;

/// What a story tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A connection, keyed by its community id, with the DNS lookups that led to it.
    #[default]
    Network,
    /// A DNS lookup that led to no connection seen in time.
    DnsLookup,
    /// An event without usable network fields.
    Event,
}

impl Kind {
    /// The story kind published.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Network => "network-session",
            Kind::DnsLookup => "dns-lookup",
            Kind::Event => "event",
        }
    }
}

/// The two addresses of a connection, in a fixed order: the key of the DNS and session
/// indexes, the same whichever side a sensor reported first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    low: IpAddr,
    high: IpAddr,
}

impl Pair {
    /// The pair of `a` and `b`, in either order.
    pub fn new(a: IpAddr, b: IpAddr) -> Pair {
        if a <= b { Pair { low: a, high: b } } else { Pair { low: b, high: a } }
    }

    /// The session key of records that name these two addresses and no ports, until a
    /// connection between them is seen: the two addresses as text (`10.0.0.5 10.0.0.9`).
    ///
    /// Built for every new connection (to gather the records of its pair filed before it),
    /// so IPv4 addresses are written by hand: `format!` of two `Ipv4Addr`s went through the
    /// formatter eight times.
    pub fn key(&self) -> String {
        let mut key = String::with_capacity(32);
        push_addr(&mut key, self.low);
        key.push(' ');
        push_addr(&mut key, self.high);
        key
    }
}

/// `ip` as its `Display` writes it.
fn push_addr(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            // Writing into a String cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Sets of at most this many values are searched by a scan (see [`SessionData::has_sensor`]).
const SCAN_MAX: usize = 8;

/// Client and server of a story, and what decided them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sides {
    client: Endpoint,
    server: Endpoint,
    /// The tuple decided (see [`Flow::by_tuple`]): every report agrees, nothing can change it.
    /// Otherwise the earliest report by (time, event id) decides, so the result does not depend
    /// on arrival order.
    decided_by: Option<(TimestampMs, String)>,
}

/// One HTTP request, as published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct HttpRecord {
    method: Option<String>,
    url: Option<String>,
    domain: Option<String>,
    status: Option<u16>,
}

/// One process, as published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct ProcessRecord {
    name: Option<String>,
    pid: Option<i64>,
}

/// What the rule keeps per story, on top of the sessionizer's ids and times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionData {
    /// What the story tells; fixed by its key.
    pub kind: Kind,
    /// Whether the session's address pair is in the pair index (done once per session).
    pub indexed: bool,
    /// IANA transport number: the first explicit one, else the first default.
    transport: Option<(u8, bool)>,
    /// Client and server.
    sides: Option<Sides>,
    /// Earliest time the connection may have started: a flow record stamped at its end with
    /// duration `d` says it started at `time - d`. Used to fit DNS lookups.
    start_lo: Option<TimestampMs>,
    /// Earliest and latest time of the DNS lookups attached. They are added to the sessionizer
    /// at a time inside the session (so that the lookup cannot move the session's own window)
    /// and widen the published first/last seen here instead.
    lookups: Option<(TimestampMs, TimestampMs)>,
    /// Sensors that reported an event.
    sensors: SortedSet<String>,
    /// Event kinds seen.
    event_kinds: SortedSet<String>,
    /// DNS question names with their answers, by name.
    dns: SortedSet<(Option<String>, SortedSet<String>)>,
    /// HTTP requests.
    http: SortedSet<HttpRecord>,
    /// TLS server names.
    tls_sni: SortedSet<String>,
    /// Processes.
    processes: SortedSet<ProcessRecord>,
    /// User names.
    users: SortedSet<String>,
    /// Host names.
    hosts: SortedSet<String>,
    /// Signatures of the alerts raised on the session.
    alerts: SortedSet<String>,
    /// Names of files seen crossing it.
    files: SortedSet<String>,
    /// The community id of its flow: the sensor's, else computed from the first record that
    /// named the transport (or implied it).
    community_id: Option<String>,
    /// The first point-in-time report: its sensor and its time by that sensor's clock. Other
    /// sensors' first reports are measured against it (see `SensorClocks`).
    anchor: Option<(SensorId, TimestampMs)>,
    /// The flow records of it, by sensor and direction (source the lower endpoint): a sensor
    /// reports a connection once per direction at most.
    flows: SortedSet<(SensorId, bool)>,
}

/// [`SessionData`] as snapshots of format versions 1 and 2 hold it (before alerts, files and
/// the community id were kept): read, then converted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionDataV2 {
    kind: Kind,
    indexed: bool,
    transport: Option<(u8, bool)>,
    sides: Option<Sides>,
    start_lo: Option<TimestampMs>,
    lookups: Option<(TimestampMs, TimestampMs)>,
    sensors: SortedSet<String>,
    event_kinds: SortedSet<String>,
    dns: SortedSet<(Option<String>, SortedSet<String>)>,
    http: SortedSet<HttpRecord>,
    tls_sni: SortedSet<String>,
    processes: SortedSet<ProcessRecord>,
    users: SortedSet<String>,
    hosts: SortedSet<String>,
}

impl SessionDataV2 {
    /// The session's key today: its tuple (it was the community id), else the key it had.
    pub fn new_key(&self, key: &str) -> String {
        let tuple = self.sides.as_ref().and_then(|s| {
            let flow = Flow { client: s.client, server: s.server, by_tuple: true };
            crate::observe::tuple_key(&flow, self.transport.map(|(t, _)| t))
        });
        match self.kind {
            Kind::Network | Kind::DnsLookup => tuple.unwrap_or_else(|| key.to_owned()),
            Kind::Event => key.to_owned(),
        }
    }

    /// The address pair the session was indexed under, if it was.
    pub fn indexed_pair(&self) -> Option<Pair> {
        let s = self.sides.as_ref().filter(|_| self.indexed)?;
        Some(Pair::new(s.client.ip, s.server.ip))
    }

    /// The data in today's shape; `key` is the session's key, which was its community id.
    pub fn upgrade(self, key: &str) -> SessionData {
        let community_id = match self.kind {
            Kind::Network => Some(key.to_owned()),
            Kind::DnsLookup => key.strip_prefix("dns:").map(str::to_owned),
            Kind::Event => None,
        };
        SessionData {
            kind: self.kind,
            indexed: self.indexed,
            transport: self.transport,
            sides: self.sides,
            start_lo: self.start_lo,
            lookups: self.lookups,
            sensors: self.sensors,
            event_kinds: self.event_kinds,
            dns: self.dns,
            http: self.http,
            tls_sni: self.tls_sni,
            processes: self.processes,
            users: self.users,
            hosts: self.hosts,
            alerts: SortedSet::default(),
            files: SortedSet::default(),
            community_id,
            anchor: None,
            flows: SortedSet::default(),
        }
    }
}

/// A set of at most [`MAX_VALUES`] values (the smallest) kept as a sorted vector. A story's
/// sets hold a handful of values, for which a B-tree node (hundreds of bytes, allocated even for
/// one value) costs more memory and time than the values; a session's state is kept for ten
/// minutes after publication, so its size is what limits how many a tenant can hold. Serialised
/// as a sorted sequence, byte for byte what a `BTreeSet` (or, of pairs, a `BTreeMap`) writes,
/// so snapshots taken before read alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SortedSet<T>(Vec<T>);

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet(Vec::new())
    }
}

impl<T> SortedSet<T> {
    /// The values, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Finds the value that `cmp` locates (it orders a value against the one sought) or inserts
    /// the one `make` builds, built only when kept. Returns it, or `None` when the set is full
    /// of smaller values.
    fn find_or_insert(
        &mut self,
        cmp: impl FnMut(&T) -> Ordering,
        make: impl FnOnce() -> T,
    ) -> Option<&mut T> {
        let i = match self.0.binary_search_by(cmp) {
            Ok(i) => i,
            Err(i) if i >= MAX_VALUES => return None,
            Err(i) => {
                // Grown one by one: most sets hold one to three values, and a vector's first
                // allocation would otherwise be room for four.
                self.0.reserve_exact(1);
                self.0.insert(i, make());
                self.0.truncate(MAX_VALUES);
                i
            }
        };
        self.0.get_mut(i)
    }
}

impl<T: Ord> SortedSet<T> {
    /// Inserts `value` unless present (or the set is full of smaller values).
    fn insert(&mut self, value: T) {
        if let Err(i) = self.0.binary_search(&value)
            && i < MAX_VALUES
        {
            self.0.reserve_exact(1);
            self.0.insert(i, value);
            self.0.truncate(MAX_VALUES);
        }
    }
}

/// Inserts `value` unless present, allocating only when it is kept.
fn insert_text(set: &mut SortedSet<String>, value: &str) {
    set.find_or_insert(|x| x.as_str().cmp(value), || value.to_owned());
}

impl SessionData {
    /// Adds what one event says to the story's fields.
    pub fn merge(&mut self, facts: &Facts<'_>) {
        insert_text(&mut self.sensors, &facts.sensor);
        insert_text(&mut self.event_kinds, &facts.kind);
        if let Some(d) = &facts.dns {
            let name = d.name.as_deref();
            // Like every other list: when full, only a name smaller than the largest gets in.
            let entry = self.dns.find_or_insert(
                |(n, _)| n.as_deref().cmp(&name),
                || (name.map(str::to_owned), SortedSet::default()),
            );
            if let Some((_, answers)) = entry {
                for a in &d.answers {
                    insert_text(answers, a);
                }
            }
        }
        if let Some(h) = &facts.http {
            self.http.insert(HttpRecord {
                method: h.method.as_deref().map(str::to_owned),
                url: h.url.as_deref().map(str::to_owned),
                domain: h.domain.as_deref().map(str::to_owned),
                status: h.status,
            });
        }
        if let Some(sni) = &facts.sni {
            insert_text(&mut self.tls_sni, sni);
        }
        if let Some(p) = &facts.process {
            self.processes
                .insert(ProcessRecord { name: p.name.as_deref().map(str::to_owned), pid: p.pid });
        }
        if let Some(u) = &facts.user {
            insert_text(&mut self.users, u);
        }
        if let Some(h) = &facts.host {
            insert_text(&mut self.hosts, h);
        }
    }

    /// Adds an event's alert signature and file name.
    pub fn merge_extra(&mut self, extra: &Extra<'_>) {
        if let Some(a) = &extra.alert {
            insert_text(&mut self.alerts, a);
        }
        if let Some(f) = &extra.file {
            insert_text(&mut self.files, f);
        }
    }

    /// Whether it is a connection that no flow record has joined yet: its sensor may write one
    /// when the connection ends, long after (see `Config::late_flow_ms`). Told by the events'
    /// kinds, so that it holds whatever `one_flow_record_per_connection` says.
    pub fn awaits_flow_record(&self) -> bool {
        self.kind == Kind::Network && !self.has_flow_record_kind()
    }

    /// Whether a flow record (of any sensor) is among its events.
    pub fn has_flow_record_kind(&self) -> bool {
        self.event_kinds.iter().any(|k| is_flow_record(k))
    }

    /// Whether a sensor sent a flow record of this story in a direction.
    pub fn has_flow_record(&self, record: (SensorId, bool)) -> bool {
        self.flows.0.binary_search(&record).is_ok()
    }

    /// Records that a sensor sent a flow record of this story in a direction.
    pub fn add_flow_record(&mut self, record: (SensorId, bool)) {
        self.flows.insert(record);
    }

    /// Whether every event of this story so far came from `sensor`.
    pub fn only_sensor(&self, sensor: &str) -> bool {
        matches!(self.sensors.0.as_slice(), [only] if only == sensor)
    }

    /// Whether `sensor` reported an event of this story already.
    ///
    /// Asked for every connection record and for every learned offset of every story
    /// published. A story has a handful of sensors: a scan by equality (which compares the
    /// lengths first, and sensor names mostly differ in length) costs less than a binary
    /// search, whose every step is a full comparison of the names.
    pub fn has_sensor(&self, sensor: &str) -> bool {
        let sensors = &self.sensors.0;
        if sensors.len() <= SCAN_MAX {
            sensors.iter().any(|s| s == sensor)
        } else {
            sensors.binary_search_by(|s| s.as_str().cmp(sensor)).is_ok()
        }
    }

    /// The story's first point-in-time report: sensor and raw time.
    pub fn anchor(&self) -> Option<(SensorId, TimestampMs)> {
        self.anchor
    }

    /// Sets the first point-in-time report.
    pub fn set_anchor(&mut self, sensor: SensorId, raw: TimestampMs) {
        self.anchor = Some((sensor, raw));
    }

    /// Whether the community id is still to be found (computing one costs a SHA-1).
    pub fn wants_community_id(&self) -> bool {
        self.community_id.is_none()
    }

    /// The flow's community id, once known.
    pub fn community_id(&self) -> Option<&str> {
        self.community_id.as_deref()
    }

    /// Records the flow's community id, the first one found.
    pub fn set_community_id(&mut self, id: &str) {
        if self.community_id.is_none() {
            self.community_id = Some(id.to_owned());
        }
    }

    /// Records the transport: an explicit one (from `network.transport`) wins over a default.
    pub fn set_transport(&mut self, transport: Option<u8>, explicit: bool) {
        let Some(t) = transport else { return };
        match self.transport {
            None => self.transport = Some((t, explicit)),
            Some((_, false)) if explicit => self.transport = Some((t, true)),
            _ => {}
        }
    }

    /// Records client and server as one event at `time` reports them. Deterministic whatever
    /// the arrival order: a decision by the tuple is final; otherwise the earliest report (by
    /// time, then event id) decides.
    pub fn observe_sides(&mut self, flow: &Flow, time: TimestampMs, event_id: &str) {
        let replace = match &self.sides {
            None => true,
            Some(Sides { decided_by: None, .. }) => false,
            Some(Sides { decided_by: Some((t, id)), .. }) => {
                flow.by_tuple || (time, event_id) < (*t, id.as_str())
            }
        };
        if replace {
            self.sides = Some(Sides {
                client: flow.client,
                server: flow.server,
                decided_by: (!flow.by_tuple).then(|| (time, event_id.to_owned())),
            });
        }
    }

    /// Records that the connection was seen at `time` by a record covering `reach_ms`.
    pub fn observe_connection(&mut self, time: TimestampMs, reach_ms: i64) {
        let start = time.saturating_sub(reach_ms);
        self.start_lo = Some(self.start_lo.map_or(start, |s| s.min(start)));
    }

    /// The earliest time the connection may have started, given the session's first event.
    pub fn start_lo(&self, first_seen: TimestampMs) -> TimestampMs {
        self.start_lo.map_or(first_seen, |s| s.min(first_seen))
    }

    /// Records the time of an attached DNS lookup.
    pub fn add_lookup_time(&mut self, time: TimestampMs) {
        self.lookups = Some(self.lookups.map_or((time, time), |(a, b)| (a.min(time), b.max(time))));
    }

    /// Whether a DNS lookup is attached.
    pub fn has_lookup(&self) -> bool {
        self.lookups.is_some()
    }

    /// The address pair of the connection, once an event named both addresses.
    pub fn pair(&self) -> Option<Pair> {
        self.sides.as_ref().map(|s| Pair::new(s.client.ip, s.server.ip))
    }

    /// The published fields.
    ///
    /// Written straight into JSON text, keys in alphabetical order (objects too), without
    /// building `serde_json::Value`s: this runs for every publication.
    pub fn fields(&self, clocks: &SensorClocks) -> Fields {
        let community_id = self.community_id.as_deref();
        let sides = self.sides.as_ref();
        let dns = Seq(|| {
            self.dns.iter().map(|(name, answers)| DnsOut { answers, name: name.as_deref() })
        });
        let http = Seq(|| {
            self.http.iter().map(|h| HttpOut {
                domain: h.domain.as_deref(),
                method: h.method.as_deref(),
                status: h.status,
                url: h.url.as_deref(),
            })
        });
        // The learned offsets of the story's sensors: what its times were corrected by.
        let offsets = Offsets(|| clocks.offsets().filter(|(sensor, _)| self.has_sensor(sensor)));
        Fields::builder()
            .field("alerts", &self.alerts)
            .field("client", &sides.map(|s| EndpointOut::of(&s.client)))
            .field("clock_offsets_ms", &offsets)
            .field("community_id", &community_id)
            .field("dns", &dns)
            .field("event_kinds", &self.event_kinds)
            .field("files", &self.files)
            .field("hosts", &self.hosts)
            .field("http", &http)
            .field("processes", &self.processes)
            .field("sensors", &self.sensors)
            .field("server", &sides.map(|s| EndpointOut::of(&s.server)))
            .field("tls_sni", &self.tls_sni)
            .field("transport", &self.transport.map(|(t, _)| TransportName(t)))
            .field("users", &self.users)
            .finish()
    }
}

impl SortedSet<String> {
    /// Adds every value of `other`.
    fn union(&mut self, other: SortedSet<String>) {
        for v in other.0 {
            insert_text(self, &v);
        }
    }
}

/// Two sessions of one tuple that an event bridged become one: everything either told.
/// Symmetric, so the story does not depend on which session was kept.
impl Mergeable for SessionData {
    fn merge_from(&mut self, other: SessionData) {
        // A connection outranks a lone lookup, which outranks an event without network fields.
        let rank = |k: Kind| match k {
            Kind::Network => 0,
            Kind::DnsLookup => 1,
            Kind::Event => 2,
        };
        if rank(other.kind) < rank(self.kind) {
            self.kind = other.kind;
        }
        self.indexed |= other.indexed;
        match (self.transport, other.transport) {
            (None, t) => self.transport = t,
            (Some((_, false)), Some((t, true))) => self.transport = Some((t, true)),
            (Some((a, e)), Some((b, f))) if e == f && b < a => self.transport = Some((b, f)),
            _ => {}
        }
        match (&self.sides, other.sides) {
            (None, o) => self.sides = o,
            (Some(mine), Some(theirs)) => {
                // A decision by the tuple is final; between two by report, the earlier report.
                let take = match (&mine.decided_by, &theirs.decided_by) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(a), Some(b)) => b < a,
                };
                if take {
                    self.sides = Some(theirs);
                }
            }
            (Some(_), None) => {}
        }
        self.start_lo = match (self.start_lo, other.start_lo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.lookups = match (self.lookups, other.lookups) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (a, b) => a.or(b),
        };
        self.sensors.union(other.sensors);
        self.event_kinds.union(other.event_kinds);
        for (name, answers) in other.dns.0 {
            let entry = self.dns.find_or_insert(
                |(n, _)| n.as_deref().cmp(&name.as_deref()),
                || (name.clone(), SortedSet::default()),
            );
            if let Some((_, mine)) = entry {
                mine.union(answers);
            }
        }
        for h in other.http.0 {
            self.http.insert(h);
        }
        self.tls_sni.union(other.tls_sni);
        for p in other.processes.0 {
            self.processes.insert(p);
        }
        self.users.union(other.users);
        self.hosts.union(other.hosts);
        self.alerts.union(other.alerts);
        self.files.union(other.files);
        self.community_id = match (self.community_id.take(), other.community_id) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The earlier first report anchors clock measurements.
        self.anchor = match (self.anchor, other.anchor) {
            (Some(a), Some(b)) => Some(if (b.1, b.0) < (a.1, a.0) { b } else { a }),
            (a, b) => a.or(b),
        };
        for f in other.flows.0 {
            self.flows.insert(f);
        }
    }

    /// Two sessions that each hold a flow record of one sensor in one direction are two
    /// connections.
    fn can_merge(&self, other: &SessionData) -> bool {
        !other.flows.iter().any(|f| self.has_flow_record(*f))
    }
}

/// A connection side as published: `{"ip": "10.0.0.5", "port": 51514}`.
#[derive(Serialize)]
struct EndpointOut {
    ip: IpAddr,
    port: Option<u16>,
}

impl EndpointOut {
    fn of(e: &Endpoint) -> EndpointOut {
        EndpointOut { ip: e.ip, port: e.port }
    }
}

/// A DNS question as published: `{"answers": [...], "name": "..."}`.
#[derive(Serialize)]
struct DnsOut<'a> {
    answers: &'a SortedSet<String>,
    name: Option<&'a str>,
}

/// An HTTP request as published (keys in alphabetical order, unlike [`HttpRecord`], whose
/// field order is its sort order and its snapshot format).
#[derive(Serialize)]
struct HttpOut<'a> {
    domain: Option<&'a str>,
    method: Option<&'a str>,
    status: Option<u16>,
    url: Option<&'a str>,
}

/// A map of sensor → offset serialised from an iterator, without collecting it.
struct Offsets<F>(F);

impl<'a, F: Fn() -> I, I: Iterator<Item = (&'a str, i64)>> Serialize for Offsets<F> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // By sensor name, as every other object of the fields: the clocks list sensors in the
        // order they were first seen, which depends on arrival.
        let mut offsets: Vec<(&str, i64)> = (self.0)().collect();
        offsets.sort_unstable();
        serializer.collect_map(offsets)
    }
}

/// A sequence serialised from an iterator, without collecting it.
struct Seq<F>(F);

impl<F: Fn() -> I, I: Iterator<Item = T>, T: Serialize> Serialize for Seq<F> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

/// `tcp`, `udp`, ... as ECS writes `network.transport`; other protocols by number, as text.
struct TransportName(u8);

impl Serialize for TransportName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            proto::TCP => serializer.serialize_str("tcp"),
            proto::UDP => serializer.serialize_str("udp"),
            proto::ICMP => serializer.serialize_str("icmp"),
            proto::ICMPV6 => serializer.serialize_str("ipv6-icmp"),
            proto::SCTP => serializer.serialize_str("sctp"),
            other => serializer.collect_str(&other),
        }
    }
}

/// The story of a session, as published.
pub fn story_of(session: &Session<SessionData>, clocks: &SensorClocks) -> Story {
    let d = &session.data;
    let mut story = session.story(d.kind.name());
    if let Some((first, last)) = d.lookups {
        story.first_seen = story.first_seen.min(first);
        story.last_seen = story.last_seen.max(last);
    }
    story.fields = d.fields(clocks);
    story
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_offsets_are_written_by_sensor_name_whatever_order_the_sensors_came_in() {
        let offsets = super::Offsets(|| [("zeek", 5), ("fw", -3), ("dns", 0)].into_iter());
        assert_eq!(serde_json::to_string(&offsets).unwrap(), r#"{"dns":0,"fw":-3,"zeek":5}"#);
    }

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn pair_keys_write_addresses_as_display_does() {
        let v4 = |a, b, c, d| IpAddr::from([a, b, c, d]);
        let mut addrs: Vec<IpAddr> = Vec::new();
        for o in [0u8, 1, 9, 10, 99, 100, 109, 110, 199, 200, 255] {
            addrs.extend([v4(o, 0, 0, 0), v4(10, o, 1, o), v4(255, 255, o, 0), v4(1, 2, 3, o)]);
        }
        addrs.extend(
            ["::", "::1", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1", "fe80::1"]
                .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        for &a in &addrs {
            for &b in &addrs[..8] {
                let pair = Pair::new(a, b);
                assert_eq!(pair.key(), format!("{} {}", pair.low, pair.high));
            }
        }
    }

    #[test]
    fn has_sensor_answers_alike_for_small_and_large_sets() {
        for n in [0usize, 1, 3, SCAN_MAX, SCAN_MAX + 1, 40] {
            let mut d = SessionData::default();
            for i in 0..n {
                insert_text(&mut d.sensors, &format!("sensor-{i:02}"));
            }
            for i in 0..n + 2 {
                let name = format!("sensor-{i:02}");
                assert_eq!(d.has_sensor(&name), i < n, "{name} among {n}");
            }
            assert!(!d.has_sensor("sensor-"), "a prefix is not a sensor");
        }
    }

    #[test]
    fn sorted_sets_keep_the_smallest_values_and_serialise_like_btree_collections() {
        let mut set = SortedSet::default();
        let mut reference = BTreeSet::new();
        for i in (0..250).rev().chain(0..250) {
            let v = format!("v{:03}", (i * 37) % 250);
            insert_text(&mut set, &v);
            reference.insert(v);
        }
        let reference: BTreeSet<String> = reference.into_iter().take(MAX_VALUES).collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), reference.iter().collect::<Vec<_>>());
        assert_eq!(
            postcard::to_allocvec(&set).unwrap(),
            postcard::to_allocvec(&reference).unwrap()
        );

        // DNS names with their answers: a map before, sorted pairs now; the same bytes.
        let mut d = SessionData::default();
        let mut map: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
        for (name, answer) in [(Some("b"), "2"), (None, "0"), (Some("a"), "1"), (Some("b"), "3")] {
            let facts = Facts {
                dns: Some(crate::observe::DnsFacts {
                    name: name.map(Into::into),
                    answers: vec![answer.into()],
                }),
                ..Facts::default()
            };
            d.merge(&facts);
            map.entry(name.map(str::to_owned)).or_default().insert(answer.to_owned());
        }
        assert_eq!(postcard::to_allocvec(&d.dns).unwrap(), postcard::to_allocvec(&map).unwrap());
        let back: SortedSet<(Option<String>, SortedSet<String>)> =
            postcard::from_bytes(&postcard::to_allocvec(&map).unwrap()).unwrap();
        assert_eq!(back, d.dns);
    }
}
