//! `GET /v1/tenants/{tenant}/status`: what `storyline status` prints, as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;

use super::Api;
use super::error::ApiError;
use crate::model::ShardId;
use crate::producer::now_ms;
use crate::store::Store;

/// A tenant's status.
#[derive(Debug, Serialize)]
pub struct TenantStatus {
    /// The tenant.
    pub tenant: String,
    /// Its shard count and bucket length; `null` before its first events.
    pub layout: Option<LayoutJson>,
    /// The plugin version served (`name@sha256-prefix`), if one is loaded.
    pub plugin: Option<String>,
    /// The last rejected reload, if the latest attempt failed: when and why.
    pub last_reload_error: Option<ReloadError>,
    /// Dead letters (buckets the plugin failed on), and how many are marked for replay.
    pub dead_letters: usize,
    /// Dead letters marked for replay.
    pub dead_letters_marked_for_replay: usize,
    /// One entry per shard.
    pub shards: Vec<ShardStatus>,
}

/// A tenant's layout.
#[derive(Debug, Serialize)]
pub struct LayoutJson {
    /// Shards.
    pub shards: u32,
    /// Bucket length, ms.
    pub bucket_ms: i64,
}

/// A rejected reload.
#[derive(Debug, Serialize)]
pub struct ReloadError {
    /// When, epoch ms.
    pub at_ms: i64,
    /// Why.
    pub message: String,
}

/// One shard.
#[derive(Debug, Serialize)]
pub struct ShardStatus {
    /// The shard number.
    pub shard: u32,
    /// The worker holding its lease (`host:pid`), `null` when free or lapsed.
    pub owner: Option<String>,
    /// The lease's epoch (0 when never leased).
    pub epoch: u64,
    /// Start of the last committed bucket, epoch ms; `null` before the first commit.
    pub committed_bucket_ms: Option<i64>,
    /// Age of the oldest bucket not yet committed, seconds (0 when nothing waits).
    pub lag_s: f64,
    /// Events stored and not yet committed.
    pub pending_events: u64,
    /// Events written into closed buckets and moved to an open one.
    pub late_events: u64,
}

/// The handler.
pub async fn get<S: Store>(
    State(api): State<Arc<Api<S>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Json<TenantStatus>, ApiError> {
    let tenant = api.authorize(&tenant, &headers)?;
    let store = &api.store;
    let slot = api.catalog.slot(&tenant);
    let plugin_status = slot.status();
    let dead = store.dead_letters(&tenant).await?;
    let layout = store.layout(&tenant).await?;
    let now = now_ms();
    let mut shards = Vec::new();
    for shard in (0..layout.map_or(0, |l| l.shards)).map(ShardId) {
        let lease = store.lease(&tenant, shard).await?;
        let offset = store.committed_offset(&tenant, shard).await?;
        let pending = store.pending_events(&tenant, shard, offset).await?;
        let oldest = store.next_bucket(&tenant, shard, offset).await?;
        let bucket_ms = layout.map_or(0, |l| l.bucket_ms);
        let lag_ms = oldest.map_or(0, |b| (now - b.0 - bucket_ms).max(0));
        let late = store.late_stats(&tenant, shard).await?;
        let live = lease.as_ref().filter(|l| l.expires_ms > now);
        shards.push(ShardStatus {
            shard: shard.0,
            owner: live.map(|l| l.owner.clone()),
            epoch: lease.as_ref().map_or(0, |l| l.epoch),
            committed_bucket_ms: offset.map(|b| b.0),
            lag_s: lag_ms as f64 / 1000.0,
            pending_events: pending,
            late_events: late.events,
        });
    }
    Ok(Json(TenantStatus {
        tenant: tenant.to_string(),
        layout: layout.map(|l| LayoutJson { shards: l.shards, bucket_ms: l.bucket_ms }),
        plugin: slot.active().map(|a| a.plugin.info().label()),
        last_reload_error: plugin_status
            .last_error
            .map(|(at_ms, message)| ReloadError { at_ms, message }),
        dead_letters: dead.len(),
        dead_letters_marked_for_replay: dead.iter().filter(|d| d.replay).count(),
        shards,
    }))
}
