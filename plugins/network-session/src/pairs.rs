//! Which sessions connect two addresses: how a DNS lookup finds its connection without
//! scanning every open session.
//!
//! Entries are added when a session first names both addresses and are never removed when the
//! sessionizer forgets the session (it does not say when). Instead a stale entry is dropped
//! when a look-up meets it, and the whole index is swept whenever it has doubled since the last
//! sweep, so it stays within twice the live sessions at an amortised O(log n) per session.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use storyline_sdk::session::Sessionizer;

use crate::story::Pair;

/// Smallest index size that triggers a sweep: sweeping a small index buys nothing.
const MIN_SWEEP: usize = 4096;

/// Address pair → keys (community ids) of the sessions between those addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairIndex {
    /// The entries: a pair's keys sorted, in a vector (a pair has one or two sessions; a
    /// B-tree node per pair would cost hundreds of bytes each). Serialised like a set.
    keys: BTreeMap<Pair, Vec<String>>,
    /// Number of (pair, key) entries.
    entries: usize,
    /// Sweep when `entries` reaches this.
    sweep_at: usize,
}

impl PairIndex {
    /// Number of (pair, key) entries, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Records that a session of `key` connects the addresses of `pair`.
    pub fn insert(&mut self, pair: Pair, key: &str) {
        let keys = self.keys.entry(pair).or_default();
        if let Err(i) = keys.binary_search_by(|k| k.as_str().cmp(key)) {
            keys.reserve_exact(1);
            keys.insert(i, key.to_owned());
            self.entries += 1;
        }
    }

    /// The keys recorded for `pair`, in order.
    pub fn keys(&self, pair: Pair) -> impl Iterator<Item = &String> + '_ {
        self.keys.get(&pair).into_iter().flatten()
    }

    /// Drops one entry (its sessions are gone).
    pub fn remove(&mut self, pair: Pair, key: &str) {
        if let Some(keys) = self.keys.get_mut(&pair) {
            if let Ok(i) = keys.binary_search_by(|k| k.as_str().cmp(key)) {
                keys.remove(i);
                self.entries -= 1;
            }
            if keys.is_empty() {
                self.keys.remove(&pair);
            }
        }
    }

    /// Drops every entry whose key the sessionizer no longer keeps, when the index has grown
    /// enough since the last sweep to pay for it.
    pub fn sweep_if_due<D>(&mut self, sessions: &Sessionizer<D>) {
        if self.entries < self.sweep_at.max(MIN_SWEEP) {
            return;
        }
        self.keys.retain(|_, keys| {
            keys.retain(|k| sessions.contains_key(k));
            !keys.is_empty()
        });
        self.entries = self.keys.values().map(Vec::len).sum();
        self.sweep_at = self.entries * 2;
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        *self = PairIndex::default();
    }
}

/// An id → key of the connection that has it: a record naming only the connection's community
/// id (an endpoint agent's, say), or a file that a connection's HTTP record listed, finds its
/// connection here. Pruned like [`PairIndex`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdIndex {
    /// The entries.
    keys: BTreeMap<String, String>,
    /// Sweep when the index reaches this size.
    sweep_at: usize,
}

impl IdIndex {
    /// Whether it holds no id.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records that the connection of `key` has id `id` (the first key seen wins).
    pub fn insert(&mut self, id: &str, key: &str) {
        // One search of the tree, not two: an id arrives here once per connection, nearly
        // always new, so its copy is rarely made in vain.
        self.keys.entry(id.to_owned()).or_insert_with(|| key.to_owned());
    }

    /// Records a session's community id, if it has one.
    pub fn insert_from(&mut self, data: &crate::story::SessionData, key: &str) {
        if let Some(id) = data.community_id() {
            self.insert(id, key);
        }
    }

    /// The key of the connection with id `id`.
    pub fn get(&self, id: &str) -> Option<&str> {
        self.keys.get(id).map(String::as_str)
    }

    /// Drops the entries whose key the sessionizer no longer keeps, once the index doubled.
    pub fn sweep_if_due<D>(&mut self, sessions: &Sessionizer<D>) {
        if self.keys.len() < self.sweep_at.max(MIN_SWEEP) {
            return;
        }
        self.keys.retain(|_, key| sessions.contains_key(key));
        self.sweep_at = self.keys.len() * 2;
    }
}
