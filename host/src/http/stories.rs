//! `GET /v1/tenants/{tenant}/stories`: published stories as JSON lines; with `follow=true`,
//! server-sent events, one story revision per event, as `storyline stories --follow` prints
//! them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Api;
use super::error::ApiError;
use crate::model::TenantId;
use crate::producer::now_ms;
use crate::store::Store;

/// How far back each follow poll looks, ms: a revision is stamped when it is published and
/// may become visible a little later (as `stories --follow`).
const FOLLOW_MARGIN_MS: i64 = 5_000;

/// Time between follow polls.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// The query string.
#[derive(Debug, Deserialize)]
pub struct StoriesQuery {
    /// Only revisions published at or after this time, epoch ms (every revision).
    since: Option<i64>,
    /// Every revision, not only the latest of each story (ignored with `since`).
    #[serde(default)]
    all: bool,
    /// Keep the response open and send each new revision as a server-sent event.
    #[serde(default)]
    follow: bool,
}

/// The handler.
pub async fn get<S: Store>(
    State(api): State<Arc<Api<S>>>,
    Path(tenant): Path<String>,
    Query(query): Query<StoriesQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = api.authorize(&tenant, &headers)?;
    if query.follow {
        return Ok(follow(api, tenant, query.since.unwrap_or(0)).into_response());
    }
    let stories = match query.since {
        Some(ms) => api.store.stories_since(&tenant, ms).await?,
        None => api.store.stories(&tenant, query.all).await?,
    };
    let mut body = String::new();
    for s in stories {
        body.push_str(&s.story.to_json());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// What a follow stream carries between polls.
struct Following<S: Store> {
    api: Arc<Api<S>>,
    tenant: TenantId,
    /// The next poll asks for revisions published since this time.
    since: i64,
    /// Lines sent, with when they were fetched, while a poll may return them again.
    sent: HashMap<String, i64>,
    /// Lines fetched and not sent yet.
    queue: VecDeque<String>,
    /// Whether the next poll waits first.
    wait: bool,
}

/// Every revision since `since`, then each new one, until the client leaves or the host stops.
fn follow<S: Store>(
    api: Arc<Api<S>>,
    tenant: TenantId,
    since: i64,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let state =
        Following { api, tenant, since, sent: HashMap::new(), queue: VecDeque::new(), wait: false };
    let stream = futures_util::stream::unfold(Some(state), |state| async move {
        let mut f = state?;
        loop {
            if let Some(line) = f.queue.pop_front() {
                return Some((Ok(Event::default().event("story").data(line)), Some(f)));
            }
            if f.api.shutdown.load(Ordering::Relaxed) {
                return None;
            }
            if f.wait {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
            f.wait = true;
            let fetched_at = now_ms();
            match f.api.store.stories_since(&f.tenant, f.since).await {
                Ok(stories) => {
                    for s in stories {
                        let line = s.story.to_json();
                        if !f.sent.contains_key(&line) {
                            f.sent.insert(line.clone(), fetched_at);
                            f.queue.push_back(line);
                        }
                    }
                    f.since = fetched_at - FOLLOW_MARGIN_MS;
                    let since = f.since;
                    f.sent.retain(|_, at| *at >= since);
                }
                Err(e) => {
                    let event = Event::default()
                        .event("error")
                        .data(format!("store unavailable: {e}; reconnect with since={}", f.since));
                    return Some((Ok(event), None));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
