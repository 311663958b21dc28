//! storyline's own JSONL (README "Event format"): the SDK reads it, so that `ingest`,
//! `plugin test` and the SDK's test harness accept exactly the same lines.

use storyline_sdk::format::{self, FormatError, InputEvent};

/// Reads one line of the event format. Every line is an event: the format has no headers.
pub(super) fn parse(line: &str, line_no: usize) -> Result<InputEvent, FormatError> {
    format::parse_line(line, line_no)
}

#[cfg(test)]
mod tests {
    use super::super::{Adapter, Format};

    #[test]
    fn lines_read_as_the_sdk_reads_them() {
        let line = r#"{"source":"fw-1","kind":"flow","time":1795525200123,"payload":{"a":1}}"#;
        let mut adapter = Adapter::default();
        assert_eq!(adapter.format(), Format::Storyline);
        let event = adapter.parse(line, 3).unwrap().unwrap();
        assert_eq!(event, storyline_sdk::format::parse_line(line, 3).unwrap());
        let err = adapter.parse(r#"{"source":"fw-1","kind":"flow"}"#, 17).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 17: missing field \"time\" (one JSON object per line; see README \"Event format\")"
        );
    }

    #[test]
    fn the_source_option_does_not_change_a_line_that_names_its_own() {
        let line = r#"{"source":"fw-1","kind":"flow","time":1}"#;
        let event =
            Adapter::new(Format::Storyline).source("other").parse(line, 1).unwrap().unwrap();
        assert_eq!(event.source, "fw-1");
    }
}
