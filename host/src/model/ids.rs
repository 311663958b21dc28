//! Identifiers. Each is its own type so that a shard cannot be passed where a bucket start is
//! expected, and a tenant name is validated once, where it enters the system.

use std::fmt;

/// A tenant: one isolated customer. Lowercase letters, digits, `-` and `_`, 1 to 48 bytes,
/// starting with a letter, because it names a directory and (with `-` as `_`) a CQL keyspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

/// A tenant name that breaks the rules above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant \"{0}\": use 1 to 48 lowercase letters, digits, '-' or '_', starting with a letter"
)]
pub struct InvalidId(pub String);

impl TenantId {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidId> {
        let ok = !name.is_empty()
            && name.len() <= 48
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok { Ok(TenantId(name.to_string())) } else { Err(InvalidId(name.to_string())) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

/// A shard of a tenant's event stream; events of one story are routed to one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The start of a time bucket, epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketStart(pub i64);

impl fmt::Display for BucketStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&storyline_sdk::format::format_rfc3339(self.0))
    }
}

/// The deterministic id of a story, chosen by the plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoryId(pub String);

impl fmt::Display for StoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked() {
        for good in ["acme", "acme-corp", "a1_b2", &"a".repeat(48)] {
            assert!(TenantId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "1acme", "acme corp", "../etc", "a/b", &"a".repeat(49)] {
            assert_eq!(TenantId::new(bad), Err(InvalidId(bad.to_string())));
        }
    }
}
