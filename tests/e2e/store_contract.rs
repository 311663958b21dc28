//! One contract for every store: the embedded store always; others when configured (see
//! `scylla` below).

use storyline::model::{BucketStart, Event, ShardId, Story, TenantId};
use storyline::store::{DeadLetter, LateStats, Layout, NewEvent, Store, StoreError};

fn event(id: &str, t: i64) -> Event {
    Event {
        id: id.into(),
        source: "fw-1".into(),
        kind: "flow".into(),
        event_time: t,
        insert_time: t + 5,
        attributes: vec![("site".into(), "paris".into())],
        payload: format!(r#"{{"n":"{id}"}}"#).into_bytes(),
    }
}

pub fn new_event(shard: u32, bucket: i64, id: &str) -> NewEvent {
    NewEvent { shard: ShardId(shard), bucket: BucketStart(bucket), event: event(id, bucket) }
}

pub fn story(id: &str, revision: u32, events: &[&str]) -> Story {
    Story::from(storyline_sdk::Story {
        id: id.into(),
        revision,
        kind: "k".into(),
        event_ids: events.iter().map(|e| e.to_string()).collect(),
        first_seen: 1,
        last_seen: 2,
        fields: storyline_sdk::Fields::builder().field("a", &1).finish(),
    })
}

/// A tenant name unique to this test and this run (tests share a ScyllaDB cluster).
pub fn unique_tenant(test: &str) -> TenantId {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let h = storyline::producer::fnv1a(format!("{test}/{}/{nanos}", std::process::id()).as_bytes());
    TenantId::new(&format!("t{h:016x}")).unwrap()
}

pub const LAYOUT: Layout = Layout { shards: 4, bucket_ms: 1000 };

pub async fn appended_events_read_back_by_partition_in_id_order(s: &impl Store, t: &TenantId) {
    let events = [
        new_event(1, 2000, "c"),
        new_event(1, 2000, "a"),
        new_event(1, 3000, "b"),
        new_event(2, 2000, "d"),
    ];
    s.append(t, LAYOUT, &events).await.unwrap();
    let read = s.read_bucket(t, ShardId(1), BucketStart(2000)).await.unwrap().into_events();
    assert_eq!(read.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(read[0], event("a", 2000));
    assert!(
        s.read_bucket(t, ShardId(3), BucketStart(2000)).await.unwrap().into_events().is_empty()
    );
    assert_eq!(s.layout(t).await.unwrap(), Some(LAYOUT));
}

pub async fn an_event_written_twice_is_read_once_as_last_written(s: &impl Store, t: &TenantId) {
    // A producer that retries a batch whose acknowledgement it lost writes its events again.
    let mut first = new_event(0, 2000, "a");
    first.event.kind = "first".into();
    s.append(t, LAYOUT, &[first, new_event(0, 2000, "b")]).await.unwrap();
    let mut again = new_event(0, 2000, "a");
    again.event.kind = "again".into();
    s.append(t, LAYOUT, &[again]).await.unwrap();
    let read = s.read_bucket(t, ShardId(0), BucketStart(2000)).await.unwrap().into_events();
    assert_eq!(read.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(read[0].kind, "again");
}

pub async fn next_bucket_walks_non_empty_buckets_only(s: &impl Store, t: &TenantId) {
    // Insert-time buckets are near the present (a store may look back only as far as its
    // retention when no offset is given).
    let base = storyline::producer::bucket_of(storyline::producer::now_ms(), 1000).0;
    let later = base + 5_000_000;
    let events =
        [new_event(0, base, "a"), new_event(0, later, "b"), new_event(1, base + 1000, "c")];
    s.append(t, LAYOUT, &events).await.unwrap();
    let sh = ShardId(0);
    assert_eq!(s.next_bucket(t, sh, None).await.unwrap(), Some(BucketStart(base)));
    assert_eq!(
        s.next_bucket(t, sh, Some(BucketStart(base))).await.unwrap(),
        Some(BucketStart(later))
    );
    assert_eq!(s.next_bucket(t, sh, Some(BucketStart(later))).await.unwrap(), None);
    assert_eq!(
        s.next_bucket(t, ShardId(1), Some(BucketStart(base))).await.unwrap(),
        Some(BucketStart(base + 1000))
    );
    assert_eq!(s.pending_events(t, sh, None).await.unwrap(), 2);
    assert_eq!(s.pending_events(t, sh, Some(BucketStart(base))).await.unwrap(), 1);
    // An earlier bucket written late is found again from before it.
    s.append(t, LAYOUT, &[new_event(0, base - 3000, "z")]).await.unwrap();
    assert_eq!(s.next_bucket(t, sh, None).await.unwrap(), Some(BucketStart(base - 3000)));
}

pub async fn a_write_with_another_layout_is_refused_and_changes_nothing(
    s: &impl Store,
    t: &TenantId,
) {
    s.append(t, LAYOUT, &[new_event(0, 1000, "a")]).await.unwrap();
    let other = Layout { shards: 8, bucket_ms: 1000 };
    let err = s.append(t, other, &[new_event(0, 1000, "b")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Layout { .. }), "got {err:?}");
    assert!(err.to_string().contains("created with 4 shards"), "{err}");
    let read = s.read_bucket(t, ShardId(0), BucketStart(1000)).await.unwrap().into_events();
    assert_eq!(read.len(), 1);
    let err = s.append(t, LAYOUT, &[new_event(9, 1000, "c")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Layout { .. }), "got {err:?}");
}

pub async fn checkpoints_keep_offset_and_state_together(s: &impl Store, t: &TenantId) {
    let sh = ShardId(2);
    assert_eq!(s.load_checkpoint(t, sh).await.unwrap(), None);
    let lease = s.acquire_lease(t, sh, "w1", 10_000, 0).await.unwrap().unwrap();
    assert_eq!(s.committed_offset(t, sh).await.unwrap(), None);
    s.commit(t, &lease, BucketStart(1000), Some(b"state-1")).await.unwrap();
    assert_eq!(s.committed_offset(t, sh).await.unwrap(), Some(BucketStart(1000)));
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert_eq!(
        (cp.bucket, cp.state.as_slice(), cp.epoch),
        (BucketStart(1000), &b"state-1"[..], lease.epoch)
    );
    // An unchanged state is not rewritten, and is still there.
    s.commit(t, &lease, BucketStart(2000), None).await.unwrap();
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(2000), &b"state-1"[..]));
}

/// Bytes that do not compress: a live tenant's snapshot is tens of megabytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn a_state_of_tens_of_megabytes_commits_and_loads_back_whole(
    s: &impl Store,
    t: &TenantId,
) {
    let sh = ShardId(3);
    let lease = s.acquire_lease(t, sh, "w1", 60_000, 0).await.unwrap().unwrap();
    let big = noise(40 << 20, 7);
    s.commit(t, &lease, BucketStart(1000), Some(&big)).await.unwrap();
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert_eq!(cp.bucket, BucketStart(1000));
    assert!(
        cp.state == big,
        "a state of {} bytes came back as {} bytes",
        big.len(),
        cp.state.len()
    );
    // A smaller state replaces it whole: nothing of the larger one is left in it.
    let small = noise(3 << 20, 8);
    s.commit(t, &lease, BucketStart(2000), Some(&small)).await.unwrap();
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert!(cp.state == small, "got {} bytes, expected {}", cp.state.len(), small.len());
    // A fenced commit of a large state leaves the committed one as it was.
    let next = s.acquire_lease(t, sh, "w2", 60_000, 70_000).await.unwrap().unwrap();
    let err = s.commit(t, &lease, BucketStart(3000), Some(&big)).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "got {err:?}");
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert_eq!(cp.bucket, BucketStart(2000));
    assert!(cp.state == small, "got {} bytes after a fenced commit", cp.state.len());
    s.commit(t, &next, BucketStart(3000), None).await.unwrap();
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert!((cp.bucket, cp.epoch) == (BucketStart(3000), next.epoch) && cp.state == small);
}

