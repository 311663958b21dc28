//! `POST /v1/tenants/{tenant}/events`: NDJSON (or one JSON array of events), maybe gzip, stored
//! as `storyline ingest` stores a file; answered once every accepted event is durable.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use serde::Serialize;

use super::error::ApiError;
use super::{Api, join_error};
use crate::cli::{Ingested, InputOptions, ingest_stream};
use crate::store::{Store, StoreError};

/// The answer to an accepted request (200), also when some lines were rejected.
#[derive(Debug, Serialize)]
pub struct IngestAnswer {
    /// The tenant.
    pub tenant: String,
    /// Events stored durably.
    pub accepted: u64,
    /// Lines (or array elements) refused.
    pub rejected: u64,
    /// The first 100 refused lines, with their 1-based number in the body (an array's
    /// element number) and the reason.
    pub rejected_lines: Vec<RejectedLine>,
    /// The tenant's shards and bucket length.
    pub shards: u32,
    /// The tenant's bucket length, ms.
    pub bucket_ms: i64,
    /// The plugin version that computed the routing keys, if any.
    pub routed_by: Option<String>,
}

/// One refused line.
#[derive(Debug, Serialize)]
pub struct RejectedLine {
    /// 1-based line number (element number for a JSON array).
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The handler.
pub async fn post<S: Store>(
    State(api): State<Arc<Api<S>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestAnswer>, ApiError> {
    let tenant = api.authorize(&tenant, &headers)?;
    let limit = api.max_body_bytes;
    let too_large = |what| ApiError::TooLarge { limit, what };
    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(""));
    }
    let gzip = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?")) {
        None => false,
        Some(e) if e.eq_ignore_ascii_case("identity") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => true,
        Some(other) => return Err(ApiError::Encoding(other.to_string())),
    };
    // The whole body is read before anything is stored: a body over the limit stores nothing.
    let mut body_bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadBody(format!("cannot read the request body: {e}")))?;
        if (body_bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large(""));
        }
        body_bytes.extend_from_slice(&chunk);
    }
    let api2 = api.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<IngestAnswer, ApiError> {
        let bytes = if gzip { gunzip(&body_bytes, limit)? } else { body_bytes };
        let lines = as_lines(Bytes::from(bytes))?;
        // Routing calls the tenant's plugin: never on the async runtime's threads.
        let result = ingest_stream(
            &api2.handle,
            &api2.store,
            (&api2.dirs, Some(&api2.catalog)),
            &tenant,
            (std::io::Cursor::new(lines), InputOptions::default().adapter()),
            (None, None),
            (crate::producer::DEFAULT_BATCH, None),
        );
        let Ingested { report, layout } =
            result.map_err(|e| match e.downcast_ref::<StoreError>() {
                Some(_) => ApiError::StoreUnavailable(format!("{e:#}")),
                None => ApiError::Internal(format!("{e:#}")),
            })?;
        Ok(IngestAnswer {
            tenant: tenant.to_string(),
            accepted: report.accepted,
            rejected: report.rejected_count,
            rejected_lines: report
                .rejected
                .iter()
                .map(|e| RejectedLine { line: e.line, reason: e.reason.clone() })
                .collect(),
            shards: layout.shards,
            bucket_ms: layout.bucket_ms,
            routed_by: report.routed_by.clone(),
        })
    })
    .await
    .map_err(join_error)??;
    Ok(Json(answer))
}

/// Decompresses a gzip body, refusing more than `limit` bytes once decompressed (a small body
/// may inflate a thousandfold).
fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body).take(limit + 1).read_to_end(&mut out).map_err(|e| {
        ApiError::BadBody(format!(
            "the body says Content-Encoding: gzip but does not decompress ({e}): send gzip data, or drop the header"
        ))
    })?;
    if out.len() as u64 > limit {
        return Err(ApiError::TooLarge { limit, what: " once decompressed" });
    }
    Ok(out)
}

/// The body as NDJSON: as is, or, when it is one JSON array, one line per element (so that
/// a rejected element is reported by its number).
fn as_lines(body: Bytes) -> Result<Bytes, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Ok(body);
    }
    let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadBody(format!(
            "the body starts with '[' but is not a JSON array of events ({e}); send one JSON array, or one event per line (NDJSON)"
        ))
    })?;
    let mut out = Vec::with_capacity(body.len());
    for element in elements {
        one_line(element.get().as_bytes(), &mut out);
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// Appends `json` without the whitespace outside its strings: a pretty-printed element on one
/// line, every string and number as written.
fn one_line(json: &[u8], out: &mut Vec<u8>) {
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            continue;
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_becomes_one_line_per_element_with_strings_untouched() {
        let body = Bytes::from_static(b" [ {\"a\": \"x y\\\" z\",\n \"b\": [1, 2]},\n 7 ]");
        let lines = as_lines(body).unwrap();
        assert_eq!(&lines[..], b"{\"a\":\"x y\\\" z\",\"b\":[1,2]}\n7\n");
    }

    #[test]
    fn ndjson_is_kept_as_is_and_a_broken_array_is_a_bad_body() {
        let body = Bytes::from_static(b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(as_lines(body.clone()).unwrap(), body);
        let e = as_lines(Bytes::from_static(b"[{\"a\":1},")).unwrap_err();
        assert!(matches!(e, ApiError::BadBody(_)), "got {e:?}");
    }

    #[test]
    fn gzip_is_decompressed_within_the_limit() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[b'x'; 1000]).unwrap();
        let packed = gz.finish().unwrap();
        assert_eq!(gunzip(&packed, 1000).unwrap().len(), 1000);
        let e = gunzip(&packed, 999).unwrap_err();
        assert!(matches!(e, ApiError::TooLarge { .. }), "got {e:?}");
        let e = gunzip(b"not gzip", 1000).unwrap_err();
        assert!(matches!(e, ApiError::BadBody(_)), "got {e:?}");
    }
}
