//! The component side: generated bindings of `wit/v0.2.0` and the glue between them and a
//! [`Correlator`]. Compiled only for Wasm; plugin authors never name anything here.

// Generated code and macro glue: hidden from the docs, so not documented item by item.
#![allow(missing_docs)]

use crate::model::{Bucket, Error, Event, Level, Story};

pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::storyline_sdk::__private::bindings",
        runtime_path: "::storyline_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::storyline::correlator::host;
use bindings::storyline::correlator::types as wit;

pub(crate) fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    let fields: Vec<(String, String)> =
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    host::log(level, message, &fields);
}

/// What `export_correlator!` expands to calls into. Not a public API.
pub mod glue {
    use std::any::Any;
    use std::cell::RefCell;

    use super::*;
    use crate::Correlator;

    pub use super::bindings;
    pub use super::bindings::exports::storyline::correlator::correlator::Guest;
    pub use super::wit::{Bucket as WitBucket, Error as WitError, Story as WitStory};
    pub use wit_bindgen;

    thread_local! {
        // A component instance is single-threaded: the one correlator lives here between calls.
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        // Events of the last call and surplus ones, decoded into again by the next call: once
        // their strings have grown, a bucket is decoded without allocating.
        static EVENTS: RefCell<(Vec<Event>, Vec<Event>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Runs `f` on the events packed in `bytes`, decoded into the kept ones.
    fn with_events<R>(
        bytes: &[u8],
        f: impl FnOnce(Vec<Event>) -> (Vec<Event>, R),
    ) -> Result<R, String> {
        let (mut events, mut spare) = EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()));
        let decoded = crate::packed::decode_into(bytes, &mut events, &mut spare);
        let result = match decoded {
            Ok(()) => {
                let (back, r) = f(events);
                events = back;
                Ok(r)
            }
            Err(e) => Err(e),
        };
        EVENTS.with(|e| *e.borrow_mut() = (events, spare));
        result
    }

    fn with<C: Correlator, R>(f: impl FnOnce(&mut C) -> Result<R, Error>) -> Result<R, WitError> {
        INSTANCE.with(|cell| {
            let mut slot = cell.borrow_mut();
            match slot.as_mut().and_then(|b| b.downcast_mut::<C>()) {
                Some(c) => f(c).map_err(to_wit_error),
                None => Err(WitError::Failed("called before init".into())),
            }
        })
    }

    pub fn init<C: Correlator>(config: String) -> Result<(), WitError> {
        let c = C::init(&config).map_err(to_wit_error)?;
        INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(c)));
        Ok(())
    }

    pub fn process<C: Correlator>(bucket: WitBucket) -> Result<Vec<WitStory>, WitError> {
        let WitBucket { tenant, shard, start, end, watermark, events } = bucket;
        let out = with_events(&events, |events| {
            let bucket = Bucket { tenant, shard, start, end, watermark, events };
            let out = with::<C, _>(|c| c.process(&bucket));
            (bucket.events, out)
        });
        match out {
            Ok(out) => out.map(to_wit_stories),
            Err(e) => Err(WitError::Failed(e)),
        }
    }

    pub fn drain<C: Correlator>() -> Result<Vec<WitStory>, WitError> {
        with::<C, _>(|c| c.drain()).map(to_wit_stories)
    }

    /// One key per event. When the events cannot be decoded, or the correlator is missing,
    /// none of them gets a key (the host routes them by id).
    pub fn route<C: Correlator>(events: Vec<u8>) -> Vec<Option<String>> {
        let keys = with_events(&events, |events| {
            let keys = with::<C, _>(|c| Ok(events.iter().map(|e| c.route(e)).collect::<Vec<_>>()));
            (events, keys.ok())
        });
        match keys {
            Ok(Some(keys)) => keys,
            _ => {
                let count =
                    events.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                vec![None; count as usize]
            }
        }
    }

    pub fn snapshot<C: Correlator>() -> Vec<u8> {
        with::<C, _>(|c| Ok(c.snapshot())).unwrap_or_default()
    }

    pub fn restore<C: Correlator>(state: Vec<u8>) -> Result<(), WitError> {
        with::<C, _>(|c| c.restore(&state))
    }

    fn to_wit_stories(stories: Vec<Story>) -> Vec<WitStory> {
        stories
            .into_iter()
            .map(|s| WitStory {
                id: s.id,
                revision: s.revision,
                kind: s.kind,
                event_ids: s.event_ids,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                fields: s.fields.into_string(),
            })
            .collect()
    }

    fn to_wit_error(e: Error) -> WitError {
        match e {
            Error::InvalidConfig(m) => WitError::InvalidConfig(m),
            Error::InvalidState(m) => WitError::InvalidState(m),
            Error::Failed(m) => WitError::Failed(m),
        }
    }
}
