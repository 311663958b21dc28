//! What a request can fail on, each with its status code and a message that says what to fix.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::model::TenantId;

/// A refused or failed request. The JSON body is `{"error": "<kind>", "message": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The tenant in the path is not a tenant name (400).
    #[error("{0}")]
    BadTenant(String),
    /// The body is not NDJSON, a JSON array, or gzip of either (400).
    #[error("{0}")]
    BadBody(String),
    /// A query parameter is not understood (400).
    #[error("{0}")]
    BadQuery(String),
    /// No `Authorization: Bearer` header (401).
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` with a token of tenant {tenant} (its SHA-256 is in [tenants.{tenant}] tokens)"
    )]
    NoToken {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The tenant has no `tokens` in the configuration file: it is closed (401).
    #[error(
        "tenant {tenant} has no tokens configured, so nobody may use it over HTTP: run `storyline config hash-token` (it reads the token on stdin), add its output as tokens = [\"sha256:...\"] under [tenants.{tenant}] in the configuration file, and restart `storyline run`"
    )]
    NoTokensConfigured {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The token is no tenant's (401).
    #[error(
        "the bearer token is not valid for tenant {tenant}: check it against the hashes in [tenants.{tenant}] tokens (`storyline config hash-token` prints a token's hash)"
    )]
    BadToken {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The token belongs to another tenant (403).
    #[error(
        "the bearer token belongs to another tenant and cannot read or write tenant {tenant}: use a token listed in [tenants.{tenant}] tokens"
    )]
    OtherTenant {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The tenant is neither in the plugin directory nor in the configuration file (404).
    #[error(
        "unknown tenant {tenant}: it has no folder in the plugin directory and no [tenants.{tenant}] section in the configuration file"
    )]
    UnknownTenant {
        /// The tenant asked for.
        tenant: TenantId,
    },
    /// The body is over `[http] max_body_bytes` (413).
    #[error(
        "the body is over the limit of {limit} bytes{what}: split the events into smaller requests, or raise [http] max_body_bytes"
    )]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
        /// Empty, or " once decompressed".
        what: &'static str,
    },
    /// A `Content-Encoding` other than gzip (415).
    #[error("Content-Encoding {0:?} is not supported: send the body as is, or gzip it")]
    Encoding(String),
    /// The store could not be read or written (503): nothing of the request was acknowledged.
    #[error("store unavailable, nothing acknowledged; send the request again: {0}")]
    StoreUnavailable(String),
    /// Anything else (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status code and the short name of the kind.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadTenant(_) => (StatusCode::BAD_REQUEST, "bad_tenant"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::NoToken { .. } => (StatusCode::UNAUTHORIZED, "no_token"),
            ApiError::NoTokensConfigured { .. } => {
                (StatusCode::UNAUTHORIZED, "no_tokens_configured")
            }
            ApiError::BadToken { .. } => (StatusCode::UNAUTHORIZED, "bad_token"),
            ApiError::OtherTenant { .. } => (StatusCode::FORBIDDEN, "other_tenant"),
            ApiError::UnknownTenant { .. } => (StatusCode::NOT_FOUND, "unknown_tenant"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Encoding(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::StoreUnavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        let body = serde_json::json!({ "error": kind, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_store_is_a_503_that_says_nothing_was_acknowledged() {
        let failed = crate::store::StoreError::Backend {
            backend: "scylla",
            message: "all nodes are down".into(),
        };
        let error = ApiError::from(failed);
        assert_eq!(error.status(), (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"));
        let message = error.to_string();
        assert!(message.contains("all nodes are down"), "{message}");
        assert!(message.contains("nothing acknowledged; send the request again"), "{message}");
        assert_eq!(error.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