pub async fn leases_exclude_other_owners_until_they_expire(s: &impl Store, t: &TenantId) {
    let sh = ShardId(0);
    let a = s.acquire_lease(t, sh, "a", 1000, 0).await.unwrap().unwrap();
    assert_eq!(s.acquire_lease(t, sh, "b", 1000, 500).await.unwrap(), None);
    let a2 = s.renew_lease(t, &a, 1000, 900).await.unwrap().unwrap();
    assert_eq!((a2.epoch, a2.expires_ms), (a.epoch, 1900));
    assert_eq!(s.acquire_lease(t, sh, "b", 1000, 1500).await.unwrap(), None);
    let b = s.acquire_lease(t, sh, "b", 1000, 2000).await.unwrap().unwrap();
    assert!(b.epoch > a.epoch, "a new owner gets a higher epoch");
    assert_eq!(
        s.renew_lease(t, &a2, 1000, 2100).await.unwrap(),
        None,
        "a lost lease cannot be renewed"
    );
    assert_eq!(s.lease(t, sh).await.unwrap().unwrap().owner, "b");
    s.release_lease(t, &b).await.unwrap();
    let c = s.acquire_lease(t, sh, "c", 1000, 2200).await.unwrap().unwrap();
    assert!(c.epoch > b.epoch);
}

