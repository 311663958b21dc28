//! The rule itself: how each event joins a story, over state that survives snapshots.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use storyline_sdk::clocks::{SensorClocks, SensorId};
use storyline_sdk::ecs::{EcsEvent, Zeek};
use storyline_sdk::session::{Awaiting, Sessionizer};
use storyline_sdk::{Error, Event, Story, TimestampMs};

use crate::config::Config;
use crate::lookups::{Lookup, Lookups};
use crate::observe::{self, Class, Extra, Facts, Flow};
use crate::pairs::{IdIndex, PairIndex};
use crate::story::{Kind, Pair, SessionData, SessionDataV2, story_of};

/// Version of the snapshot format, its first byte. Bump it when [`State`] changes shape, and
/// keep reading the older versions the host may still hold. 2: the sessionizer keeps published
/// sessions encoded (version 1 is read too: the sessionizer reads its first layout). 3: a
/// story keeps alerts, files and its community id (its key is now the flow's tuple); versions
/// 1 and 2 are read as [`StateV2`] and converted.
/// 4: the file ids of connections ([`State::files`]); version 3 is read as [`StateV3`].
const STATE_VERSION: u8 = 4;

/// HTTP, SMTP and FTP records looked at for file lists before giving up the look (see
/// [`State::look_for_file_refs`]).
const FILE_REF_LOOKS: u32 = 10_000;

/// Sessions of a file whose connection is not known yet are keyed `file:<id>`.
const FILE_PREFIX: &str = "file:";

/// The oldest version [`State::decode`] reads.
const OLDEST_VERSION: u8 = 1;

/// Latest time the rule believes, ±: 9999-12-31T23:59:59.999Z. Times beyond it are clamped to
/// it, so that the window sums of the sessionizer (`time ± gap + skew + reach`) cannot overflow
/// on an absurd timestamp; such an event still lands in a story.
const MAX_TIME: TimestampMs = 253_402_300_799_999;

/// An event time or watermark clamped to ±[`MAX_TIME`].
pub fn sane_time(t: TimestampMs) -> TimestampMs {
    t.clamp(-MAX_TIME, MAX_TIME)
}

/// Everything kept across buckets. One value, so that a snapshot is consistent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Stories by key: connections by community id, lone lookups by `dns:<community id>`,
    /// events without network fields by `event:<id>`.
    sessions: Sessionizer<SessionData>,
    /// DNS lookups waiting for their connection.
    lookups: Lookups,
    /// Address pair → connection keys, to find a lookup's connection.
    pairs: PairIndex,
    /// Community id → connection key, for records that name only the community id.
    communities: IdIndex,
    /// Every sensor's clock against the others', learned from the connections they share.
    clocks: SensorClocks,
    /// File id → key of the connection whose record listed it (Zeek's `http` records list the
    /// files their transaction carried): a `files` record, which names the two addresses but
    /// not the ports, finds its own connection among the many a busy address pair has.
    files: IdIndex,
    /// `residual_skew_ms` of the configuration (set by `new` and `decode`).
    #[serde(skip)]
    residual_ms: i64,
    /// The offsets last logged, to log a sensor's offset when it is learned or moves (not kept
    /// in snapshots: a restored instance logs them once more).
    #[serde(skip)]
    logged: BTreeMap<String, i64>,
    /// The sensors seen writing Zeek's records (`event.module: zeek`), for the lookups that
    /// wait: Zeek's DNS timing applies to theirs. Not in snapshots: the next record of each
    /// says it again.
    #[serde(skip)]
    zeek_sensors: BTreeSet<String>,
    /// How long and within how much memory stories wait for their flow record (the
    /// configuration's), once `flows_seen`.
    #[serde(skip)]
    late_flows: Awaiting,
    /// Whether a flow record was seen: until one is, no story waits for one, so sensors that
    /// write none (logs of TLS, DNS or SMB only) keep nothing longer. Not in snapshots: a state
    /// with stories waiting saw one (see [`State::decode`]).
    #[serde(skip)]
    flows_seen: bool,
    /// Whether a record listing files was seen: from then on a file record whose connection is
    /// not known yet waits for the record that lists it, rather than joining a connection of
    /// its address pair. Not in snapshots: `files` says it.
    #[serde(skip)]
    file_refs_seen: bool,
    /// Records looked at for file lists before any was seen (see `look_for_file_refs`).
    #[serde(skip)]
    file_ref_looks: u32,
}

