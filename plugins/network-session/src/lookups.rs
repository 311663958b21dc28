//! DNS lookups waiting for the connection they led to.
//!
//! A lookup has its own 5-tuple (client → resolver:53) but belongs to the connection its answer
//! led to: from the same client to an answered address, starting shortly after. Sensors deliver
//! the lookup before or after that connection's events, so a lookup that finds no free
//! connection yet waits here, indexed by (client, answer) pair, until a connection of that pair
//! appears or the watermark passes its deadline (then `State` settles it: the best connection
//! it fits, or a `dns-lookup` story of its own).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use storyline_sdk::TimestampMs;

use crate::config::Config;
use crate::observe::{Facts, Flow};
use crate::story::Pair;

/// One DNS lookup event with at least one answered address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lookup {
    /// The event's id.
    pub event_id: String,
    /// Its time, by the resolver's clock.
    pub time: TimestampMs,
    /// The querying client.
    pub client: IpAddr,
    /// The answered addresses.
    pub answers: Vec<IpAddr>,
    /// The key of its own `dns-lookup` story, should it find no connection.
    pub own_key: String,
    /// Client and resolver, for that story.
    pub flow: Option<Flow>,
    /// The lookup's transport (explicit, or UDP by default).
    pub transport: Option<(u8, bool)>,
    /// What it adds to a story.
    pub facts: Facts<'static>,
}

impl Lookup {
    /// Whether a connection whose earliest event is at `first_seen`, and that may have started
    /// as early as `start_lo` (an end-stamped flow record), can be the one this lookup, at `at`
    /// on the reference clock, led to:
    /// it starts no earlier than the lookup and within `dns_window_ms` after it, give or take
    /// `skew_ms` between the two sensors' clocks.
    pub fn fits(
        &self,
        cfg: &Config,
        at: TimestampMs,
        first_seen: TimestampMs,
        start_lo: TimestampMs,
    ) -> bool {
        first_seen >= at.saturating_sub(cfg.skew_ms)
            && start_lo <= at.saturating_add(cfg.dns_window_ms + cfg.skew_ms)
    }

    /// The address pairs it can belong to.
    fn pairs(&self) -> impl Iterator<Item = Pair> + '_ {
        self.answers.iter().map(|&a| Pair::new(self.client, a))
    }
}

/// Number of a waiting lookup, in arrival order: the indexes hold this instead of copies of
/// the event id (one allocation fewer per index).
pub type Ticket = u64;

/// The lookups waiting, with the two indexes `process` needs: by address pair (a connection
/// appears) and by deadline (the watermark advances). No operation scans all of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lookups {
    /// Lookup by ticket, with its deadline.
    by_ticket: BTreeMap<Ticket, (TimestampMs, Lookup)>,
    /// Tickets by (client, answer) pair.
    by_pair: BTreeMap<Pair, BTreeSet<Ticket>>,
    /// (deadline, ticket), earliest first.
    by_deadline: BTreeSet<(TimestampMs, Ticket)>,
    /// Tickets by the lookup's own key (its exchange's tuple), in increasing order: the flow
    /// of that exchange takes them. Derived from `by_ticket`, so not part of snapshots
    /// (rebuilt by [`Lookups::reindex`]); a hash map, since every connection record asks it
    /// and its order is never observed. A key has one ticket, rarely two.
    #[serde(skip)]
    by_own_key: HashMap<String, Vec<Ticket>, FxBuildHasher>,
    /// The next ticket.
    next: Ticket,
}

