//! `storyline stories` and `storyline status`.

use std::collections::HashMap;
use std::io::Write;

use super::{Dirs, tenant_arg};
use crate::model::{ShardId, TenantId};
use crate::producer::now_ms;
use crate::store::{DeadLetter, Store};
use storyline_sdk::format::format_rfc3339;

/// Which stories to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// The latest revision of each story, by id.
    Latest,
    /// Every revision, by id then revision.
    All,
    /// Every revision published at or after this time (epoch ms), in publication order.
    Since(i64),
}

/// Writes the tenant's stories as JSONL.
pub fn write_stories<S: Store + Sync>(
    handle: &tokio::runtime::Handle,
    store: &S,
    tenant: &TenantId,
    listing: Listing,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let stories = match listing {
        Listing::Latest => handle.block_on(store.stories(tenant, false))?,
        Listing::All => handle.block_on(store.stories(tenant, true))?,
        Listing::Since(ms) => handle.block_on(store.stories_since(tenant, ms))?,
    };
    for s in stories {
        out.write_all(s.story.to_json().as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// How far back each `--follow` poll looks: a revision is stamped when it is published and may
/// become visible a little later.
const FOLLOW_MARGIN_MS: i64 = 5_000;

/// Prints the tenant's published stories (through the running worker's socket when it owns
/// the embedded store). `follow` prints every revision, then each new one as it is published:
/// each poll asks only for what was published since the previous one (less a margin; lines
/// already printed are not printed again).
pub fn stories<S: Store + Clone + Sync>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
    all: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    let mut listing = if all || follow { Listing::All } else { Listing::Latest };
    // Lines printed, with when they were fetched (this host's clock), while a poll may return
    // them again.
    let mut printed: HashMap<String, i64> = HashMap::new();
    let mut waiting = false;
    loop {
        let fetched_at = now_ms();
        let lines = match super::ingest_socket::connect(dirs) {
            Some(socket) => Some(super::ingest_socket::query_stories(socket, &tenant, listing)?),
            // The embedded store belongs to one process: list once, then let it go (a `run`
            // may start on it) and follow through the running process only.
            None if store.shared() || !matches!(listing, Listing::Since(_)) => {
                let mut buf = Vec::new();
                write_stories(rt.handle(), store, &tenant, listing, &mut buf)?;
                store.release(&tenant);
                Some(String::from_utf8_lossy(&buf).into_owned())
            }
            None => {
                if !waiting {
                    eprintln!(
                        "following: waiting for `storyline run` on this data directory (it owns the embedded store)"
                    );
                    waiting = true;
                }
                None
            }
        };
        if let Some(lines) = lines {
            waiting = false;
            let mut out = std::io::stdout().lock();
            for line in lines.lines() {
                if !printed.contains_key(line) {
                    writeln!(out, "{line}")?;
                    if follow {
                        printed.insert(line.to_string(), fetched_at);
                    }
                }
            }
            out.flush()?;
            let since = fetched_at - FOLLOW_MARGIN_MS;
            printed.retain(|_, at| *at >= since);
            listing = Listing::Since(since);
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Marks every dead letter of the tenant for replay: the worker of each shard processes the
/// bucket again (with the plugin version it runs now) and removes the letter.
pub fn replay<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    here_or_by_socket(dirs, "replay", &tenant, |out| mark_replay(rt.handle(), store, &tenant, out))
}

/// Runs `local` on stdout, or, when a running `storyline run` owns the embedded store, asks it
/// to run `command` and prints its answer.
fn here_or_by_socket(
    dirs: &Dirs,
    command: &str,
    tenant: &TenantId,
    local: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(socket) = super::ingest_socket::connect(dirs) {
        print!("{}", super::ingest_socket::query(socket, command, tenant)?);
        return Ok(());
    }
    local(&mut std::io::stdout().lock())
}

/// Flags the tenant's dead letters for replay and says how many.
pub fn mark_replay<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    tenant: &TenantId,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let letters = handle.block_on(store.dead_letters(tenant))?;
    let mut marked = 0;
    for letter in letters.into_iter().filter(|l| !l.replay) {
        handle.block_on(store.put_dead_letter(tenant, &DeadLetter { replay: true, ..letter }))?;
        marked += 1;
    }
    writeln!(
        out,
        "{marked} dead letters of tenant {tenant} marked for replay; the running workers process them within seconds (or start `storyline run`)"
    )?;
    Ok(())
}

/// Prints the tenant's shards: owner, committed bucket, lag, dead letters.
pub fn status<S: Store + Clone>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    dirs: &Dirs,
    tenant: &str,
) -> anyhow::Result<()> {
    let tenant = tenant_arg(tenant)?;
    here_or_by_socket(dirs, "status", &tenant, |out| {
        write_status(rt.handle(), store, &dirs.data, &tenant, out)
    })
}

/// Writes the status table of a tenant.
pub fn write_status<S: Store>(
    handle: &tokio::runtime::Handle,
    store: &S,
    data_dir: &std::path::Path,
    tenant: &TenantId,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let Some(layout) = handle.block_on(store.layout(tenant))? else {
        // A shared store is the ScyllaDB one: the data directory holds none of its data.
        if store.shared() {
            let place = store.place_of(tenant).unwrap_or_else(|| "the store".into());
            anyhow::bail!("tenant {tenant} has no events in {place}");
        }
        anyhow::bail!("tenant {tenant} has no events in {}", data_dir.display());
    };
    let dead = handle.block_on(store.dead_letters(tenant))?;
    let now = now_ms();
    let kept =
        store.retention_ms(tenant).map_or("until deleted".into(), |ms| format!("{} s", ms / 1000));
    writeln!(
        out,
        "tenant {tenant}: {} shards, {} ms buckets, events kept {kept}",
        layout.shards, layout.bucket_ms
    )?;
    // Written every second by the `storyline run` serving this data directory.
    match std::fs::read_to_string(data_dir.join("status").join(format!("{tenant}.txt"))) {
        Ok(plugin) => write!(out, "{plugin}")?,
        Err(_) => {
            writeln!(out, "plugin: unknown (no `storyline run` has served this tenant here)")?
        }
    }
    writeln!(
        out,
        "{:<6} {:<28} {:<25} {:>8} {:>11} {:>11} {:>12}  last error",
        "shard",
        "owner (epoch)",
        "committed bucket",
        "lag s",
        "late events",
        "late mean s",
        "lag events"
    )?;
    let mut alarms = Vec::new();
    for shard in (0..layout.shards).map(ShardId) {
        let lease = handle.block_on(store.lease(tenant, shard))?;
        let offset = handle.block_on(store.committed_offset(tenant, shard))?;
        let pending = handle.block_on(store.pending_events(tenant, shard, offset))?;
        let oldest = handle.block_on(store.next_bucket(tenant, shard, offset))?;
        // Lag: how old the oldest unconsumed bucket is; 0 when nothing waits.
        let lag_s = oldest.map_or(0.0, |b| (now - b.0 - layout.bucket_ms).max(0) as f64 / 1000.0);
        if let Some(retention) =
            store.retention_ms(tenant).filter(|r| lag_s * 1000.0 >= *r as f64 / 2.0)
        {
            alarms.push(format!(
                "ALARM shard {shard}: lag {lag_s:.0} s is over half the events' retention ({} s); events expire unread unless workers catch up (start more workers, or raise the retention)",
                retention / 1000
            ));
        }
        let late = handle.block_on(store.late_stats(tenant, shard))?;
        let late_mean_s = if late.events == 0 {
            0.0
        } else {
            late.lateness_ms as f64 / late.events as f64 / 1000.0
        };
        let owner = match lease {
            Some(l) if l.expires_ms > now => format!("{} ({})", l.owner, l.epoch),
            Some(l) => format!("free ({})", l.epoch),
            None => "free".into(),
        };
        let committed = offset.map_or("-".to_string(), |b| format_rfc3339(b.0));
        let last_error = dead
            .iter()
            .filter(|d| d.shard == shard)
            .max_by_key(|d| d.at_ms)
            .map_or(String::new(), |d| {
                format!("dead letter {}: {}", format_rfc3339(d.bucket.0), d.reason)
            });
        writeln!(
            out,
            "{:<6} {:<28} {:<25} {:>8.1} {:>11} {:>11.1} {:>12}  {last_error}",
            shard.0, owner, committed, lag_s, late.events, late_mean_s, pending
        )?;
    }
    for alarm in alarms {
        writeln!(out, "{alarm}")?;
    }
    writeln!(
        out,
        "dead letters: {} ({} marked for replay)",
        dead.len(),
        dead.iter().filter(|d| d.replay).count()
    )?;
    Ok(())
}