impl State {
    /// Empty state.
    pub fn new(config: &Config) -> State {
        let mut sessions = Sessionizer::new(config.sessions());
        sessions.set_awaiting(Awaiting::default(), SessionData::awaits_flow_record);
        State {
            sessions,
            lookups: Lookups::default(),
            pairs: PairIndex::default(),
            communities: IdIndex::default(),
            clocks: SensorClocks::default(),
            files: IdIndex::default(),
            residual_ms: config.residual_skew_ms.min(config.skew_ms),
            logged: BTreeMap::new(),
            zeek_sensors: BTreeSet::new(),
            late_flows: config.late_flows(),
            flows_seen: false,
            file_refs_seen: false,
            file_ref_looks: 0,
        }
    }

    /// Adds one event. `ecs` is its payload, parsed once (empty when unreadable).
    ///
    /// Every event that names both addresses joins the session of its tuple, whatever its
    /// kind: its kind and fields only decide what it adds to the story. DNS lookups are the
    /// one exception: one whose own exchange no sensor reported as a flow joins the
    /// connection its answer led to (see `lookups`).
    pub fn add(&mut self, cfg: &Config, event: &Event, ecs: &EcsEvent<'_>, watermark: TimestampMs) {
        let raw = sane_time(event.event_time);
        let sensor = self.clocks.sensor(&event.source);
        // Every time-based decision is taken on one clock: the sensor's learned offset is
        // taken out, and a sensor whose clock is known needs only the residual tolerance.
        let (time, calibrated) = self.clocks.correct(sensor, raw);
        let time = sane_time(time);
        let skew = if self.clocks.len() == 1 {
            // One sensor so far: one clock, compared with itself.
            0
        } else if calibrated {
            cfg.residual_skew_ms.min(cfg.skew_ms)
        } else {
            cfg.skew_ms
        };
        if !self.flows_seen && is_flow_record(&event.kind) {
            self.flows_seen = true;
            self.sessions.set_awaiting(self.late_flows, SessionData::awaits_flow_record);
        }
        let class = observe::class(&event.kind, ecs);
        let transport = observe::transport(ecs, class);
        let explicit = ecs.transport().is_some();
        let flow = observe::flow(ecs, transport);
        let facts = observe::facts(event, ecs);
        let extra = observe::extra(&event.kind, ecs);
        let tuple = flow.as_ref().and_then(|f| observe::tuple_key(f, transport));
        let reach = ecs.duration_ms().min(cfg.flow_reach());
        let connection = Connection {
            event,
            ecs,
            time,
            clock: Clock { sensor, raw, skew },
            flow,
            transport,
            explicit,
            reach,
        };
        if ecs.from_zeek() && !self.zeek_sensors.contains(event.source.as_str()) {
            self.zeek_sensors.insert(event.source.clone());
        }
        if class == Class::Dns {
            // A lookup whose own exchange a sensor reported as a flow belongs with that flow:
            // the tuple is stronger evidence than the answer.
            if let Some(key) = &tuple
                && self.has_connection(key, time)
            {
                self.add_connection(cfg, key, &connection, (&facts, &extra), watermark);
                return;
            }
            let own_key = tuple.unwrap_or_else(|| format!("dns-event:{}", event.id));
            let transport = transport.map(|t| (t, explicit));
            let client = flow.map(|f| f.client.ip).or_else(|| ecs.source_addr().map(|(ip, _)| ip));
            let answers = ecs.dns_answer_ips();
            match client {
                Some(client) if !answers.is_empty() && cfg.dns_joins_connection => {
                    let lookup = Lookup {
                        event_id: event.id.clone(),
                        // By the resolver's clock: corrected when used, so that a clock learned
                        // while the lookup waits already counts when it settles.
                        time: raw,
                        client,
                        answers,
                        own_key,
                        flow,
                        transport,
                        facts: facts.into_owned(),
                    };
                    self.add_lookup(cfg, lookup, watermark);
                }
                // No answered address (or no client) to find a connection by: a story of its
                // own, joined by other records of the same lookup (query and response logged
                // apart share the lookup's tuple) and by the flow of its exchange.
                _ => {
                    let origin = Origin {
                        key: &own_key,
                        event_id: &event.id,
                        time,
                        skew,
                        flow: flow.as_ref(),
                        transport,
                        from_zeek: ecs.from_zeek(),
                    };
                    self.add_lookup_story(cfg, &origin, &facts, watermark);
                }
            }
            return;
        }
        let key = match (tuple, &flow) {
            (Some(key), _) => key,
            // Both addresses but no ports: the connection that listed its file, else the
            // connection of the address pair it fits, else a session of the pair.
            (None, Some(f)) => self.file_key(ecs).unwrap_or_else(|| {
                self.pair_connection(f, time).unwrap_or_else(|| observe::pair_key(f))
            }),
            (None, None) if let Some(key) = self.file_key(ecs) => key,
            (None, None) => {
                let given = ecs.network.as_ref().and_then(|n| n.community_id.as_deref());
                match given.filter(|id| !id.is_empty()) {
                    // The connection that has this community id, else a session of the id.
                    Some(id) => self.communities.get(id).unwrap_or(id).to_owned(),
                    None => {
                        let key = format!("event:{}", event.id);
                        let wide = cfg.wide(0);
                        let session =
                            self.sessions.add_within(&key, &event.id, time, wide, skew, watermark);
                        session.data.kind = Kind::Event;
                        session.data.merge(&facts);
                        session.data.merge_extra(&extra);
                        return;
                    }
                }
            }
        };
        self.add_connection(cfg, &key, &connection, (&facts, &extra), watermark);
        if let Some(zeek) = &ecs.zeek {
            self.index_files(zeek, &key, time);
        }
    }

