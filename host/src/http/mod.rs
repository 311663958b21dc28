//! The HTTP API of `storyline run` (`--http-addr`, or `[http] listen`): events in, stories
//! and status out, health, and the Prometheus metrics, on the host's tokio runtime.
//!
//! A thin adapter: every route calls the logic the command line uses (`ingest_stream`, the
//! store's reads, [`crate::metrics::render`]) and maps its outcome to a status code
//! ([`ApiError`]). Nothing here runs a guest on the runtime's threads: ingest routes events
//! with the tenant's plugin, so it runs on the blocking pool.
//!
//! Routes:
//! - `POST /v1/tenants/{tenant}/events` ([`events`]), `GET /v1/tenants/{tenant}/stories`
//!   ([`stories`]), `GET /v1/tenants/{tenant}/status` ([`status`]): a bearer token of the
//!   tenant ([`auth`]).
//! - `POST /v1/tenants/{tenant}/replay` ([`page::replay`]): the tenant's token.
//! - `GET /` (the status page, [`page`]), `GET /v1/overview` (what it shows), `GET /healthz`
//!   (200 while serving), `GET /readyz` (200 once every tenant is started), `GET /metrics`:
//!   no token.

pub mod auth;
pub mod error;
pub mod events;
pub mod page;
pub mod status;
pub mod stories;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::catalog::Catalog;
use crate::cli::Dirs;
use crate::model::TenantId;
use crate::store::Store;
use crate::worker::Progress;

/// The largest request body when `[http] max_body_bytes` is not set: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 << 20;

/// What every route reads: the host's store, catalog and counters.
#[allow(missing_debug_implementations)] // holds the store
pub struct Api<S: Store> {
    /// The store events go to and stories come from.
    store: S,
    /// The directories and the configuration file (tenants, layouts of new tenants).
    dirs: Dirs,
    /// The plugin versions served: ingest routes with them, status reports them.
    catalog: Arc<Catalog>,
    /// The run's counters, for `/metrics`.
    progress: Arc<Progress>,
    /// The runtime the store's futures need when called from the blocking pool.
    handle: tokio::runtime::Handle,
    /// Every tenant's token hashes.
    tokens: auth::Tokens,
    /// Largest request body, bytes (also once decompressed).
    max_body_bytes: u64,
    /// Set once every tenant is started (`/readyz`).
    ready: Arc<AtomicBool>,
    /// Set when the host stops: follow streams end, the server stops accepting.
    shutdown: Arc<AtomicBool>,
}

impl<S: Store> Api<S> {
    /// The API of a host. `ready` is set by the host once every tenant is started;
    /// `shutdown` when it stops.
    pub fn new(
        (store, dirs, catalog): (S, Dirs, Arc<Catalog>),
        progress: Arc<Progress>,
        handle: tokio::runtime::Handle,
        (ready, shutdown): (Arc<AtomicBool>, Arc<AtomicBool>),
    ) -> Arc<Self> {
        let tokens = auth::Tokens::from_config(&dirs.config);
        let max_body_bytes = dirs.config.http.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        Arc::new(Api {
            store,
            dirs,
            catalog,
            progress,
            handle,
            tokens,
            max_body_bytes,
            ready,
            shutdown,
        })
    }

    /// The tenant named in the path, when the request's bearer token is one of its tokens.
    fn authorize(&self, name: &str, headers: &HeaderMap) -> Result<TenantId, ApiError> {
        let tenant = TenantId::new(name).map_err(|e| {
            ApiError::BadTenant(format!("{e} (the path is /v1/tenants/<tenant>/...)"))
        })?;
        let known = self.dirs.config.tenant(&tenant).is_some()
            || self.dirs.plugins.join(tenant.as_str()).is_dir();
        self.tokens.authorize(&tenant, headers, known)?;
        Ok(tenant)
    }
}

/// Every route.
pub fn router<S: Store>(api: Arc<Api<S>>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/events", post(events::post::<S>))
        .route("/v1/tenants/{tenant}/stories", get(stories::get::<S>))
        .route("/v1/tenants/{tenant}/status", get(status::get::<S>))
        .route("/v1/tenants/{tenant}/replay", post(page::replay::<S>))
        .route("/v1/overview", get(page::overview::<S>))
        .route("/", get(page::page))
        // The events route enforces `max_body_bytes` itself, with a message saying so.
        .layer(DefaultBodyLimit::disable())
        .with_state(api.clone())
        .merge(operations_router(api))
}

/// Health, readiness and metrics only: what `--metrics-addr` serves.
pub fn operations_router<S: Store>(api: Arc<Api<S>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "serving\n" }))
        .route("/readyz", get(readyz::<S>))
        .with_state(api.clone())
        .merge(crate::metrics::router(move || {
            crate::metrics::render(&api.handle, &api.store, &api.catalog, &api.progress)
        }))
}

async fn readyz<S: Store>(State(api): State<Arc<Api<S>>>) -> impl IntoResponse {
    if api.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: not every tenant is started yet\n")
    }
}

/// A task of the blocking pool that panicked or was cancelled.
fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("the request's task failed: {e}"))
}

/// Listens on `addr` and serves `router` on the runtime of `handle` until `shutdown` is set.
/// Returns the bound address (`addr` may have port 0).
pub fn serve(
    handle: &tokio::runtime::Handle,
    addr: SocketAddr,
    router: Router,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = {
        let _entered = handle.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    handle.spawn(async move {
        let stop = async move {
            while !shutdown.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
            tracing::warn!("HTTP server at {bound}: {e}");
        }
    });
    Ok(bound)
}