pub async fn a_commit_under_a_stale_epoch_is_fenced(s: &impl Store, t: &TenantId) {
    let sh = ShardId(1);
    let old = s.acquire_lease(t, sh, "stalled", 1000, 0).await.unwrap().unwrap();
    s.commit(t, &old, BucketStart(1000), Some(b"old")).await.unwrap();
    let new = s.acquire_lease(t, sh, "fresh", 1000, 5000).await.unwrap().unwrap();
    s.commit(t, &new, BucketStart(2000), Some(b"new")).await.unwrap();
    let err = s.commit(t, &old, BucketStart(3000), Some(b"stale")).await.unwrap_err();
    match err {
        StoreError::Fenced { held, current, .. } => {
            assert_eq!((held, current), (old.epoch, new.epoch))
        }
        other => panic!("expected fenced, got {other:?}"),
    }
    let cp = s.load_checkpoint(t, sh).await.unwrap().unwrap();
    assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(2000), &b"new"[..]));
}

pub async fn publishing_is_idempotent_and_latest_revision_wins(s: &impl Store, t: &TenantId) {
    s.publish(t, &[story("s1", 0, &["a"]), story("s2", 0, &["b"])], 10).await.unwrap();
    s.publish(t, &[story("s1", 1, &["a", "c"])], 20).await.unwrap();
    // Re-publishing after a crash overwrites with the same content.
    s.publish(t, &[story("s1", 0, &["a"]), story("s1", 1, &["a", "c"])], 30).await.unwrap();
    let latest = s.stories(t, false).await.unwrap();
    let summary: Vec<(&str, u32, usize)> = latest
        .iter()
        .map(|s| (s.story.id.as_str(), s.story.revision, s.story.event_ids.len()))
        .collect();
    assert_eq!(summary, [("s1", 1, 2), ("s2", 0, 1)]);
    assert_eq!(latest[0].story, story("s1", 1, &["a", "c"]));
    assert_eq!(s.stories(t, true).await.unwrap().len(), 3);
}

pub async fn stories_since_a_time_come_in_publication_order(s: &impl Store, t: &TenantId) {
    // Publication times are the workers' clocks: near the present.
    let base = storyline::producer::now_ms();
    s.publish(t, &[story("s1", 0, &["a"])], base + 10).await.unwrap();
    s.publish(t, &[story("s2", 0, &["b"])], base + 20).await.unwrap();
    s.publish(t, &[story("s0", 3, &["c"])], base + 30).await.unwrap();
    let ids = |v: Vec<storyline::store::StoredStory>| {
        v.into_iter()
            .map(|s| (s.story.id, s.story.revision, s.published_ms - base))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(s.stories_since(t, base + 20).await.unwrap()),
        [("s2".to_string(), 0, 20), ("s0".to_string(), 3, 30)]
    );
    assert!(s.stories_since(t, base + 31).await.unwrap().is_empty());
    // Published again (a replay after a crash): it comes again, with its new time.
    s.publish(t, &[story("s1", 0, &["a"])], base + 40).await.unwrap();
    assert_eq!(ids(s.stories_since(t, base + 35).await.unwrap()), [("s1".to_string(), 0, 40)]);
}

/// Stories one drain of four busy shards publishes at once: more than a connection has stream
/// ids (32,768), so a store that sends them all at once loses some.
const MANY_STORIES: usize = 50_000;

pub async fn a_publish_of_fifty_thousand_stories_is_stored_and_followed_whole(
    s: &impl Store,
    t: &TenantId,
) {
    let base = storyline::producer::now_ms();
    let stories: Vec<Story> =
        (0..MANY_STORIES).map(|i| story(&format!("s{i:05}"), 0, &["a"])).collect();
    s.publish(t, &stories, base).await.unwrap();
    let ids = |v: Vec<storyline::store::StoredStory>| {
        let mut ids: Vec<String> = v.into_iter().map(|s| s.story.id).collect();
        ids.sort();
        ids
    };
    let want: Vec<String> = stories.into_iter().map(|s| s.id).collect();
    let stored = ids(s.stories(t, true).await.unwrap());
    assert!(stored == want, "{} of {MANY_STORIES} stories stored", stored.len());
    // What `stories --follow` reads: every story, through its feed entry.
    let followed = ids(s.stories_since(t, base).await.unwrap());
    assert!(followed == want, "{} of {MANY_STORIES} stories followed", followed.len());
}