    /// Whether a record listing files was seen (or announced).
    pub fn file_refs_seen(&self) -> bool {
        self.file_refs_seen
    }

    /// Whether one of `events` may list files, while the look is worth it: the first
    /// [`FILE_REF_LOOKS`] candidates (HTTP, SMTP and FTP records) are looked at, then no more
    /// (a record that lists files still says so when it is placed; only the order within its
    /// bucket may then matter).
    pub fn look_for_file_refs(&mut self, events: &[Event]) -> bool {
        if self.file_ref_looks >= FILE_REF_LOOKS {
            return false;
        }
        for event in events {
            if !observe::may_carry_files(event) {
                continue;
            }
            self.file_ref_looks += 1;
            if observe::lists_files(event) {
                return true;
            }
            if self.file_ref_looks >= FILE_REF_LOOKS {
                return false;
            }
        }
        false
    }

    /// Records listing files are coming: file records wait for theirs from now on.
    pub fn expect_file_refs(&mut self) {
        self.file_refs_seen = true;
    }

    /// Where a record of a file goes by the file's id: the connection that listed the file,
    /// else (once records listing files are seen) a session of the file's own, which that
    /// connection gathers when its record comes. `None` for a record of no file, or while no
    /// record listed files (then the address pair decides, as for any record without ports).
    fn file_key(&self, ecs: &EcsEvent<'_>) -> Option<String> {
        let id = ecs.zeek.as_ref()?.file_id()?;
        if let Some(key) = self.files.get(id) {
            return Some(key.to_owned());
        }
        self.file_refs_seen.then(|| format!("{FILE_PREFIX}{id}"))
    }

    /// Records the files a connection's record lists, and gathers those that came first.
    fn index_files(&mut self, zeek: &Zeek<'_>, key: &str, time: TimestampMs) {
        if key.starts_with(FILE_PREFIX) {
            return;
        }
        for id in zeek.file_refs() {
            self.file_refs_seen = true;
            self.files.insert(id, key);
            self.sessions.absorb(&format!("{FILE_PREFIX}{id}"), time, key, time);
        }
    }

    /// How far the clock of an event at `time` from `sensor` may be off against the session of
    /// `key` it would join: `skew` (the configured skew, or the residual once the sensor's clock
    /// is learned), but none when that session holds only this sensor's records: one clock
    /// compared with itself. A sensor whose records never meet another's (Zeek's
    /// `ntp` or `syslog` without `conn`) then splits a reused tuple on the gap alone, as the
    /// sensor itself does.
    fn skew_for(&self, key: &str, t: TimestampMs, reach: i64, sensor: &str, skew: i64) -> i64 {
        // Only a sensor whose clock is not known yet is worth the look-up: a known one needs
        // the residual only, which is small enough.
        if skew <= self.residual_ms || !self.sessions.contains_key(key) {
            return skew;
        }
        match self.sessions.find(key, t, reach) {
            // One clock compared with itself.
            Some(s) if s.data.only_sensor(sensor) => 0,
            _ => skew,
        }
    }

    /// Whether a connection of `key` is seen around `time`.
    fn has_connection(&self, key: &str, time: TimestampMs) -> bool {
        self.sessions.contains_key(key)
            && self.sessions.find(key, time, 0).is_some_and(|s| s.data.kind == Kind::Network)
    }

