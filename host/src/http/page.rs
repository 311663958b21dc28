//! The status page at `/`: one HTML file shipped in the binary (no build step), polling
//! `GET /v1/overview` every 2 s and drawing each shard's lag over the last minutes; a tenant's
//! recent stories and its dead letters' replay need the tenant's token
//! (`POST /v1/tenants/{tenant}/replay`).
//!
//! The overview shows what `/metrics` shows (tenant names, plugin versions, reload errors,
//! lag, dead letters): no token, like `/metrics`. Serve the API on an address only operators
//! reach, or put it behind a proxy, when that must stay private.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::Api;
use super::error::ApiError;
use crate::model::ShardId;
use crate::producer::now_ms;
use crate::store::Store;

/// The page.
const PAGE: &str = include_str!("page.html");

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// Every tenant the host knows, with its plugin and its shards' lag.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// When this was read, epoch ms.
    pub at_ms: i64,
    /// By tenant name.
    pub tenants: Vec<TenantOverview>,
}

/// One tenant in the overview.
#[derive(Debug, Serialize)]
pub struct TenantOverview {
    /// The tenant.
    pub tenant: String,
    /// The plugin version served (`name@sha256-prefix`), if one is loaded.
    pub plugin: Option<String>,
    /// The last rejected plugin file, if the latest reload failed: when and why.
    pub last_reload_error: Option<super::status::ReloadError>,
    /// Other `.wasm` files of the tenant's folder, ignored.
    pub ignored_files: Vec<String>,
    /// Dead letters not replayed yet.
    pub dead_letters: usize,
    /// One entry per shard (none before the tenant's first events).
    pub shards: Vec<ShardLag>,
}

/// A shard's lag.
#[derive(Debug, Serialize)]
pub struct ShardLag {
    /// The shard number.
    pub shard: u32,
    /// Age of the oldest bucket not yet committed, seconds.
    pub lag_s: f64,
    /// Events stored and not yet committed.
    pub pending_events: u64,
}

/// `GET /v1/overview`.
pub async fn overview<S: Store>(
    State(api): State<Arc<Api<S>>>,
) -> Result<Json<Overview>, ApiError> {
    let now = now_ms();
    let mut slots = api.catalog.slots();
    slots.sort_by(|a, b| a.tenant().cmp(b.tenant()));
    let mut tenants = Vec::new();
    for slot in slots {
        let tenant = slot.tenant();
        let status = slot.status();
        let store = &api.store;
        let mut shards = Vec::new();
        let mut dead_letters = 0;
        if let Some(layout) = store.layout(tenant).await? {
            dead_letters = store.dead_letters(tenant).await?.len();
            for shard in (0..layout.shards).map(ShardId) {
                let offset = store.committed_offset(tenant, shard).await?;
                let oldest = store.next_bucket(tenant, shard, offset).await?;
                let lag_ms = oldest.map_or(0, |b| (now - b.0 - layout.bucket_ms).max(0));
                shards.push(ShardLag {
                    shard: shard.0,
                    lag_s: lag_ms as f64 / 1000.0,
                    pending_events: store.pending_events(tenant, shard, offset).await?,
                });
            }
        }
        tenants.push(TenantOverview {
            tenant: tenant.to_string(),
            plugin: slot.active().map(|a| a.plugin.info().label()),
            last_reload_error: status
                .last_error
                .map(|(at_ms, message)| super::status::ReloadError { at_ms, message }),
            ignored_files: status.ignored.iter().map(|p| p.display().to_string()).collect(),
            dead_letters,
            shards,
        });
    }
    Ok(Json(Overview { at_ms: now, tenants }))
}

/// What `POST /v1/tenants/{tenant}/replay` answers.
#[derive(Debug, Serialize)]
pub struct Replayed {
    /// Dead letters newly marked for replay.
    pub marked: usize,
}

/// `POST /v1/tenants/{tenant}/replay`: marks the tenant's dead letters for replay, as
/// `storyline replay` does; the running workers process them within seconds.
pub async fn replay<S: Store>(
    State(api): State<Arc<Api<S>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Replayed>, ApiError> {
    let tenant = api.authorize(&tenant, &headers)?;
    let mut marked = 0;
    for letter in api.store.dead_letters(&tenant).await?.into_iter().filter(|l| !l.replay) {
        let letter = crate::store::DeadLetter { replay: true, ..letter };
        api.store.put_dead_letter(&tenant, &letter).await?;
        marked += 1;
    }
    Ok(Json(Replayed { marked }))
}
