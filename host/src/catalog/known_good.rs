//! The last plugin version that loaded for each tenant, remembered in the data directory.
//!
//! Intake must not depend on the plugin folder being tidy: a half-copied file, a stray second
//! `.wasm` or a broken new version must never stop `storyline ingest` from routing events as
//! the host does. Whenever a version loads (and passes `init`), its bytes are kept under their
//! SHA-256 (`plugins/<sha256>.wasm`, one copy however many tenants run it) and the tenant's
//! record (`tenants/<tenant>.json`) names it with its configuration and the file it came from.
//! A standalone `ingest` that cannot use the folder routes with that version and says so.
//!
//! Files are written to a temporary name and renamed, so a reader sees a whole record or the
//! previous one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::TenantId;

/// The directory of remembered versions (`<data-dir>/cache/known-good`).
#[derive(Debug, Clone)]
pub struct KnownGood {
    dir: PathBuf,
}

/// A tenant's last version that loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The file in the plugin folder it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// The configuration passed to its `init`.
    pub config: String,
}

impl KnownGood {
    /// Remembered versions in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KnownGood { dir: dir.into() }
    }

    fn record(&self, tenant: &TenantId) -> PathBuf {
        self.dir.join("tenants").join(format!("{tenant}.json"))
    }

    /// The kept copy of the component with this hash.
    pub fn copy(&self, sha256: &str) -> PathBuf {
        self.dir.join("plugins").join(format!("{sha256}.wasm"))
    }

    /// The tenant's last version that loaded, if one was remembered and its copy is there.
    pub fn recall(&self, tenant: &TenantId) -> Option<Remembered> {
        let text = std::fs::read(self.record(tenant)).ok()?;
        let remembered: Remembered = serde_json::from_slice(&text).ok()?;
        let valid_hash = remembered.sha256.len() == 64
            && remembered.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        (valid_hash && self.copy(&remembered.sha256).is_file()).then_some(remembered)
    }

    /// Remembers that `bytes` (from `path`, with `config`) loaded for `tenant`. Does nothing
    /// when that is already the record.
    pub fn remember(
        &self,
        tenant: &TenantId,
        bytes: &[u8],
        remembered: &Remembered,
    ) -> std::io::Result<()> {
        if self.recall(tenant).as_ref() == Some(remembered) {
            return Ok(());
        }
        let copy = self.copy(&remembered.sha256);
        if !copy.is_file() {
            write_atomically(&copy, bytes)?;
        }
        let text = serde_json::to_vec_pretty(remembered).map_err(std::io::Error::other)?;
        write_atomically(&self.record(tenant), &text)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join(format!("storyline-known-good-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_remembered_version_is_recalled_with_its_copy_and_a_missing_copy_recalls_nothing() {
        let dir = scratch("recall");
        let known = KnownGood::new(&dir);
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(known.recall(&acme), None);
        let r = Remembered {
            path: "plugins/acme/rules.wasm".into(),
            sha256: "ab".repeat(32),
            config: "{\"gap_ms\": 1}".into(),
        };
        known.remember(&acme, b"component bytes", &r).unwrap();
        assert_eq!(known.recall(&acme), Some(r.clone()));
        assert_eq!(std::fs::read(known.copy(&r.sha256)).unwrap(), b"component bytes");
        assert_eq!(known.recall(&TenantId::new("beta").unwrap()), None);
        std::fs::remove_file(known.copy(&r.sha256)).unwrap();
        assert_eq!(known.recall(&acme), None, "a record whose copy is gone is no help");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