    /// The key of the connection of `flow`'s address pair nearest `time`, for a record that
    /// names the addresses but not the ports (a file seen between two hosts, an endpoint event).
    fn pair_connection(&self, flow: &Flow, time: TimestampMs) -> Option<String> {
        let pair = Pair::new(flow.client.ip, flow.server.ip);
        let mut best: Option<(i64, &String)> = None;
        for key in self.pairs.keys(pair) {
            let Some(s) = self.sessions.find(key, time, 0) else { continue };
            if s.data.kind != Kind::Network {
                continue;
            }
            let distance =
                if time < s.first_seen { s.first_seen - time } else { (time - s.last_seen).max(0) };
            if best.is_none_or(|(d, k)| (distance, key) < (d, k)) {
                best = Some((distance, key));
            }
        }
        best.map(|(_, k)| k.clone())
    }

    /// Adds an event that reports a connection, then attaches the DNS lookups that were
    /// waiting for it: those that led to it, and those whose own exchange it is.
    fn add_connection(
        &mut self,
        cfg: &Config,
        key: &str,
        c: &Connection<'_>,
        (facts, extra): (&Facts<'_>, &Extra<'_>),
        watermark: TimestampMs,
    ) {
        let time = c.time;
        // Every record but a DNS exchange's own reaches further by what `gap_ms` has over the
        // sessionizer's gap (`dns_gap_ms`).
        let reach = cfg.wide(c.reach);
        let skew = self.skew_for(key, time, reach, &c.event.source, c.clock.skew);
        // A sensor reports a connection in one flow record (or one per direction): its second
        // flow record of a tuple in the same direction is another connection (a port reused
        // seconds after the first closed), never the same.
        let flow = (cfg.one_flow_record_per_connection && is_flow_record(&c.event.kind))
            .then(|| (c.clock.sensor, reported_upward(c.ecs)));
        let session = self.sessions.add_where(
            key,
            &c.event.id,
            (time, reach, skew),
            watermark,
            |d: &SessionData| flow.is_none_or(|f| !d.has_flow_record(f)),
        );
        let d = &mut session.data;
        if let Some(f) = flow {
            d.add_flow_record(f);
        }
        // Two sensors' reports of one connection measure their clocks' difference: the first
        // report of each sensor against the session's first point-in-time report (records that
        // cover a duration may be stamped at either end, so they measure nothing).
        if c.reach <= POINT_MS && !d.has_sensor(&c.event.source) {
            match d.anchor() {
                Some((other, at)) => self.clocks.observe(c.clock.sensor, c.clock.raw, other, at),
                None => d.set_anchor(c.clock.sensor, c.clock.raw),
            }
        }
        d.kind = Kind::Network;
        d.merge(facts);
        d.merge_extra(extra);
        d.set_transport(c.transport, c.explicit);
        d.observe_connection(time, c.reach);
        if let Some(f) = &c.flow {
            d.observe_sides(f, time, &c.event.id);
            if d.wants_community_id()
                && let Some(id) = observe::community_id_of(c.ecs, c.transport)
            {
                d.set_community_id(&id);
                self.communities.insert(&id, key);
            }
        }
        // A file's own session waits to be gathered by the connection that lists the file: it
        // is no connection of its address pair.
        let pair = if key.starts_with(FILE_PREFIX) { None } else { d.pair() };
        let newly_indexed = pair.is_some() && !std::mem::replace(&mut d.indexed, true);
        let has_lookup = d.has_lookup();
        let (mut first, mut last) = (session.first_seen, session.last_seen);
        let mut start_lo = session.data.start_lo(first);
        let mut grew = false;
        for lookup in self.lookups.take_own(key) {
            let (at, skew) = corrected_within(cfg, &self.clocks, &lookup);
            let session = self.sessions.add_within(key, &lookup.event_id, at, 0, skew, watermark);
            session.data.merge(&lookup.facts);
            grew = true;
        }
        let Some(pair) = pair else { return };
        if newly_indexed {
            self.pairs.insert(pair, key);
            // Records of these addresses without ports that came first wait under the pair's
            // key: they belong to this connection.
            grew |= self.sessions.absorb(&pair.key(), time, key, time);
        }
        if grew {
            let Some(session) = self.sessions.find_mut(key, time, reach) else { return };
            (first, last) = (session.first_seen, session.last_seen);
            start_lo = session.data.start_lo(first);
        }
        // A connection follows one lookup: take the waiting one closest in time, and leave any
        // other to a connection of its own that may still come (it falls back to this one when
        // its wait is over, see `settle_lookup`).
        if has_lookup || !self.lookups.any_for(pair) {
            return;
        }
        let clocks = &self.clocks;
        let closest = self
            .lookups
            .waiting_for(pair)
            .map(|(ticket, l)| (ticket, l, corrected(clocks, l)))
            .filter(|(_, l, at)| l.fits(cfg, *at, first, start_lo))
            .min_by_key(|(ticket, _, at)| (at.abs_diff(first), *ticket))
            .map(|(ticket, _, _)| ticket);
        if let Some(lookup) = closest.and_then(|ticket| self.lookups.take(ticket)) {
            self.attach(key, first, last, &lookup, watermark);
        }
    }

