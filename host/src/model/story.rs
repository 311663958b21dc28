//! A story as the host handles it: what a plugin returned, checked, with its enriched fields
//! kept as the exact JSON text the plugin produced (the host never rebuilds them).

use serde::Serialize;
use serde_json::value::RawValue;

use storyline_sdk::format::format_rfc3339;

use super::TimestampMs;

/// A story returned by a plugin and checked against the contract.
#[derive(Debug, Clone)]
pub struct Story {
    /// Deterministic id chosen by the plugin.
    pub id: String,
    /// Publication number of this id: consumers keep the highest.
    pub revision: u32,
    /// What kind of story.
    pub kind: String,
    /// Every event in the story.
    pub event_ids: Vec<String>,
    /// Earliest event time.
    pub first_seen: TimestampMs,
    /// Latest event time.
    pub last_seen: TimestampMs,
    /// Enriched fields: the text of one JSON object, validated.
    pub fields: Box<RawValue>,
}

impl PartialEq for Story {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.revision == other.revision
            && self.kind == other.kind
            && self.event_ids == other.event_ids
            && self.first_seen == other.first_seen
            && self.last_seen == other.last_seen
            && self.fields.get() == other.fields.get()
    }
}

impl From<storyline_sdk::Story> for Story {
    /// The story a native correlator returned, in the form a component's would arrive.
    fn from(s: storyline_sdk::Story) -> Self {
        // The SDK writes valid JSON objects only.
        let fields = RawValue::from_string(s.fields.into_string()).unwrap_or_default();
        Story {
            id: s.id,
            revision: s.revision,
            kind: s.kind,
            event_ids: s.event_ids,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            fields,
        }
    }
}

/// The published JSON form: one object per story, times in RFC 3339.
#[derive(Serialize)]
struct StoryJson<'a> {
    id: &'a str,
    revision: u32,
    kind: &'a str,
    event_ids: &'a [String],
    first_seen: String,
    last_seen: String,
    fields: &'a RawValue,
}

impl Story {
    /// One line of JSON (no newline): `id`, `revision`, `kind`, `event_ids`, `first_seen`,
    /// `last_seen`, `fields`.
    pub fn to_json(&self) -> String {
        let json = StoryJson {
            id: &self.id,
            revision: self.revision,
            kind: &self.kind,
            event_ids: &self.event_ids,
            first_seen: format_rfc3339(self.first_seen),
            last_seen: format_rfc3339(self.last_seen),
            fields: &self.fields,
        };
        // Strings, integers and already-valid raw JSON always serialise.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// The latest revision of each story, ordered by id: what a consumer that overwrites holds.
pub fn latest_revisions(stories: impl IntoIterator<Item = Story>) -> Vec<Story> {
    let mut latest: std::collections::BTreeMap<String, Story> = Default::default();
    for s in stories {
        if latest.get(&s.id).is_none_or(|old| old.revision < s.revision) {
            latest.insert(s.id.clone(), s);
        }
    }
    latest.into_values().collect()
}