pub async fn dead_letters_are_kept_per_bucket(s: &impl Store, t: &TenantId) {
    let mut letter = DeadLetter {
        shard: ShardId(3),
        bucket: BucketStart(7000),
        plugin: "p@abc".into(),
        reason: "plugin trapped".into(),
        attempts: 1,
        at_ms: 99,
        replay: false,
    };
    s.put_dead_letter(t, &letter).await.unwrap();
    letter.attempts = 3;
    letter.replay = true;
    s.put_dead_letter(t, &letter).await.unwrap();
    assert_eq!(s.dead_letters(t).await.unwrap(), vec![letter.clone()]);
    s.delete_dead_letter(t, letter.shard, letter.bucket).await.unwrap();
    assert!(s.dead_letters(t).await.unwrap().is_empty());
}

pub async fn writes_into_closed_buckets_move_to_the_first_open_bucket(
    s: &impl Store,
    t: &TenantId,
) {
    let now = storyline::producer::now_ms();
    let base = storyline::producer::bucket_of(now, 1000).0;
    let sh = ShardId(2);
    s.append(t, LAYOUT, &[new_event(2, base, "on-time")]).await.unwrap();
    let lease = s.acquire_lease(t, sh, "w1", 600_000, now).await.unwrap().unwrap();
    assert_eq!(s.closed_until(t, sh).await.unwrap(), None);
    s.close_buckets(t, &lease, BucketStart(base + 3000)).await.unwrap();
    // Closing never moves backwards.
    s.close_buckets(t, &lease, BucketStart(base)).await.unwrap();
    assert_eq!(s.closed_until(t, sh).await.unwrap(), Some(BucketStart(base + 3000)));
    tokio::time::sleep(std::time::Duration::from_millis(s.close_grace_ms() as u64)).await;
    // A producer whose clock lags writes into a closed bucket; another shard is open.
    let late = [new_event(2, base + 1000, "late"), new_event(1, base + 1000, "other-shard")];
    s.append(t, LAYOUT, &late).await.unwrap();
    assert!(s.read_bucket(t, sh, BucketStart(base + 1000)).await.unwrap().is_empty());
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.read_bucket(t, sh, BucketStart(base + 4000)).await.unwrap().into_events()),
        ["late"]
    );
    assert_eq!(
        s.next_bucket(t, sh, Some(BucketStart(base + 3000))).await.unwrap(),
        Some(BucketStart(base + 4000))
    );
    assert_eq!(s.late_stats(t, sh).await.unwrap(), LateStats { events: 1, lateness_ms: 3000 });
    assert_eq!(
        ids(s.read_bucket(t, ShardId(1), BucketStart(base + 1000)).await.unwrap().into_events()),
        ["other-shard"]
    );
    assert_eq!(s.late_stats(t, ShardId(1)).await.unwrap(), LateStats::default());
    // A worker that lost the shard cannot close for the new owner.
    let taken = s.acquire_lease(t, sh, "w2", 600_000, now + 1_200_000).await.unwrap().unwrap();
    let err = s.close_buckets(t, &lease, BucketStart(base + 9000)).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { current, .. } if current == taken.epoch), "{err}");
    assert_eq!(s.closed_until(t, sh).await.unwrap(), Some(BucketStart(base + 3000)));
}