    /// The connection a lookup fits best (open, or published and kept for late events), if any.
    ///
    /// A connection without a lookup yet beats one that has one (a second lookup by the same
    /// client for the same server usually precedes a second connection); then the first to
    /// start (parallel connections share one cached answer); then the smallest key.
    fn best_connection(&mut self, cfg: &Config, lookup: &Lookup) -> Option<Candidate> {
        let at = corrected(&self.clocks, lookup);
        let mut best: Option<Candidate> = None;
        let mut stale = Vec::new();
        for &answer in &lookup.answers {
            let pair = Pair::new(lookup.client, answer);
            for key in self.pairs.keys(pair) {
                if !self.sessions.contains_key(key) {
                    stale.push((pair, key.clone()));
                    continue;
                }
                // The session of this key nearest the lookup; `reach` only widens the search.
                let reach = cfg.wide(cfg.dns_window_ms + cfg.skew_ms);
                let Some(s) = self.sessions.find(key, at, reach) else { continue };
                if s.data.kind != Kind::Network
                    || !lookup.fits(cfg, at, s.first_seen, s.data.start_lo(s.first_seen))
                {
                    continue;
                }
                let has_lookup = s.data.has_lookup();
                let rank = (has_lookup, s.first_seen, key.as_str());
                if best.as_ref().is_none_or(|b| rank < (b.has_lookup, b.first, b.key.as_str())) {
                    best = Some(Candidate {
                        has_lookup,
                        first: s.first_seen,
                        last: s.last_seen,
                        key: key.clone(),
                    });
                }
            }
        }
        for (pair, key) in stale {
            self.pairs.remove(pair, &key);
        }
        best
    }

    /// A DNS lookup has arrived: it joins the best connection that has no lookup yet, or waits
    /// (for its connection to appear, or for its wait to end).
    fn add_lookup(&mut self, cfg: &Config, lookup: Lookup, watermark: TimestampMs) {
        match self.best_connection(cfg, &lookup) {
            Some(c) if !c.has_lookup => self.attach(&c.key, c.first, c.last, &lookup, watermark),
            _ => self.lookups.insert(cfg, lookup, watermark),
        }
    }

    /// A lookup's wait is over: it joins the best connection it fits, even one that has a lookup
    /// already (the client looked the name up again without connecting anew), or becomes a
    /// `dns-lookup` story.
    fn settle_lookup(&mut self, cfg: &Config, lookup: &Lookup, watermark: TimestampMs) {
        match self.best_connection(cfg, lookup) {
            Some(c) => self.attach(&c.key, c.first, c.last, lookup, watermark),
            None => {
                self.measure_lookup(lookup);
                let (at, skew) = corrected_within(cfg, &self.clocks, lookup);
                let from_zeek = self.zeek_sensors.contains(lookup.facts.sensor.as_ref());
                let origin = Origin::of(lookup, at, skew, from_zeek);
                self.add_lookup_story(cfg, &origin, &lookup.facts, watermark);
            }
        }
    }

    /// A lookup that fits no connection may still measure its resolver's clock: the
    /// connection of its (client, answer) pairs nearest in time, within
    /// [`storyline_sdk::clocks::MAX_OFFSET_MS`], is most likely the one its answer led to,
    /// and the two stamps then differ by the clocks' difference (plus the moment between
    /// answer and connection). This is how a resolver, which shares no tuple with other
    /// sensors, gets its clock learned; its later lookups then fit.
    fn measure_lookup(&mut self, lookup: &Lookup) {
        let Some(resolver) = self.clocks.id_of(&lookup.facts.sensor) else { return };
        let at = corrected(&self.clocks, lookup);
        let mut nearest: Option<(u64, SensorId, TimestampMs)> = None;
        for &answer in &lookup.answers {
            for key in self.pairs.keys(Pair::new(lookup.client, answer)) {
                let far = storyline_sdk::clocks::MAX_OFFSET_MS;
                let Some(s) = self.sessions.find(key, at, far) else { continue };
                let Some((sensor, raw)) = s.data.anchor().filter(|_| s.data.kind == Kind::Network)
                else {
                    continue;
                };
                let distance = at.abs_diff(s.first_seen);
                if nearest.is_none_or(|(d, _, _)| distance < d) {
                    nearest = Some((distance, sensor, raw));
                }
            }
        }
        if let Some((_, sensor, raw)) = nearest {
            self.clocks.observe(resolver, lookup.time, sensor, raw);
        }
    }

