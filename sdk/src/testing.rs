//! Run a correlator natively, without Wasm: in unit tests, benchmarks and while writing a rule.
//!
//! [`Harness`] drives a [`Correlator`] exactly as the host's `storyline plugin test` drives the
//! component: events cut into buckets by event time, `process` per bucket with the bucket end as
//! watermark, then `drain`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::Correlator;
use crate::format::{self, FormatError};
use crate::model::{Bucket, Error, Story};

/// Why a harness run failed.
#[derive(Debug)]
pub enum HarnessError {
    /// The events file could not be read.
    Io(std::io::Error),
    /// Lines of the events file are not valid events.
    Format(Vec<FormatError>),
    /// The correlator returned an error.
    Correlator(Error),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Io(e) => write!(f, "cannot read events: {e}"),
            HarnessError::Format(errors) => {
                write!(f, "{} invalid line(s)", errors.len())?;
                for e in errors.iter().take(10) {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            HarnessError::Correlator(e) => write!(f, "correlator failed: {e}"),
        }
    }
}

impl std::error::Error for HarnessError {}

impl From<Error> for HarnessError {
    fn from(e: Error) -> Self {
        HarnessError::Correlator(e)
    }
}

/// Drives one correlator over buckets of events.
#[derive(Debug)]
pub struct Harness<C> {
    correlator: C,
    tenant: String,
    bucket_ms: i64,
}

impl<C: Correlator> Harness<C> {
    /// Initialises the correlator with `config` (JSON text; `"{}"` for defaults).
    /// Tenant `test`, buckets of 1 000 ms.
    pub fn new(config: &str) -> Result<Self, Error> {
        Ok(Harness { correlator: C::init(config)?, tenant: "test".into(), bucket_ms: 1000 })
    }

    /// Sets the bucket length used to cut event files (default 1 000 ms).
    pub fn bucket_ms(mut self, ms: i64) -> Self {
        self.bucket_ms = ms.max(1);
        self
    }

    /// The correlator, e.g. to call `snapshot` or `route`.
    pub fn correlator(&mut self) -> &mut C {
        &mut self.correlator
    }

    /// Processes `buckets` in order, then drains; returns every story published.
    pub fn run_buckets(&mut self, buckets: Vec<Bucket>) -> Result<Vec<Story>, Error> {
        let mut out = Vec::new();
        for bucket in buckets {
            out.extend(self.correlator.process(&bucket)?);
        }
        out.extend(self.correlator.drain()?);
        Ok(out)
    }

    /// Runs over the events of a JSONL text (the public event format).
    pub fn run_jsonl(&mut self, text: &str) -> Result<Vec<Story>, HarnessError> {
        let events = format::parse_jsonl(text).map_err(HarnessError::Format)?;
        let buckets =
            format::buckets_by_event_time(&self.tenant, 0, events, self.bucket_ms, "line");
        Ok(self.run_buckets(buckets)?)
    }

    /// Runs over the events of a JSONL file.
    pub fn run_jsonl_file(&mut self, path: impl AsRef<Path>) -> Result<Vec<Story>, HarnessError> {
        let text = std::fs::read_to_string(path).map_err(HarnessError::Io)?;
        self.run_jsonl(&text)
    }
}

/// The latest revision of each story, ordered by id: what a consumer that overwrites holds.
pub fn latest_revisions(stories: impl IntoIterator<Item = Story>) -> Vec<Story> {
    let mut latest: BTreeMap<String, Story> = BTreeMap::new();
    for s in stories {
        match latest.get(&s.id) {
            Some(old) if old.revision >= s.revision => {}
            _ => {
                latest.insert(s.id.clone(), s);
            }
        }
    }
    latest.into_values().collect()
}