pub async fn tenants_do_not_see_each_other(s: &impl Store, a: &TenantId, b: &TenantId) {
    let now = storyline::producer::now_ms();
    s.append(a, LAYOUT, &[new_event(0, 1000, "x")]).await.unwrap();
    s.publish(a, &[story("s", 0, &["x"])], now).await.unwrap();
    assert_eq!(s.next_bucket(b, ShardId(0), None).await.unwrap(), None);
    assert!(s.stories(b, true).await.unwrap().is_empty());
    assert_eq!(s.layout(b).await.unwrap(), None);
    // The same keys under both tenants (shard, bucket, event, story, lease, dead letter): each
    // reads its own rows, as in the shared tables of a CQL store, where only the tenant in the
    // partition key tells them apart.
    let other = Layout { shards: 2, bucket_ms: 1000 };
    let mut theirs = new_event(0, 1000, "x");
    theirs.event.kind = "b".into();
    s.append(b, other, &[theirs]).await.unwrap();
    assert_eq!(
        (s.layout(a).await.unwrap(), s.layout(b).await.unwrap()),
        (Some(LAYOUT), Some(other))
    );
    let kind = |t| async move {
        let events = s.read_bucket(t, ShardId(0), BucketStart(1000)).await.unwrap().into_events();
        events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>()
    };
    assert_eq!((kind(a).await, kind(b).await), (vec!["flow".to_string()], vec!["b".to_string()]));
    s.publish(b, &[story("s", 3, &["x", "y"])], now + 1).await.unwrap();
    let latest = |t| async move {
        let stories = s.stories(t, true).await.unwrap();
        stories.iter().map(|s| (s.story.revision, s.story.event_ids.len())).collect::<Vec<_>>()
    };
    assert_eq!((latest(a).await, latest(b).await), (vec![(0, 1)], vec![(3, 2)]));
    let since = s.stories_since(a, 0).await.unwrap();
    assert_eq!(since.iter().map(|s| s.story.revision).collect::<Vec<_>>(), [0]);
    let la = s.acquire_lease(a, ShardId(0), "wa", 60_000, now).await.unwrap().unwrap();
    let lb = s.acquire_lease(b, ShardId(0), "wb", 60_000, now).await.unwrap().unwrap();
    s.commit(a, &la, BucketStart(1000), Some(b"state a")).await.unwrap();
    s.commit(b, &lb, BucketStart(2000), Some(b"state b")).await.unwrap();
    let a_cp = s.load_checkpoint(a, ShardId(0)).await.unwrap().unwrap();
    let b_cp = s.load_checkpoint(b, ShardId(0)).await.unwrap().unwrap();
    assert_eq!((a_cp.bucket, a_cp.state.as_slice()), (BucketStart(1000), &b"state a"[..]));
    assert_eq!((b_cp.bucket, b_cp.state.as_slice()), (BucketStart(2000), &b"state b"[..]));
    let letter = DeadLetter {
        shard: ShardId(0),
        bucket: BucketStart(1000),
        plugin: "p".into(),
        reason: "r".into(),
        attempts: 1,
        at_ms: 1,
        replay: false,
    };
    s.put_dead_letter(a, &letter).await.unwrap();
    assert_eq!(s.dead_letters(a).await.unwrap().len(), 1);
    assert!(s.dead_letters(b).await.unwrap().is_empty());
}

pub async fn newest_buckets_name_each_shards_latest_in_one_answer(s: &impl Store, t: &TenantId) {
    let base = storyline::producer::bucket_of(storyline::producer::now_ms(), 1000).0;
    let events = [
        new_event(0, base - 3000, "a"),
        new_event(0, base - 1000, "b"),
        new_event(2, base - 2000, "c"),
    ];
    s.append(t, LAYOUT, &events).await.unwrap();
    // A store that cannot tell answers `None` (its workers look shard by shard).
    let Some(newest) = s.newest_buckets(t, LAYOUT.shards).await.unwrap() else { return };
    // Right after midnight the older buckets may be in yesterday's partition: only the shards
    // whose newest bucket is today's are sure to be named.
    let today = |b: i64| b.div_euclid(86_400_000) == base.div_euclid(86_400_000);
    assert_eq!(newest.len(), 4);
    if today(base - 3000) {
        assert_eq!(newest[0], Some(BucketStart(base - 1000)));
        assert_eq!(newest[2], Some(BucketStart(base - 2000)));
    }
    assert_eq!((newest[1], newest[3]), (None, None));
    s.append(t, LAYOUT, &[new_event(1, base, "d")]).await.unwrap();
    let newest = s.newest_buckets(t, LAYOUT.shards).await.unwrap().unwrap();
    assert_eq!(newest[1], Some(BucketStart(base)));
}

/// Instantiates every contract test for one store. `$make` is an async expression giving a
/// fresh store (tests run concurrently; each gets its own tenants).
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = fresh_store(stringify!($name)).await else { return };
                let t = crate::store_contract::unique_tenant(stringify!($name));
                crate::store_contract::$name(&store, &t).await;
                cleanup(&store, &[&t]).await;
            }
        )*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn tenants_do_not_see_each_other() {
            let Some((store, _guard)) = fresh_store("isolation").await else { return };
            let a = crate::store_contract::unique_tenant("isolation-a");
            let b = crate::store_contract::unique_tenant("isolation-b");
            crate::store_contract::tenants_do_not_see_each_other(&store, &a, &b).await;
            cleanup(&store, &[&a, &b]).await;
        }
    };
}

