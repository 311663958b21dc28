//! Compiled components on disk, so that a restart does not recompile (a 300 KB component takes
//! a few hundred milliseconds to compile; loading the compiled artefact takes about one).
//!
//! An entry is named by the SHA-256 of the component and wasmtime's compatibility hash of the
//! engine configuration, so a changed file, a new wasmtime or other engine settings miss the
//! cache instead of loading incompatible code. Entries are written to a temporary name and
//! renamed, so a crash never leaves a half-written entry under a valid name.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the cache.
    Cached,
    /// Compiled now (and stored, if the cache is writable).
    Compiled,
    /// Already loaded in this process from the same bytes (for another tenant or path).
    Shared,
}

impl ComponentCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ComponentCache { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, engine: &Engine, sha256_hex: &str) -> PathBuf {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir.join(format!("{sha256_hex}-{:016x}.cwasm", h.finish()))
    }

    /// The compiled component for `bytes`, from the cache or compiled now and stored.
    /// A cache that cannot be read or written is logged and bypassed, never fatal.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256_hex: &str,
    ) -> wasmtime::Result<(Component, Origin)> {
        let entry = self.entry(engine, sha256_hex);
        // Read into memory rather than map the file: a mapped entry that someone truncates or
        // rewrites in place would crash the process (SIGBUS) when its code runs.
        if let Ok(compiled) = std::fs::read(&entry) {
            // SAFETY: wasmtime requires that deserialised bytes were produced by a compatible
            // `Component::serialize`. Entries in this directory are only written by `store` below,
            // named by the engine's compatibility hash, and renamed into place only when complete;
            // wasmtime also checks the header and engine settings and rejects a mismatch. The
            // directory belongs to the operator running storyline (see README "Plugins").
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize(engine, &compiled) };
            match loaded {
                Ok(component) => return Ok((component, Origin::Cached)),
                Err(e) => tracing::warn!(
                    entry = %entry.display(),
                    "ignoring unreadable compiled-component cache entry, recompiling: {e:#}"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&component, &entry) {
            tracing::warn!(
                dir = %self.dir.display(),
                "cannot store compiled component in cache (the next start compiles again): {e:#}"
            );
        }
        Ok((component, Origin::Compiled))
    }

    fn store(&self, component: &Component, entry: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, entry)?;
        Ok(())
    }
}
