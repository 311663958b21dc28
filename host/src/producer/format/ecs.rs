//! Elastic Common Schema documents, one per line, as Elastic Agent and Filebeat write them.
//!
//! The document is already what rules read, so it is the payload as it came. The time is
//! `@timestamp` (required); the kind is `event.dataset`, else `event.kind`, else `ecs`; the
//! source is `--source`, else `observer.name`, `observer.hostname`, `agent.name`, `host.name`,
//! else `ecs`. These names are read nested (`{"event": {"dataset": ..}}`, as Filebeat writes
//! them) or dotted (`{"event.dataset": ..}`, as ECS logging libraries do).

use serde_json::Value;
use storyline_sdk::format::InputEvent;

use super::{Given, json_object, text_at, timestamp_ms};

/// Where the sensor's name may be, most specific first: the observer is the sensor that saw
/// the event; the agent shipped it; the host is where it happened.
const SOURCES: [&str; 4] = ["observer.name", "observer.hostname", "agent.name", "host.name"];

/// Reads one ECS document.
pub(super) fn parse(line: &str, given: &Given) -> Result<InputEvent, String> {
    let doc = json_object(line)?;
    let time = match doc.get("@timestamp") {
        Some(Value::String(ts)) => timestamp_ms("@timestamp", ts, "2026-11-24T13:00:00.123Z")?,
        None => return Err("missing field \"@timestamp\" (every ECS document has one)".into()),
        // Some shippers write epoch milliseconds.
        Some(other) => other.as_i64().ok_or_else(|| {
            format!(
                "field \"@timestamp\" is {other}, expected a time such as \
                 \"2026-11-24T13:00:00.123Z\" or integer epoch milliseconds"
            )
        })?,
    };
    let kind =
        text_at(&doc, "event.dataset").or_else(|| text_at(&doc, "event.kind")).unwrap_or("ecs");
    let source = match &given.source {
        Some(source) => source.clone(),
        None => SOURCES.iter().find_map(|path| text_at(&doc, path)).unwrap_or("ecs").to_string(),
    };
    Ok(InputEvent {
        id: None,
        source,
        kind: kind.to_string(),
        time,
        route: None,
        attributes: Vec::new(),
        payload: line.trim().as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Adapter, Format};

    #[test]
    fn a_filebeat_document_is_its_own_payload() {
        let line = r#"{"@timestamp":"2026-11-24T13:00:00.123Z","event":{"dataset":"zeek.connection","kind":"event","duration":4552763000},"observer":{"name":"edge-fw","hostname":"fw01.corp.example"},"agent":{"name":"filebeat-7"},"host":{"name":"ws-17"},"source":{"ip":"192.0.2.10","port":51514},"destination":{"ip":"198.51.100.20","port":443},"network":{"transport":"tcp"}}"#;
        let e = Adapter::new(Format::Ecs).parse(line, 1).unwrap().unwrap();
        assert_eq!((e.source.as_str(), e.kind.as_str()), ("edge-fw", "zeek.connection"));
        assert_eq!(e.time, 1_795_525_200_123);
        assert_eq!(e.payload, line.as_bytes());
        let ecs = storyline_sdk::ecs::EcsEvent::parse(&e.payload).unwrap();
        assert_eq!(ecs.duration_ms(), 4552);
    }

    #[test]
    fn the_source_and_kind_fall_back_in_order() {
        let parse = |line: &str| Adapter::new(Format::Ecs).parse(line, 1).unwrap().unwrap();
        let agent = parse(
            r#"{"@timestamp":"2026-11-24T13:00:00Z","event":{"kind":"alert"},"agent":{"name":"winlogbeat"},"host":{"name":"ws-17"}}"#,
        );
        assert_eq!((agent.source.as_str(), agent.kind.as_str()), ("winlogbeat", "alert"));
        let dotted =
            parse(r#"{"@timestamp":1795525200123,"host.name":"ws-17","log.level":"info"}"#);
        assert_eq!(
            (dotted.source.as_str(), dotted.kind.as_str(), dotted.time),
            ("ws-17", "ecs", 1_795_525_200_123)
        );
        let bare = parse(r#"{"@timestamp":"2026-11-24T13:00:00Z"}"#);
        assert_eq!((bare.source.as_str(), bare.kind.as_str()), ("ecs", "ecs"));
        let given = Adapter::new(Format::Ecs)
            .source("soc-lab")
            .parse(r#"{"@timestamp":"2026-11-24T13:00:00Z","observer":{"name":"edge-fw"}}"#, 1);
        assert_eq!(given.unwrap().unwrap().source, "soc-lab");
    }

    #[test]
    fn a_document_without_timestamp_is_refused() {
        let err = Adapter::new(Format::Ecs).parse(r#"{"event":{"kind":"event"}}"#, 8).unwrap_err();
        assert_eq!(err.line, 8);
        assert_eq!(err.reason, "missing field \"@timestamp\" (every ECS document has one)");
        let err = Adapter::new(Format::Ecs).parse("[1,2]", 9).unwrap_err();
        assert_eq!(err.reason, "not a JSON object");
    }
}
