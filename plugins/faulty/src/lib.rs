//! A deliberately faulty plugin for the host's tests: each fault the host must contain.
//!
//! Configuration: `{"mode": "<mode>", "only_kind": "<kind>", "tag": "<text>", "route": "<fault>"}`. With
//! `only_kind`, the fault fires only on buckets holding an event of that kind; other buckets are
//! processed well (one story per event). `tag` is copied into every story's fields (tests tell
//! plugin versions apart by it). Modes:
//!
//! | mode          | what `process` does                                              |
//! |---------------|------------------------------------------------------------------|
//! | `none`        | behaves: one story per event                                     |
//! | `trap`        | panics (a Wasm trap)                                             |
//! | `loop`        | loops forever without yielding                                   |
//! | `alloc`       | allocates without bound                                          |
//! | `fail`        | returns `Error::Failed` (a refusal, not a trap)                  |
//! | `unknown-ids` | returns a story naming an event it was never given               |
//! | `oversized`   | returns a story of about 12 MB                                   |
//! | `empty-id`    | returns a story with an empty id                                 |
//! | `probe`       | reports what the sandbox lets it see: env, args, files, clock, randomness |
//! | `chatty`      | logs far more than the host allows per call                      |
//!
//! `route` picks what the `route` export does: `none` (default: no key, the host routes by id),
//! `trap` (panics), `loop` (never returns), `stderr` (writes a line to stderr for every event
//! and keys it by its source).
//!
//! An unknown mode fails `init` with `Error::InvalidConfig`.

use serde::Deserialize;
use storyline_sdk::session::story_id;
use storyline_sdk::{Bucket, Correlator, Error, Event, Level, Story, export_correlator, log};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "none")]
    mode: String,
    #[serde(default)]
    only_kind: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default = "none")]
    route: String,
}

fn none() -> String {
    "none".into()
}

const ROUTE_MODES: &[&str] = &["none", "trap", "loop", "stderr"];

const MODES: &[&str] = &[
    "none",
    "trap",
    "loop",
    "alloc",
    "fail",
    "unknown-ids",
    "oversized",
    "empty-id",
    "probe",
    "chatty",
];

/// The faulty correlator; `mode` picks the fault.
#[derive(Debug)]
pub struct Faulty {
    mode: String,
    only_kind: Option<String>,
    tag: Option<String>,
    route: String,
    buckets_seen: u64,
}

impl Faulty {
    fn one_story_per_event(&self, bucket: &Bucket) -> Vec<Story> {
        let mut fields = serde_json::Map::new();
        if let Some(tag) = &self.tag {
            fields.insert("tag".into(), tag.clone().into());
        }
        let fields = storyline_sdk::Fields::from(fields);
        bucket
            .events
            .iter()
            .map(|e| Story {
                id: story_id("faulty", &e.id),
                revision: 0,
                kind: "faulty".into(),
                event_ids: vec![e.id.clone()],
                first_seen: e.event_time,
                last_seen: e.event_time,
                fields: fields.clone(),
            })
            .collect()
    }

    fn probe(bucket: &Bucket) -> Story {
        let mut fields = serde_json::Map::new();
        fields.insert("env_vars".into(), std::env::vars().count().into());
        fields.insert("args".into(), std::env::args().count().into());
        fields.insert("home".into(), std::env::var("HOME").ok().into());
        let file = match std::fs::read("/etc/passwd") {
            Ok(bytes) => format!("read {} bytes", bytes.len()),
            Err(e) => format!("error: {e}"),
        };
        fields.insert("file".into(), file.into());
        let dir = match std::fs::read_dir(".") {
            Ok(_) => "listed".to_string(),
            Err(e) => format!("error: {e}"),
        };
        fields.insert("dir".into(), dir.into());
        let tcp = match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => "connected".to_string(),
            Err(e) => format!("error: {e}"),
        };
        fields.insert("tcp".into(), tcp.into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(-1);
        fields.insert("now_ms".into(), now.into());
        // HashMap seeds come from the host's randomness: print one derived value.
        use std::hash::{BuildHasher, RandomState};
        fields.insert("hash".into(), RandomState::new().hash_one("storyline").to_string().into());
        Story {
            id: story_id("probe", &bucket.start.to_string()),
            revision: 0,
            kind: "probe".into(),
            event_ids: bucket.events.iter().map(|e| e.id.clone()).collect(),
            first_seen: bucket.start,
            last_seen: bucket.start,
            fields: fields.into(),
        }
    }
}

impl Correlator for Faulty {
    fn init(config: &str) -> Result<Self, Error> {
        let c: Config = serde_json::from_str(config)
            .map_err(|e| Error::InvalidConfig(format!("{e}; expected {{\"mode\": \"trap\"}}")))?;
        if !MODES.contains(&c.mode.as_str()) {
            return Err(Error::InvalidConfig(format!(
                "unknown mode \"{}\"; known modes: {}",
                c.mode,
                MODES.join(", ")
            )));
        }
        if !ROUTE_MODES.contains(&c.route.as_str()) {
            return Err(Error::InvalidConfig(format!(
                "unknown route mode \"{}\"; known: {}",
                c.route,
                ROUTE_MODES.join(", ")
            )));
        }
        Ok(Faulty {
            mode: c.mode,
            only_kind: c.only_kind,
            tag: c.tag,
            route: c.route,
            buckets_seen: 0,
        })
    }

    fn route(&self, event: &Event) -> Option<String> {
        match self.route.as_str() {
            "trap" => panic!("deliberate trap in route, event {}", event.id),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "stderr" => {
                eprintln!("routing event {}", event.id);
                Some(event.source.clone())
            }
            _ => None,
        }
    }

    fn process(&mut self, bucket: &Bucket) -> Result<Vec<Story>, Error> {
        self.buckets_seen += 1;
        let armed = match &self.only_kind {
            None => true,
            Some(kind) => bucket.events.iter().any(|e| &e.kind == kind),
        };
        if !armed {
            return Ok(self.one_story_per_event(bucket));
        }
        match self.mode.as_str() {
            "trap" => panic!("deliberate trap in bucket starting at {}", bucket.start),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch the memory so that it is really committed.
                    hoard.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "fail" => Err(Error::Failed(format!("refusing bucket {}", bucket.start))),
            "unknown-ids" => {
                let mut stories = self.one_story_per_event(bucket);
                let mut bogus = self.one_story_per_event(bucket).pop().unwrap_or(Story {
                    id: story_id("faulty", "bogus"),
                    revision: 0,
                    kind: "faulty".into(),
                    event_ids: Vec::new(),
                    first_seen: bucket.start,
                    last_seen: bucket.start,
                    fields: Default::default(),
                });
                bogus.id = story_id("faulty", "bogus");
                bogus.event_ids.push("no-such-event".into());
                stories.push(bogus);
                Ok(stories)
            }
            "oversized" => {
                let mut stories = self.one_story_per_event(bucket);
                if let Some(s) = stories.first_mut() {
                    s.fields.insert("blob", "x".repeat(12 << 20));
                }
                Ok(stories)
            }
            "empty-id" => {
                let mut stories = self.one_story_per_event(bucket);
                if let Some(s) = stories.first_mut() {
                    s.id.clear();
                }
                Ok(stories)
            }
            "probe" => Ok(vec![Self::probe(bucket)]),
            "chatty" => {
                for i in 0..10_000 {
                    log(Level::Info, &format!("chatter {i} {}", "y".repeat(200)), &[("i", "x")]);
                }
                Ok(self.one_story_per_event(bucket))
            }
            _ => Ok(self.one_story_per_event(bucket)),
        }
    }
}

export_correlator!(Faulty);
