//! The events of one partition as a store read them: in event-id order, each seen through an
//! [`EventView`] that the plugin runtime lowers into the guest.
//!
//! The embedded store decodes its log records into a few flat buffers (the events' texts,
//! their payloads) and spans into them, instead of an owned [`Event`] per event: reading a
//! partition then costs a handful of allocations instead of six per event, and the thread that
//! hands the events to the plugin frees them in one go.

use std::ops::Range;

use crate::model::Event;
use crate::plugin::EventView;

/// A partition's events, in event-id order, an id at most once.
#[derive(Debug, Default)]
pub struct BucketEvents(Repr);

#[derive(Debug)]
enum Repr {
    /// Decoded events (what a ScyllaDB read yields).
    Owned(Vec<Event>),
    /// Events as spans into flat buffers (what the embedded store's read yields).
    Flat(Flat),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

/// Flat buffers and the spans of each event in them.
#[derive(Debug, Default)]
pub struct Flat {
    /// Ids, sources and kinds, one after the other.
    text: String,
    /// Payloads, one after the other.
    payloads: Vec<u8>,
    /// Attributes of all events.
    attributes: Vec<(String, String)>,
    events: Vec<Span>,
}

/// Where one event's parts are in a [`Flat`].
#[derive(Debug, Clone)]
struct Span {
    id: Range<usize>,
    source: Range<usize>,
    kind: Range<usize>,
    event_time: i64,
    insert_time: i64,
    attributes: Range<usize>,
    payload: Range<usize>,
}

/// One event's parts, borrowed from wherever they were decoded from.
#[derive(Debug, Clone, Copy)]
pub struct EventParts<'a> {
    /// Event id.
    pub id: &'a str,
    /// Sensor.
    pub source: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// Event time, epoch ms.
    pub event_time: i64,
    /// Insert time, epoch ms.
    pub insert_time: i64,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl Flat {
    /// Buffers for about `events` events of `bytes` encoded bytes in all.
    pub fn with_capacity(events: usize, bytes: usize) -> Self {
        Flat {
            text: String::with_capacity(bytes / 8),
            payloads: Vec::with_capacity(bytes),
            attributes: Vec::new(),
            events: Vec::with_capacity(events),
        }
    }
    /// Appends one event (its parts are copied).
    pub fn push<'a>(
        &mut self,
        e: EventParts<'_>,
        attributes: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        let mut text = |s: &str| {
            let start = self.text.len();
            self.text.push_str(s);
            start..self.text.len()
        };
        let (id, source, kind) = (text(e.id), text(e.source), text(e.kind));
        let first = self.attributes.len();
        self.attributes.extend(attributes.map(|(k, v)| (k.to_string(), v.to_string())));
        let start = self.payloads.len();
        self.payloads.extend_from_slice(e.payload);
        self.events.push(Span {
            id,
            source,
            kind,
            event_time: e.event_time,
            insert_time: e.insert_time,
            attributes: first..self.attributes.len(),
            payload: start..self.payloads.len(),
        });
    }

    /// In id order, an id written more than once kept once with its last write: a partition
    /// is keyed by event id, as in ScyllaDB.
    pub fn finish(mut self) -> BucketEvents {
        let text = &self.text;
        // Stable: events of one id stay in write order, the last one last.
        self.events.sort_by(|a, b| text[a.id.clone()].cmp(&text[b.id.clone()]));
        self.events.dedup_by(|later, kept| {
            let same = text[later.id.clone()] == text[kept.id.clone()];
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        BucketEvents(Repr::Flat(self))
    }
}

impl BucketEvents {
    /// Number of events.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Owned(v) => v.len(),
            Repr::Flat(f) => f.events.len(),
        }
    }

    /// True when the partition is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every event, borrowed, in order.
    pub fn views(&self) -> Vec<EventView<'_>> {
        match &self.0 {
            Repr::Owned(v) => v.iter().map(EventView::from).collect(),
            Repr::Flat(f) => f
                .events
                .iter()
                .map(|s| EventView {
                    id: &f.text[s.id.clone()],
                    source: &f.text[s.source.clone()],
                    kind: &f.text[s.kind.clone()],
                    event_time: s.event_time,
                    insert_time: s.insert_time,
                    attributes: &f.attributes[s.attributes.clone()],
                    payload: &f.payloads[s.payload.clone()],
                })
                .collect(),
        }
    }

    /// The events, owned.
    pub fn into_events(self) -> Vec<Event> {
        match self.0 {
            Repr::Owned(v) => v,
            Repr::Flat(_) => self.views().iter().map(EventView::to_event).collect(),
        }
    }
}

impl From<Vec<Event>> for BucketEvents {
    fn from(events: Vec<Event>) -> Self {
        BucketEvents(Repr::Owned(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(id: &'a str, payload: &'a [u8]) -> EventParts<'a> {
        EventParts { id, source: "fw", kind: "flow", event_time: 5, insert_time: 6, payload }
    }

    #[test]
    fn flat_events_come_in_id_order_with_the_last_write_of_an_id() {
        let mut flat = Flat::with_capacity(4, 64);
        flat.push(parts("b", b"B1"), [("k", "v")].into_iter());
        flat.push(parts("a", b"A"), std::iter::empty());
        flat.push(parts("b", b"B2"), [("k", "w"), ("x", "y")].into_iter());
        flat.push(parts("c", b""), std::iter::empty());
        let events = flat.finish();
        assert_eq!(events.len(), 3);
        let owned = events.into_events();
        let got: Vec<(&str, &[u8], usize)> = owned
            .iter()
            .map(|e| (e.id.as_str(), e.payload.as_slice(), e.attributes.len()))
            .collect();
        assert_eq!(got, [("a", &b"A"[..], 0), ("b", &b"B2"[..], 2), ("c", &b""[..], 0)]);
        assert_eq!(owned[1].attributes[0], ("k".to_string(), "w".to_string()));
        assert_eq!(
            (owned[0].source.as_str(), owned[0].event_time, owned[0].insert_time),
            ("fw", 5, 6)
        );
    }

    #[test]
    fn owned_and_flat_events_look_the_same() {
        let mut flat = Flat::with_capacity(1, 8);
        flat.push(parts("a", b"{}"), [("site", "paris")].into_iter());
        let flat = flat.finish();
        let owned = BucketEvents::from(vec![Event {
            id: "a".into(),
            source: "fw".into(),
            kind: "flow".into(),
            event_time: 5,
            insert_time: 6,
            attributes: vec![("site".into(), "paris".into())],
            payload: b"{}".to_vec(),
        }]);
        assert_eq!(format!("{:?}", owned.views()), format!("{:?}", flat.views()));
        assert!(BucketEvents::default().is_empty());
    }
}