    /// Adds `lookup` to the session of `key` spanning `first..=last`.
    ///
    /// The lookup is added at its time clamped into that span: the sessionizer then puts it in
    /// exactly that session (distance 0) whatever the configured windows, and the lookup does
    /// not stretch the session's own window for later traffic on the tuple. The story's first
    /// and last seen still include the lookup's real time (see `SessionData::add_lookup_time`).
    fn attach(
        &mut self,
        key: &str,
        first: TimestampMs,
        last: TimestampMs,
        lookup: &Lookup,
        watermark: TimestampMs,
    ) {
        let time = corrected(&self.clocks, lookup);
        let at = time.clamp(first, last);
        let session = self.sessions.add(key, &lookup.event_id, at, 0, watermark);
        // The connection its answer led to starts a moment after the lookup: a measurement of
        // the resolver's clock against the connection's first report.
        if let (Some(resolver), Some((sensor, raw))) =
            (self.clocks.id_of(&lookup.facts.sensor), session.data.anchor())
        {
            self.clocks.observe(resolver, lookup.time, sensor, raw);
        }
        session.data.merge(&lookup.facts);
        session.data.add_lookup_time(time);
    }

    /// Adds a DNS lookup as (part of) a `dns-lookup` story keyed by its own tuple.
    ///
    /// It ends after [`Config::lookup_gap`] without records: Zeek's DNS timing for Zeek's
    /// records, `dns_gap_ms` for an exchange with a DNS server (port 53), else `gap_ms`.
    fn add_lookup_story(
        &mut self,
        cfg: &Config,
        o: &Origin<'_>,
        facts: &Facts<'_>,
        watermark: TimestampMs,
    ) {
        let sensor: &str = &facts.sensor;
        let port_53 = |f: &Flow| f.server.port == Some(53) || f.client.port == Some(53);
        let reach = cfg.lookup_gap(o.from_zeek, o.flow.is_some_and(port_53)) - cfg.base_gap();
        let skew = self.skew_for(o.key, o.time, reach, sensor, o.skew);
        let session = self.sessions.add_within(o.key, o.event_id, o.time, reach, skew, watermark);
        let new = session.event_ids.len() == 1;
        let d = &mut session.data;
        // The flow of the lookup's exchange may have opened the session: it stays a connection.
        if new {
            d.kind = Kind::DnsLookup;
        }
        d.merge(facts);
        if let Some((t, explicit)) = o.transport {
            d.set_transport(Some(t), explicit);
        }
        if let Some(f) = o.flow {
            d.observe_sides(f, o.time, o.event_id);
            if d.wants_community_id()
                && let Some(id) = observe::flow_community_id(f, o.transport.map(|(t, _)| t))
            {
                d.set_community_id(&id);
            }
        }
    }

    /// Settles the lookups whose wait is over.
    pub fn expire_lookups(&mut self, cfg: &Config, watermark: TimestampMs) {
        for lookup in self.lookups.expire(watermark) {
            self.settle_lookup(cfg, &lookup, watermark);
        }
    }

    /// Housekeeping once per bucket: the clock offsets are recomputed from what the bucket
    /// measured, and logged when one is learned or moved by more than a second.
    pub fn sweep(&mut self) {
        self.clocks.settle();
        for (sensor, offset) in self.clocks.offsets() {
            let moved = self.logged.get(sensor).is_none_or(|o| (o - offset).abs() > 1000);
            if moved {
                self.logged.insert(sensor.to_owned(), offset);
                let text = offset.to_string();
                storyline_sdk::log(
                    storyline_sdk::Level::Info,
                    "sensor clock offset learned",
                    &[("sensor", sensor), ("offset_ms", &text)],
                );
            }
        }
        self.pairs.sweep_if_due(&self.sessions);
        self.communities.sweep_if_due(&self.sessions);
        self.files.sweep_if_due(&self.sessions);
    }

    /// Publishes the sessions that closed at `watermark`.
    pub fn advance(&mut self, watermark: TimestampMs) -> Vec<Story> {
        let clocks = &self.clocks;
        self.sessions.advance(watermark, |s| story_of(s, clocks))
    }

