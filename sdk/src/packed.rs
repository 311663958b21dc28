//! `packed-events` of `storyline:correlator@0.2.0`: many events in one byte string, so that
//! the host hands a bucket (or a batch to route) to the plugin with one allocation in the
//! guest instead of one per string of every event.
//!
//! Layout (integers little-endian): the number of events (u32), then per event its id, source
//! and kind (each a u32 length and UTF-8 bytes), event time and insert time (i64 each), the
//! number of attributes (u32) and each key and value (u32 length, UTF-8), and the payload
//! (u32 length, bytes). The host writes it with [`Writer`]; the SDK reads it with [`decode`].

use crate::model::Event;

/// One event's parts, borrowed, as [`Writer::push`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
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
    /// Attributes.
    pub attributes: &'a [(String, String)],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> From<&'a Event> for EventRef<'a> {
    fn from(e: &'a Event) -> Self {
        EventRef {
            id: &e.id,
            source: &e.source,
            kind: &e.kind,
            event_time: e.event_time,
            insert_time: e.insert_time,
            attributes: &e.attributes,
            payload: &e.payload,
        }
    }
}

/// Writes events into a packed byte string.
#[derive(Debug)]
pub struct Writer {
    buf: Vec<u8>,
    count: u32,
}

impl Writer {
    /// A writer filling `buf` (emptied first; its capacity is reused).
    pub fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer { buf, count: 0 }
    }

    /// Appends one event.
    pub fn push(&mut self, e: EventRef<'_>) {
        let b = &mut self.buf;
        for text in [e.id, e.source, e.kind] {
            put_bytes(b, text.as_bytes());
        }
        b.extend_from_slice(&e.event_time.to_le_bytes());
        b.extend_from_slice(&e.insert_time.to_le_bytes());
        b.extend_from_slice(&len32(e.attributes.len()).to_le_bytes());
        for (k, v) in e.attributes {
            put_bytes(b, k.as_bytes());
            put_bytes(b, v.as_bytes());
        }
        put_bytes(b, e.payload);
        self.count += 1;
    }

    /// The packed bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Lengths are u32: a part of 4 GiB or more cannot cross the component boundary anyway.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&len32(bytes.len()).to_le_bytes());
    b.extend_from_slice(bytes);
}

/// Reads packed events back. The error names the event and the part that is malformed.
pub fn decode(bytes: &[u8]) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    decode_into(bytes, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// [`decode`] into `out`, reusing the strings and buffers of the events it holds and of those
/// in `spare` (surplus events are moved there): once they have grown, decoding allocates
/// nothing. On error `out` holds the events decoded before the malformed one.
pub fn decode_into(
    bytes: &[u8],
    out: &mut Vec<Event>,
    spare: &mut Vec<Event>,
) -> Result<(), String> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32().map_err(|e| format!("packed events: {e} in the event count"))?;
    let mut n = 0;
    let result = (|| {
        for i in 0..count {
            if n == out.len() {
                out.push(spare.pop().unwrap_or_default());
            }
            r.event_into(&mut out[n])
                .map_err(|e| format!("packed events: event {i} of {count}: {e}"))?;
            n += 1;
        }
        if r.at != bytes.len() {
            return Err(format!(
                "packed events: {} bytes after the last of {count} events",
                bytes.len() - r.at
            ));
        }
        Ok(())
    })();
    spare.extend(out.drain(n..));
    result
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text_into(&mut self, out: &mut String, what: &str) -> Result<(), String> {
        let b = self.bytes().map_err(|e| format!("{what}: {e}"))?;
        let text = std::str::from_utf8(b).map_err(|_| format!("{what} is not UTF-8"))?;
        out.clear();
        out.push_str(text);
        Ok(())
    }

    fn event_into(&mut self, e: &mut Event) -> Result<(), String> {
        self.text_into(&mut e.id, "id")?;
        self.text_into(&mut e.source, "source")?;
        self.text_into(&mut e.kind, "kind")?;
        e.event_time = self.i64().map_err(|err| format!("event time: {err}"))?;
        e.insert_time = self.i64().map_err(|err| format!("insert time: {err}"))?;
        let n = self.u32().map_err(|err| format!("attribute count: {err}"))? as usize;
        e.attributes.truncate(n);
        for i in 0..n {
            if i == e.attributes.len() {
                e.attributes.push(Default::default());
            }
            let (k, v) = &mut e.attributes[i];
            self.text_into(k, "attribute key")?;
            self.text_into(v, "attribute value")?;
        }
        let payload = self.bytes().map_err(|err| format!("payload: {err}"))?;
        e.payload.clear();
        e.payload.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        vec![
            Event {
                id: "a".into(),
                source: "fw-1".into(),
                kind: "flow".into(),
                event_time: -5,
                insert_time: 1_700_000_000_000,
                attributes: vec![("site".into(), "paris".into()), ("k".into(), String::new())],
                payload: br#"{"source":{"ip":"10.0.0.1"}}"#.to_vec(),
            },
            Event {
                id: "b\u{e9}".into(),
                source: String::new(),
                kind: "dns".into(),
                event_time: i64::MAX,
                insert_time: 0,
                attributes: vec![],
                payload: vec![],
            },
        ]
    }

    fn pack(events: &[Event]) -> Vec<u8> {
        let mut w = Writer::new(vec![1, 2, 3]);
        for e in events {
            w.push(e.into());
        }
        w.finish()
    }

    #[test]
    fn events_come_back_as_packed() {
        let events = sample();
        assert_eq!(decode(&pack(&events)).unwrap(), events);
        assert_eq!(decode(&pack(&[])).unwrap(), vec![]);
        // The documented layout: count, then the first event's id.
        let bytes = pack(&events);
        assert_eq!(&bytes[..9], &[2, 0, 0, 0, 1, 0, 0, 0, b'a']);
    }

    #[test]
    fn decoding_into_used_events_overwrites_them_and_keeps_the_surplus() {
        let events = sample();
        let (mut out, mut spare) = (Vec::new(), Vec::new());
        decode_into(&pack(&events), &mut out, &mut spare).unwrap();
        assert_eq!(out, events);
        // Fewer events: the first is overwritten in place, the second goes to the spare.
        decode_into(&pack(&events[1..]), &mut out, &mut spare).unwrap();
        assert_eq!((out.as_slice(), spare.len()), (&events[1..], 1));
        // More again: the spare comes back, every field rewritten.
        decode_into(&pack(&[events[1].clone(), events[0].clone()]), &mut out, &mut spare).unwrap();
        assert_eq!(out, [events[1].clone(), events[0].clone()]);
        assert!(spare.is_empty());
        // A malformed one leaves the events decoded before it.
        let bytes = pack(&events);
        assert!(decode_into(&bytes[..bytes.len() - 1], &mut out, &mut spare).is_err());
        assert_eq!(out, events[..1]);
    }

    #[test]
    fn malformed_bytes_are_refused_with_where() {
        let bytes = pack(&sample());
        let err = decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.starts_with("packed events: event 1 of 2: payload: cut short"), "{err}");
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode(&extra).unwrap_err(),
            "packed events: 1 bytes after the last of 2 events"
        );
        let mut bad = bytes;
        bad[8] = 0xff; // the first id's only byte
        assert_eq!(decode(&bad).unwrap_err(), "packed events: event 0 of 2: id is not UTF-8");
        assert!(decode(&[1, 0]).unwrap_err().contains("event count"));
        // A count far beyond the bytes fails on the first missing event, without allocating
        // for the count.
        assert!(decode(&u32::MAX.to_le_bytes()).unwrap_err().contains("event 0 of 4294967295"));
    }
}
