//! A minimal correlation rule to copy when writing a new one.
//!
//! It groups events that share a session key into stories. The key is the event's
//! `session` attribute when the producer set one, else the community id of the flow in its
//! payload, else the event id (a story of one event). Sessions close after a minute without
//! events, tolerating 30 s of clock skew between sensors (both configurable).
//!
//! Build: `cargo build --target wasm32-wasip2 --profile plugin -p template`, then check the
//! result with `storyline plugin check target/wasm32-wasip2/plugin/template.wasm`.

use storyline_sdk::ecs::EcsEvent;
use storyline_sdk::session::{SessionConfig, Sessionizer};
use storyline_sdk::{Bucket, Correlator, Error, Event, Story, community_id, export_correlator};

/// The rule's state: open sessions. Everything the rule needs across buckets lives here, so
/// that `snapshot`/`restore` can carry it through a crash or a reload.
#[derive(Debug)]
pub struct Template {
    sessions: Sessionizer<()>,
}

impl Template {
    /// The key that decides which events belong together.
    fn key(event: &Event) -> String {
        if let Some(session) = event.attribute("session") {
            return format!("attr:{session}");
        }
        // Parsing borrows from the payload; a payload that is not ECS JSON just has no tuple.
        let ecs = EcsEvent::parse(&event.payload).unwrap_or_default();
        match ecs.community_id(Some(community_id::proto::TCP)) {
            Some(id) => id,
            None => format!("event:{}", event.id),
        }
    }
}

impl Correlator for Template {
    /// `config` is JSON: `{"gap_ms": 60000, "skew_ms": 30000, ...}`; `{}` keeps the defaults.
    fn init(config: &str) -> Result<Self, Error> {
        let config: SessionConfig = serde_json::from_str(config).map_err(|e| {
            Error::InvalidConfig(format!("{e}; expected e.g. {{\"gap_ms\": 60000}}"))
        })?;
        config.validate()?;
        Ok(Template { sessions: Sessionizer::new(config) })
    }

    /// Adds each event to its session, then publishes the sessions that timed out.
    fn process(&mut self, bucket: &Bucket) -> Result<Vec<Story>, Error> {
        for event in &bucket.events {
            let key = Self::key(event);
            self.sessions.add(&key, &event.id, event.event_time, 0, bucket.watermark);
        }
        Ok(self.sessions.advance(bucket.watermark, |s| s.story("template")))
    }

    /// The input is over: publish everything still open.
    fn drain(&mut self) -> Result<Vec<Story>, Error> {
        Ok(self.sessions.drain(|s| s.story("template")))
    }

    /// Events with the same key go to the same shard, so a session is never split.
    fn route(&self, event: &Event) -> Option<String> {
        Some(Self::key(event))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.sessions.snapshot()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), Error> {
        let config = *self.sessions.config();
        self.sessions = Sessionizer::restore(state)?;
        // The configuration given to init wins over the one saved in the snapshot.
        self.sessions.set_config(config);
        Ok(())
    }
}

export_correlator!(Template);

#[cfg(test)]
mod tests {
    use super::*;
    use storyline_sdk::testing::Harness;

    #[test]
    fn groups_by_session_attribute_and_flow() {
        let events = r#"{"id":"a","source":"fw","kind":"flow","time":1000,"attributes":{"session":"s1"}}
{"id":"b","source":"edr","kind":"process","time":2000,"attributes":{"session":"s1"}}
{"id":"c","source":"fw","kind":"flow","time":3000,"payload":{"source":{"ip":"10.0.0.1","port":5000},"destination":{"ip":"10.0.0.2","port":80}}}
{"id":"d","source":"proxy","kind":"http","time":3500,"payload":{"source":{"ip":"10.0.0.2","port":80},"destination":{"ip":"10.0.0.1","port":5000}}}
{"id":"e","source":"fw","kind":"flow","time":9000}"#;
        let mut h = Harness::<Template>::new("{}").unwrap();
        let mut groups: Vec<Vec<String>> =
            h.run_jsonl(events).unwrap().into_iter().map(|s| s.event_ids).collect();
        groups.sort();
        assert_eq!(groups, vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    }

    #[test]
    fn bad_config_is_rejected_with_a_hint() {
        let err = Template::init(r#"{"gap_ms": -1}"#).err().unwrap();
        assert_eq!(err, Error::InvalidConfig("gap_ms is -1; it must be >= 0".into()));
        let err = Template::init(r#"{"gap": 1}"#).err().unwrap();
        assert!(err.to_string().contains("unknown field `gap`"), "{err}");
    }
}