    /// Publishes everything, after settling the lookups still waiting.
    pub fn drain(&mut self, cfg: &Config) -> Vec<Story> {
        for lookup in self.lookups.drain() {
            let at = corrected(&self.clocks, &lookup);
            self.settle_lookup(cfg, &lookup, at);
        }
        self.pairs.clear();
        self.communities = IdIndex::default();
        self.files = IdIndex::default();
        let clocks = &self.clocks;
        self.sessions.drain(|s| story_of(s, clocks))
    }

    /// The state as bytes: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising maps, sets, strings and numbers into a Vec cannot fail; should it ever,
        // the empty body makes `decode` refuse the snapshot instead of restoring half a state.
        match postcard::to_allocvec(self) {
            // The version byte goes in front (one move of the bytes, far cheaper than writing
            // through postcard's generic `Extend` flavour).
            Ok(mut v) => {
                v.insert(0, STATE_VERSION);
                v
            }
            Err(_) => vec![STATE_VERSION],
        }
    }

    /// State from [`State::encode`]. The configuration given to `init` replaces the one the
    /// snapshot was taken with. An empty snapshot is an empty state.
    pub fn decode(bytes: &[u8], config: &Config) -> Result<State, Error> {
        let Some((&version, body)) = bytes.split_first() else {
            return Ok(State::new(config));
        };
        if !(OLDEST_VERSION..=STATE_VERSION).contains(&version) {
            return Err(Error::InvalidState(format!(
                "snapshot format version {version}; this network-session plugin reads versions \
                 {OLDEST_VERSION} to {STATE_VERSION} (was the snapshot taken by a newer plugin?)"
            )));
        }
        let unreadable = |e: postcard::Error| {
            Error::InvalidState(format!(
                "network-session snapshot of {} bytes (format version {version}) is not readable: {e}",
                bytes.len()
            ))
        };
        let mut state: State = if version >= 4 {
            postcard::from_bytes(body).map_err(unreadable)?
        } else if version == 3 {
            let v3: StateV3 = postcard::from_bytes(body).map_err(unreadable)?;
            State {
                sessions: v3.sessions,
                lookups: v3.lookups,
                pairs: v3.pairs,
                communities: v3.communities,
                clocks: v3.clocks,
                ..State::new(config)
            }
        } else {
            // Sessions were keyed by community id; they are keyed by tuple now, and so are
            // the pair index and the waiting lookups' own stories.
            let old: StateV2 = postcard::from_bytes(body).map_err(unreadable)?;
            let mut pairs = PairIndex::default();
            let sessions = old.sessions.convert(|key, data| {
                let new_key = data.new_key(key);
                if let Some(pair) = data.indexed_pair() {
                    pairs.insert(pair, &new_key);
                }
                (new_key, data.upgrade(key))
            });
            let mut lookups = old.lookups;
            lookups.rekey(|l| {
                let tuple = l
                    .flow
                    .as_ref()
                    .and_then(|f| observe::tuple_key(f, l.transport.map(|(t, _)| t)));
                tuple.unwrap_or_else(|| l.own_key.clone())
            });
            let mut communities = IdIndex::default();
            for s in sessions.iter() {
                communities.insert_from(&s.data, &s.key);
            }
            State {
                sessions,
                lookups,
                pairs,
                communities,
                clocks: SensorClocks::default(),
                files: IdIndex::default(),
                residual_ms: 0,
                logged: BTreeMap::new(),
                zeek_sensors: BTreeSet::new(),
                late_flows: Awaiting::default(),
                flows_seen: false,
                file_refs_seen: false,
                file_ref_looks: 0,
            }
        };
        state.lookups.reindex();
        state.residual_ms = config.residual_skew_ms.min(config.skew_ms);
        // A new base gap (the defaults changed) keeps the sessions under way whole.
        state.sessions.set_config_keeping_gaps(config.sessions());
        // Stories only wait once a flow record was seen: a state with a story waiting, or one
        // holding a flow record, saw one.
        state.late_flows = config.late_flows();
        state.file_refs_seen = !state.files.is_empty();
        state.flows_seen = state.sessions.awaiting_bytes() > 0
            || state.sessions.iter().any(|s| s.data.has_flow_record_kind());
        let awaiting = if state.flows_seen { state.late_flows } else { Awaiting::default() };
        state.sessions.set_awaiting(awaiting, SessionData::awaits_flow_record);
        Ok(state)
    }

    /// Counts for tests: (sessions kept, lookups waiting, pair index entries).
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.sessions.len(), self.lookups.len(), self.pairs.len())
    }
}