/// The contract's publish of 50,000 stories, for a CQL store (the embedded store's publish has
/// no bound to test).
macro_rules! many_stories_test {
    () => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_publish_of_fifty_thousand_stories_is_stored_and_followed_whole() {
            use crate::store_contract::a_publish_of_fifty_thousand_stories_is_stored_and_followed_whole as test;
            let Some((store, ())) = fresh_store("many-stories").await else { return };
            let t = crate::store_contract::unique_tenant("many-stories");
            test(&store, &t).await;
            cleanup(&store, &[&t]).await;
        }
    };
}

macro_rules! all_contract_tests {
    () => {
        contract_tests!(
            appended_events_read_back_by_partition_in_id_order,
            an_event_written_twice_is_read_once_as_last_written,
            next_bucket_walks_non_empty_buckets_only,
            a_write_with_another_layout_is_refused_and_changes_nothing,
            checkpoints_keep_offset_and_state_together,
            a_state_of_tens_of_megabytes_commits_and_loads_back_whole,
            leases_exclude_other_owners_until_they_expire,
            a_commit_under_a_stale_epoch_is_fenced,
            publishing_is_idempotent_and_latest_revision_wins,
            stories_since_a_time_come_in_publication_order,
            dead_letters_are_kept_per_bucket,
            writes_into_closed_buckets_move_to_the_first_open_bucket,
            newest_buckets_name_each_shards_latest_in_one_answer,
        );
    };
}

mod embedded {
    use storyline::store::embedded::EmbeddedStore;

    use crate::support::Scratch;

    async fn fresh_store(name: &str) -> Option<(EmbeddedStore, Scratch)> {
        let scratch = Scratch::new(&format!("store-{name}"));
        Some((EmbeddedStore::new(scratch.path("data")), scratch))
    }

    async fn cleanup(_: &EmbeddedStore, _: &[&storyline::model::TenantId]) {}

    all_contract_tests!();

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_survive_reopening_the_directory() {
        use storyline::store::Store;
        let scratch = crate::support::Scratch::new("store-reopen");
        let t = storyline::model::TenantId::new("acme").unwrap();
        {
            let s = EmbeddedStore::new(scratch.path("data"));
            s.append(&t, super::LAYOUT, &[super::new_event(0, 1000, "a")]).await.unwrap();
            let lease = s
                .acquire_lease(&t, storyline::model::ShardId(0), "w", 1000, 0)
                .await
                .unwrap()
                .unwrap();
            s.commit(&t, &lease, storyline::model::BucketStart(1000), Some(b"st")).await.unwrap();
        }
        let s = EmbeddedStore::new(scratch.path("data"));
        let events = s
            .read_bucket(&t, storyline::model::ShardId(0), storyline::model::BucketStart(1000))
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        let cp = s.load_checkpoint(&t, storyline::model::ShardId(0)).await.unwrap().unwrap();
        assert_eq!(cp.state, b"st");
    }
}

/// Runs the contract against a real ScyllaDB (or Cassandra 4+) node when
/// `STORYLINE_SCYLLA_NODES` is set, e.g. `STORYLINE_SCYLLA_NODES=127.0.0.1:9042`; otherwise
/// each test returns at once. See README "ScyllaDB".
mod scylla {
    use storyline::store::scylla::{ScyllaConfig, ScyllaStore};

    async fn fresh_store(_name: &str) -> Option<(ScyllaStore, ())> {
        let nodes = std::env::var("STORYLINE_SCYLLA_NODES").ok()?;
        let config = ScyllaConfig {
            nodes: nodes.split(',').map(str::to_string).collect(),
            // A single test node: one replica.
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: scylla::statement::Consistency::One,
            ..ScyllaConfig::default()
        };
        Some((ScyllaStore::connect(config).await.unwrap_or_else(|e| panic!("{e}")), ()))
    }

    async fn cleanup(store: &ScyllaStore, tenants: &[&storyline::model::TenantId]) {
        for t in tenants {
            let _ = store.drop_tenant(t).await;
        }
    }

    all_contract_tests!();

    /// The same contract on the tables every tenant shares (`--scylla-tables shared`).
    mod shared {
        use storyline::store::scylla::{ScyllaStore, Tables};

