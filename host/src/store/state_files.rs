//! Plugin states of the embedded store, one file per committed state:
//! `<tenant>/states/<shard>-<seq>`.
//!
//! A live shard's state is tens of megabytes, rewritten at every checkpoint. In the LSM tree it
//! was written twice (journal, then table) and kept in stale versions until compaction: 2.4
//! bytes written per byte of state, and a gigabyte of directory for 200 MB of live states. A
//! file is written once, and the previous one deleted as soon as the new one is committed.
//!
//! A commit writes and syncs the file (and its directory entry) first; the fjall batch that
//! moves the offset then names it. A crash in between leaves a file nobody names, deleted when
//! the tenant is next opened. What must stay true: a file is complete and durable before any
//! committed offset names it, and the named file is never deleted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::model::ShardId;

/// Which file holds a shard's committed state, as the `state_files` keyspace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The file's sequence number, unique within the tenant.
    pub seq: u64,
    /// Its length: a shorter file is reported, never restored.
    pub len: u64,
}

/// The `states` directory of one tenant.
#[derive(Debug)]
pub struct StateFiles {
    /// `<tenant>/states`.
    dir: PathBuf,
    /// The next sequence number: above every file found when the tenant was opened.
    next: AtomicU64,
}

impl StateFiles {
    /// Opens (creating) `dir`, deleting every file no committed offset names: `named` gives
    /// the file a shard's commit names, if any.
    pub fn open(
        dir: &Path,
        named: impl Fn(ShardId) -> Option<StateFile>,
    ) -> std::io::Result<StateFiles> {
        std::fs::create_dir_all(dir)?;
        let mut highest = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            if let Some((_, seq)) = parsed {
                highest = highest.max(seq);
            }
            let kept =
                parsed.is_some_and(|(shard, seq)| named(shard).is_some_and(|f| f.seq == seq));
            if !kept {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(StateFiles { dir: dir.to_path_buf(), next: AtomicU64::new(highest + 1) })
    }

    fn path(&self, shard: ShardId, seq: u64) -> PathBuf {
        self.dir.join(format!("{}-{seq}", shard.0))
    }

    /// Writes `state` to a new file of `shard`, durably (data and directory entry).
    pub fn write(&self, shard: ShardId, state: &[u8]) -> std::io::Result<StateFile> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut file = std::fs::File::create_new(self.path(shard, seq))?;
        file.write_all(state)?;
        file.sync_data()?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(StateFile { seq, len: state.len() as u64 })
    }

    /// The contents of `file`; an error if it is missing or shorter than recorded.
    pub fn read(&self, shard: ShardId, file: StateFile) -> std::io::Result<Vec<u8>> {
        let path = self.path(shard, file.seq);
        let bytes = std::fs::read(&path)?;
        if bytes.len() as u64 != file.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} has {} bytes, its commit recorded {}",
                    path.display(),
                    bytes.len(),
                    file.len
                ),
            ));
        }
        Ok(bytes)
    }

    /// Deletes a file no longer named (replaced, or its commit was refused). Space only: a
    /// failure is logged, and the file is deleted when the tenant is next opened.
    pub fn remove(&self, shard: ShardId, file: StateFile) {
        let path = self.path(shard, file.seq);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "an unused plugin state file was not deleted");
        }
    }
}

/// `<shard>-<seq>` → (shard, seq).
fn parse_name(name: &str) -> Option<(ShardId, u64)> {
    let (shard, seq) = name.split_once('-')?;
    Some((ShardId(shard.parse().ok()?), seq.parse().ok()?))
}