impl Lookups {
    /// Number of lookups waiting.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_ticket.len()
    }

    /// Keeps `lookup` until a connection of one of its pairs appears, or until the watermark
    /// passes its deadline: its last activity (arrival, or its time if that is later by no more
    /// than the skew) plus window, gap and skew.
    pub fn insert(&mut self, cfg: &Config, lookup: Lookup, watermark: TimestampMs) {
        let ticket = self.next;
        self.next += 1;
        let activity = lookup.time.max(watermark).min(watermark.saturating_add(cfg.skew_ms));
        let deadline = activity.saturating_add(cfg.dns_window_ms + cfg.gap_ms + cfg.skew_ms);
        for pair in lookup.pairs() {
            self.by_pair.entry(pair).or_default().insert(ticket);
        }
        self.by_deadline.insert((deadline, ticket));
        // Tickets grow: pushed last, a key's tickets stay in increasing order.
        push_ticket(self.by_own_key.entry(lookup.own_key.clone()).or_default(), ticket);
        self.by_ticket.insert(ticket, (deadline, lookup));
    }

    /// Gives every waiting lookup the own key `f` computes (snapshots of earlier formats keyed
    /// lone lookups otherwise).
    pub fn rekey(&mut self, f: impl Fn(&Lookup) -> String) {
        for (_, lookup) in self.by_ticket.values_mut() {
            lookup.own_key = f(lookup);
        }
        self.reindex();
    }

    /// Rebuilds the index by own key after a snapshot was read.
    pub fn reindex(&mut self) {
        self.by_own_key.clear();
        for (ticket, (_, lookup)) in &self.by_ticket {
            // `by_ticket` is visited in ticket order.
            push_ticket(self.by_own_key.entry(lookup.own_key.clone()).or_default(), *ticket);
        }
    }

    /// Removes and returns the lookups whose own exchange is the flow of `key`.
    pub fn take_own(&mut self, key: &str) -> Vec<Lookup> {
        let Some(tickets) = self.by_own_key.get(key).cloned() else { return Vec::new() };
        tickets.into_iter().filter_map(|t| self.take(t)).collect()
    }

    /// The lookups waiting for a connection of `pair`, in arrival order.
    pub fn waiting_for(&self, pair: Pair) -> impl Iterator<Item = (Ticket, &Lookup)> + '_ {
        let tickets = self.by_pair.get(&pair).into_iter().flatten();
        tickets.filter_map(|t| self.by_ticket.get(t).map(|(_, l)| (*t, l)))
    }

    /// Whether any lookup waits for `pair` (one map look-up: the common answer is no).
    pub fn any_for(&self, pair: Pair) -> bool {
        self.by_pair.contains_key(&pair)
    }

    /// Removes a lookup (it found its connection) and returns it.
    pub fn take(&mut self, ticket: Ticket) -> Option<Lookup> {
        let (deadline, lookup) = self.by_ticket.remove(&ticket)?;
        for pair in lookup.pairs() {
            if let Some(tickets) = self.by_pair.get_mut(&pair) {
                tickets.remove(&ticket);
                if tickets.is_empty() {
                    self.by_pair.remove(&pair);
                }
            }
        }
        self.by_deadline.remove(&(deadline, ticket));
        if let Some(tickets) = self.by_own_key.get_mut(&lookup.own_key) {
            tickets.retain(|&t| t != ticket);
            if tickets.is_empty() {
                self.by_own_key.remove(&lookup.own_key);
            }
        }
        Some(lookup)
    }

    /// Removes and returns the lookups whose deadline the watermark has reached, earliest first.
    pub fn expire(&mut self, watermark: TimestampMs) -> Vec<Lookup> {
        let mut out = Vec::new();
        while let Some(&(deadline, ticket)) = self.by_deadline.first() {
            if deadline > watermark {
                break;
            }
            out.extend(self.take(ticket));
        }
        out
    }

    /// Removes and returns every lookup, earliest deadline first: the input is over.
    pub fn drain(&mut self) -> Vec<Lookup> {
        self.expire(TimestampMs::MAX)
    }
}

/// Appends `ticket` to a key's tickets, making room for that one only (a key has one ticket,
/// rarely two).
fn push_ticket(tickets: &mut Vec<Ticket>, ticket: Ticket) {
    tickets.reserve_exact(1);
    tickets.push(ticket);
}