        pub async fn fresh_store(name: &str) -> Option<(ScyllaStore, ())> {
            let (store, ()) = super::fresh_store(name).await?;
            let tables = Tables::Shared { keyspace: "storyline_contract".into() };
            let config =
                storyline::store::scylla::ScyllaConfig { tables, ..store.config().clone() };
            Some((ScyllaStore::connect(config).await.unwrap_or_else(|e| panic!("{e}")), ()))
        }

        async fn cleanup(store: &ScyllaStore, tenants: &[&storyline::model::TenantId]) {
            super::cleanup(store, tenants).await;
        }

        all_contract_tests!();

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn each_tenant_s_rows_carry_its_own_retention_as_their_ttl() {
            use storyline::model::{BucketStart, ShardId};
            use storyline::store::Store;
            let Some((store, ())) = fresh_store("ttl").await else { return };
            let (a, b) = (
                crate::store_contract::unique_tenant("ttl-a"),
                crate::store_contract::unique_tenant("ttl-b"),
            );
            let mut config = store.config().clone();
            config.tenant_retention_secs =
                [(a.to_string(), 3600), (b.to_string(), 86_400)].into_iter().collect();
            let store = ScyllaStore::connect(config).await.unwrap();
            let now = storyline::producer::now_ms();
            let bucket = storyline::producer::bucket_of(now, 1000).0;
            for t in [&a, &b] {
                let e = crate::store_contract::new_event(0, bucket, "x");
                store.append(t, crate::store_contract::LAYOUT, &[e]).await.unwrap();
                let story = crate::store_contract::story("s", 0, &["x"]);
                store.publish(t, &[story], now).await.unwrap();
            }
            let db = super::raw_session().await;
            let ttl = |cql: String, t: storyline::model::TenantId, key: i64| {
                let db = &db;
                async move {
                    let rows = db.query_unpaged(cql, (t.as_str(), key)).await.unwrap();
                    rows.into_rows_result().unwrap().first_row::<(Option<i32>,)>().unwrap().0
                }
            };
            for (t, want) in [(&a, 3600), (&b, 86_400)] {
                // `buckets` and `story_feed` have key columns only, whose TTL CQL cannot select;
                // they are written by statements of the same form.
                let events = "SELECT TTL(payload) FROM storyline_contract.events \
                              WHERE tenant = ? AND shard = 0 AND bucket = ?";
                let left = ttl(events.to_string(), t.clone(), bucket).await.unwrap();
                assert!(want - 60 < left && left <= want, "{t}: {left} s left of {want}");
                assert_eq!(
                    store.read_bucket(t, ShardId(0), BucketStart(bucket)).await.unwrap().len(),
                    1
                );
            }
            super::cleanup(&store, &[&a, &b]).await;
        }

        many_stories_test!();
    }

    many_stories_test!();

    /// A session of its own, to look at the tables as they are.
    async fn raw_session() -> scylla::client::session::Session {
        let nodes = std::env::var("STORYLINE_SCYLLA_NODES").unwrap_or_default();
        let mut builder = scylla::client::session_builder::SessionBuilder::new();
        for node in nodes.split(',') {
            builder = builder.known_node(node);
        }
        builder.build().await.unwrap()
    }

