//! Bearer tokens: each tenant's are listed in the configuration file as their SHA-256; a
//! request's token is hashed and compared, in constant time, with every tenant's hashes.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::Config;
use crate::model::TenantId;

/// Every tenant's token hashes, read once from the configuration file.
#[derive(Debug, Default)]
pub struct Tokens {
    /// (tenant, SHA-256 of one of its tokens); a tenant with several tokens appears once per
    /// token.
    hashes: Vec<(TenantId, [u8; 32])>,
}

impl Tokens {
    /// The hashes of the file's `[tenants.<name>] tokens` (the file was checked on load, so
    /// every entry is `sha256:` and 64 hex digits; anything else is skipped).
    pub fn from_config(config: &Config) -> Tokens {
        let mut hashes = Vec::new();
        for (name, t) in &config.tenants {
            let Ok(tenant) = TenantId::new(name) else { continue };
            for token in t.tokens.iter().flatten() {
                if let Some(hash) = token.strip_prefix("sha256:").and_then(decode_hex) {
                    hashes.push((tenant.clone(), hash));
                }
            }
        }
        Tokens { hashes }
    }

    /// Whether `tenant` has at least one token.
    fn has_tokens(&self, tenant: &TenantId) -> bool {
        self.hashes.iter().any(|(t, _)| t == tenant)
    }

    /// Allows the request when its bearer token is one of `tenant`'s. `known`: whether the
    /// tenant exists (plugin folder or configuration); it is told only to a caller holding a
    /// valid token, so that tenant names cannot be probed without one.
    pub fn authorize(
        &self,
        tenant: &TenantId,
        headers: &HeaderMap,
        known: bool,
    ) -> Result<(), ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(ApiError::NoToken { tenant: tenant.clone() });
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every hash is compared (no early exit), each in constant time.
        let mut own = false;
        let mut other = false;
        for (t, hash) in &self.hashes {
            let equal = constant_time_eq(hash, &presented);
            if t == tenant {
                own |= equal;
            } else {
                other |= equal;
            }
        }
        if own {
            return Ok(());
        }
        if other {
            return Err(if known {
                ApiError::OtherTenant { tenant: tenant.clone() }
            } else {
                ApiError::UnknownTenant { tenant: tenant.clone() }
            });
        }
        if known && !self.has_tokens(tenant) {
            return Err(ApiError::NoTokensConfigured { tenant: tenant.clone() });
        }
        Err(ApiError::BadToken { tenant: tenant.clone() })
    }
}

/// Equal bytes, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 64 hex digits as 32 bytes.
fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::http::HeaderValue;

    use super::*;
    use crate::config::hash_token;

    fn tokens() -> Tokens {
        let text = format!(
            "[tenants.acme]\ntokens = [{:?}, {:?}]\n[tenants.beta]\ntokens = [{:?}]\n[tenants.open]\nshards = 2\n",
            hash_token("acme-1"),
            hash_token("acme-2"),
            hash_token("beta-1"),
        );
        Tokens::from_config(&Config::parse(&text, Path::new("storyline.toml")).unwrap())
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        h
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn each_of_a_tenants_tokens_opens_it() {
        let t = tokens();
        assert!(t.authorize(&tenant("acme"), &bearer("acme-1"), true).is_ok());
        assert!(t.authorize(&tenant("acme"), &bearer("acme-2"), true).is_ok());
    }

    #[test]
    fn a_missing_or_wrong_token_is_unauthorized() {
        let t = tokens();
        let e = t.authorize(&tenant("acme"), &HeaderMap::new(), true).unwrap_err();
        assert!(matches!(e, ApiError::NoToken { .. }), "got {e:?}");
        let e = t.authorize(&tenant("acme"), &bearer("nope"), true).unwrap_err();
        assert!(matches!(e, ApiError::BadToken { .. }), "got {e:?}");
    }

    #[test]
    fn another_tenants_token_is_forbidden_and_tells_unknown_tenants_apart() {
        let t = tokens();
        let e = t.authorize(&tenant("beta"), &bearer("acme-1"), true).unwrap_err();
        assert!(matches!(e, ApiError::OtherTenant { .. }), "got {e:?}");
        let e = t.authorize(&tenant("ghost"), &bearer("acme-1"), false).unwrap_err();
        assert!(matches!(e, ApiError::UnknownTenant { .. }), "got {e:?}");
        // Without a valid token, an unknown tenant looks like any other.
        let e = t.authorize(&tenant("ghost"), &bearer("nope"), false).unwrap_err();
        assert!(matches!(e, ApiError::BadToken { .. }), "got {e:?}");
    }

    #[test]
    fn a_tenant_without_tokens_is_closed_and_says_how_to_add_one() {
        let e = tokens().authorize(&tenant("open"), &bearer("anything"), true).unwrap_err();
        assert!(matches!(e, ApiError::NoTokensConfigured { .. }), "got {e:?}");
        assert!(e.to_string().contains("storyline config hash-token"), "{e}");
    }
}