/// [`State`] as format version 3 holds it: without file ids.
#[derive(Debug, Deserialize)]
struct StateV3 {
    sessions: Sessionizer<SessionData>,
    lookups: Lookups,
    pairs: PairIndex,
    communities: IdIndex,
    clocks: SensorClocks,
}

/// [`State`] as format versions 1 and 2 hold it.
#[derive(Debug, Deserialize)]
struct StateV2 {
    sessions: Sessionizer<SessionDataV2>,
    lookups: Lookups,
    /// Read past: it is rebuilt under the new keys.
    _pairs: PairIndex,
}

/// Whether an event is a flow record (a whole connection as one sensor saw it), by its kind:
/// Zeek's `conn`, Suricata's `flow`, NetFlow/IPFIX `netflow`, firewall `traffic` logs. A
/// duration alone does not make one (Zeek's `files` records have one, several per connection).
pub fn is_flow_record(kind: &str) -> bool {
    ["conn", "flow", "netflow", "traffic"].iter().any(|k| kind.eq_ignore_ascii_case(k))
}

/// The direction a record reports its connection in: whether its source is the lower of the
/// two endpoints (in the order of the session key).
fn reported_upward(ecs: &EcsEvent<'_>) -> bool {
    match (ecs.source_addr(), ecs.destination_addr()) {
        (Some(s), Some(d)) => s <= d,
        _ => true,
    }
}

/// A record whose duration is at most this is a point in time, good to measure clocks with.
const POINT_MS: i64 = 1000;

/// Which clock an event's time was read from.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// The sensor.
    sensor: SensorId,
    /// The time as the sensor stamped it (within [`sane_time`]).
    raw: TimestampMs,
    /// How far its clock may still be off: the configured skew, or the residual once the
    /// sensor's clock is learned.
    skew: i64,
}

/// An event that reports a connection, with what `add` read from it.
struct Connection<'a> {
    event: &'a Event,
    ecs: &'a EcsEvent<'a>,
    /// Its time on the reference clock, within [`sane_time`].
    time: TimestampMs,
    /// The sensor's clock.
    clock: Clock,
    flow: Option<Flow>,
    transport: Option<u8>,
    /// Whether the transport was given by the sensor (not defaulted).
    explicit: bool,
    /// How far the record reaches from its time (`event.duration`, within [`Config::flow_reach`]).
    reach: i64,
}

/// Where a `dns-lookup` story comes from: its key and the lookup event's id, time and tuple.
struct Origin<'a> {
    key: &'a str,
    event_id: &'a str,
    time: TimestampMs,
    /// How far its resolver's clock may be off.
    skew: i64,
    flow: Option<&'a Flow>,
    transport: Option<(u8, bool)>,
    /// Zeek wrote the record (its DNS timing applies).
    from_zeek: bool,
}

/// A lookup's time on the reference clock (it keeps its resolver's).
fn corrected(clocks: &SensorClocks, lookup: &Lookup) -> TimestampMs {
    match clocks.id_of(&lookup.facts.sensor) {
        Some(resolver) => sane_time(clocks.correct(resolver, lookup.time).0),
        None => lookup.time,
    }
}

/// A lookup's time on the reference clock and how far its resolver's clock may still be off.
fn corrected_within(cfg: &Config, clocks: &SensorClocks, lookup: &Lookup) -> (TimestampMs, i64) {
    match clocks.id_of(&lookup.facts.sensor).map(|r| clocks.correct(r, lookup.time)) {
        Some((at, true)) => (sane_time(at), cfg.residual_skew_ms.min(cfg.skew_ms)),
        _ => (lookup.time, cfg.skew_ms),
    }
}

impl<'a> Origin<'a> {
    /// The story of `lookup`, at `time` (its time on the reference clock), its clock off by
    /// up to `skew`.
    fn of(lookup: &'a Lookup, time: TimestampMs, skew: i64, from_zeek: bool) -> Origin<'a> {
        Origin {
            key: &lookup.own_key,
            event_id: &lookup.event_id,
            time,
            skew,
            flow: lookup.flow.as_ref(),
            transport: lookup.transport,
            from_zeek,
        }
    }
}

/// A connection a lookup may join (see `State::best_connection`).
struct Candidate {
    /// Whether a lookup is attached already.
    has_lookup: bool,
    /// Its session's first seen.
    first: TimestampMs,
    /// Its session's last seen.
    last: TimestampMs,
    /// Its key.
    key: String,
}