    /// Rows of `shard_state` in partition (shard, epoch, slot).
    async fn chunks(
        db: &scylla::client::session::Session,
        t: &storyline::model::TenantId,
        shard: u32,
        epoch: u64,
        slot: i32,
    ) -> i64 {
        let ks = storyline::store::scylla::keyspace(t);
        let cql = format!(
            "SELECT COUNT(*) FROM {ks}.shard_state WHERE shard = ? AND epoch = ? AND slot = ?"
        );
        let result = db.query_unpaged(cql, (shard as i32, epoch as i64, slot)).await.unwrap();
        result.into_rows_result().unwrap().first_row::<(i64,)>().unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_lives_in_two_slots_of_its_epoch_and_the_next_owner_deletes_them() {
        use storyline::model::{BucketStart, ShardId};
        use storyline::store::Store;
        let Some((store, ())) = fresh_store("slots").await else { return };
        let t = crate::store_contract::unique_tenant("slots");
        let db = raw_session().await;
        let sh = ShardId(1);
        let first = store.acquire_lease(&t, sh, "w1", 60_000, 0).await.unwrap().unwrap();
        // Three commits of 2.5 MiB (three chunks each): slot 0, slot 1, slot 0 again.
        for i in 0..3u8 {
            let state = vec![i; 5 << 19];
            store.commit(&t, &first, BucketStart(1000 * i64::from(i)), Some(&state)).await.unwrap();
        }
        assert_eq!(
            (chunks(&db, &t, 1, first.epoch, 0).await, chunks(&db, &t, 1, first.epoch, 1).await),
            (3, 3)
        );
        let cp = store.load_checkpoint(&t, sh).await.unwrap().unwrap();
        assert!(cp.state == vec![2u8; 5 << 19], "the last commit's state");
        // The next owner's first commit of a state deletes the previous epoch's slots.
        let second = store.acquire_lease(&t, sh, "w2", 60_000, 70_000).await.unwrap().unwrap();
        store.commit(&t, &second, BucketStart(3000), Some(b"small")).await.unwrap();
        assert_eq!(chunks(&db, &t, 1, second.epoch, 0).await, 1);
        assert_eq!(
            (chunks(&db, &t, 1, first.epoch, 0).await, chunks(&db, &t, 1, first.epoch, 1).await),
            (0, 0)
        );
        let cp = store.load_checkpoint(&t, sh).await.unwrap().unwrap();
        assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(3000), &b"small"[..]));
        cleanup(&store, &[&t]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_written_in_the_shard_row_before_shard_state_existed_still_loads() {
        use storyline::model::{BucketStart, ShardId};
        use storyline::store::Store;
        let Some((store, ())) = fresh_store("inline").await else { return };
        let t = crate::store_contract::unique_tenant("inline");
        let ks = storyline::store::scylla::keyspace(&t);
        let db = raw_session().await;
        // The tables as an earlier version created them: the state inline in `shards`.
        for cql in [
            format!(
                "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE {ks}.shards (shard int PRIMARY KEY, owner text, epoch bigint, expires_ms bigint, \
                 bucket bigint, state blob, closed bigint)"
            ),
            format!(
                "INSERT INTO {ks}.shards (shard, owner, epoch, expires_ms, bucket, state) \
                 VALUES (0, 'old', 3, 0, 5000, 0x696e6c696e65) IF NOT EXISTS"
            ),
        ] {
            db.query_unpaged(cql, &[]).await.unwrap();
        }
        db.await_schema_agreement().await.unwrap();
        let cp = store.load_checkpoint(&t, ShardId(0)).await.unwrap().unwrap();
        assert_eq!(
            (cp.bucket, cp.state.as_slice(), cp.epoch),
            (BucketStart(5000), &b"inline"[..], 3)
        );
        let lease = store.acquire_lease(&t, ShardId(0), "new", 60_000, 1).await.unwrap().unwrap();
        store.commit(&t, &lease, BucketStart(6000), Some(b"chunked")).await.unwrap();
        let cp = store.load_checkpoint(&t, ShardId(0)).await.unwrap().unwrap();
        assert_eq!((cp.bucket, cp.state.as_slice()), (BucketStart(6000), &b"chunked"[..]));
        cleanup(&store, &[&t]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_retention_becomes_the_tables_ttl() {
        use storyline::store::Store;
        let Some((store, ())) = fresh_store("retention").await else { return };
        let t = crate::store_contract::unique_tenant("retention");
        let with_retention =
            |secs: Option<i64>| ScyllaConfig { retention_secs: secs, ..store.config().clone() };
        // Any call opens the tenant: its tables are created, or their TTL reconciled, first.
        let ttls = |store: ScyllaStore, t: storyline::model::TenantId| async move {
            store.next_bucket(&t, storyline::model::ShardId(0), None).await.unwrap();
            store.table_ttls(&t).await.unwrap().into_iter().map(|(_, ttl)| ttl).collect::<Vec<_>>()
        };
        let first = ScyllaStore::connect(with_retention(Some(3600))).await.unwrap();
        assert_eq!(ttls(first, t.clone()).await, [3600, 3600, 3600]);
        let second = ScyllaStore::connect(with_retention(Some(7200))).await.unwrap();
        assert_eq!(ttls(second, t.clone()).await, [7200, 7200, 7200]);
        // A process given no retention (`storyline stories` without the flag) changes nothing.
        let third = ScyllaStore::connect(with_retention(None)).await.unwrap();
        assert_eq!(ttls(third, t.clone()).await, [7200, 7200, 7200]);
        cleanup(&store, &[&t]).await;
    }
}
