//! Shadow cache: LRU order, invalidation, the size cap and its bounds.

use kbox_core::shadow::{
    DEFAULT_SHADOW_LIMIT, FileId, FileVersion, Insert, Lookup, MAX_SHADOW_LIMIT, ShadowCache,
    ShadowLimit, ShadowLimitTooLarge,
};
use proptest::prelude::*;

fn id(ino: u64) -> FileId {
    FileId { dev: 8, ino }
}
fn ver(mtime_sec: i64, size: u64) -> FileVersion {
    FileVersion {
        mtime_sec,
        mtime_nsec: 0,
        size,
    }
}

#[test]
fn limit_defaults_to_256_mib_and_is_bounded_at_4_gib() {
    assert_eq!(ShadowLimit::default().bytes(), 256 << 20);
    assert_eq!(DEFAULT_SHADOW_LIMIT, 268_435_456);
    assert_eq!(
        ShadowLimit::new(MAX_SHADOW_LIMIT).map(ShadowLimit::bytes),
        Ok(4 << 30)
    );
    assert_eq!(
        ShadowLimit::new(MAX_SHADOW_LIMIT + 1),
        Err(ShadowLimitTooLarge {
            requested: (4 << 30) + 1
        })
    );
    assert_eq!(ShadowLimit::new(0).map(|l| l.admits(1)), Ok(false));
}

#[test]
fn hit_when_version_matches() {
    let mut c: ShadowCache<i32> = ShadowCache::new(ShadowLimit::DEFAULT);
    assert_eq!(c.lookup(id(1), ver(5, 10)), Lookup::Miss);
    assert_eq!(
        c.insert(id(1), ver(5, 10), 100),
        Insert::Cached { evicted: None }
    );
    assert_eq!(c.lookup(id(1), ver(5, 10)), Lookup::Hit(100));
    assert_eq!(
        c.lookup(FileId { dev: 9, ino: 1 }, ver(5, 10)),
        Lookup::Miss
    );
}

#[test]
fn changed_mtime_or_size_evicts_the_stale_copy() {
    let mut c: ShadowCache<i32> = ShadowCache::new(ShadowLimit::DEFAULT);
    let v = ver(5, 10);
    for (changed, handle) in [
        (FileVersion { mtime_sec: 6, ..v }, 1),
        (FileVersion { mtime_nsec: 1, ..v }, 2),
        (FileVersion { size: 11, ..v }, 3),
    ] {
        c.insert(id(1), v, handle);
        assert_eq!(c.lookup(id(1), changed), Lookup::Stale(handle));
        assert_eq!(c.lookup(id(1), v), Lookup::Miss, "stale entry must be gone");
    }
    assert!(c.is_empty());
}

#[test]
fn files_above_the_cap_are_never_cached() {
    let limit = ShadowLimit::new(1000).expect("in range");
    let mut c: ShadowCache<i32> = ShadowCache::new(limit);
    assert_eq!(c.lookup(id(1), ver(1, 1001)), Lookup::TooLarge);
    assert_eq!(c.insert(id(1), ver(1, 1001), 7), Insert::Refused(7));
    assert_eq!(
        c.insert(id(2), ver(1, 1000), 8),
        Insert::Cached { evicted: None }
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn lowering_the_limit_evicts_copies_above_it() {
    let mut c: ShadowCache<i32> = ShadowCache::new(ShadowLimit::DEFAULT);
    c.insert(id(1), ver(1, 10), 1);
    c.insert(id(2), ver(1, 5000), 2);
    let mut evicted = Vec::new();
    c.set_limit(ShadowLimit::new(100).expect("in range"), |h| {
        evicted.push(h)
    });
    assert_eq!(evicted, [2]);
    assert_eq!(c.lookup(id(1), ver(1, 10)), Lookup::Hit(1));
}

#[test]
fn full_cache_of_64_evicts_least_recently_used() {
    let mut c: ShadowCache<u64> = ShadowCache::new(ShadowLimit::DEFAULT);
    for ino in 0..64 {
        assert_eq!(
            c.insert(id(ino), ver(0, 1), ino),
            Insert::Cached { evicted: None }
        );
    }
    // Touch 0, so 1 becomes the oldest.
    assert_eq!(c.lookup(id(0), ver(0, 1)), Lookup::Hit(0));
    assert_eq!(
        c.insert(id(64), ver(0, 1), 64),
        Insert::Cached { evicted: Some(1) }
    );
    assert_eq!(
        c.insert(id(65), ver(0, 1), 65),
        Insert::Cached { evicted: Some(2) }
    );
    assert_eq!(c.lookup(id(1), ver(0, 1)), Lookup::Miss);
    assert_eq!(c.lookup(id(0), ver(0, 1)), Lookup::Hit(0));
    assert_eq!(c.len(), 64);
}

#[test]
fn reinserting_a_file_returns_the_older_copy() {
    let mut c: ShadowCache<i32> = ShadowCache::new(ShadowLimit::DEFAULT);
    c.insert(id(1), ver(1, 1), 10);
    assert_eq!(
        c.insert(id(1), ver(2, 1), 11),
        Insert::Cached { evicted: Some(10) }
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn drain_hands_back_every_handle() {
    let mut c: ShadowCache<i32, 4> = ShadowCache::new(ShadowLimit::DEFAULT);
    for h in 0..4 {
        c.insert(id(h.try_into().expect("small")), ver(0, 0), h);
    }
    let mut got = Vec::new();
    c.drain(|h| got.push(h));
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3]);
    assert!(c.is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    Lookup(u64, i64),
    Insert(u64, i64),
}

proptest! {
    /// Against a model that keeps entries in recency order: every handle the cache lets go
    /// of comes back exactly once, and hits are exactly the model's.
    #[test]
    fn cache_matches_recency_model(ops in prop::collection::vec(
        prop_oneof![(0..12u64, 0..2i64).prop_map(|(i, m)| Op::Lookup(i, m)),
                    (0..12u64, 0..2i64).prop_map(|(i, m)| Op::Insert(i, m))], 1..200)) {
        let mut c: ShadowCache<u32, 4> = ShadowCache::new(ShadowLimit::DEFAULT);
        let mut model: Vec<(u64, i64, u32)> = Vec::new(); // oldest first
        let mut next_handle = 0u32;
        for op in ops {
            match op {
                Op::Lookup(ino, m) => {
                    let want = match model.iter().position(|e| e.0 == ino) {
                        Some(p) if model[p].1 == m => {
                            let e = model.remove(p);
                            model.push(e);
                            Lookup::Hit(e.2)
                        }
                        Some(p) => Lookup::Stale(model.remove(p).2),
                        None => Lookup::Miss,
                    };
                    prop_assert_eq!(c.lookup(id(ino), ver(m, 1)), want);
                }
                Op::Insert(ino, m) => {
                    next_handle += 1;
                    let evicted = match model.iter().position(|e| e.0 == ino) {
                        Some(p) => Some(model.remove(p).2),
                        None if model.len() == 4 => Some(model.remove(0).2),
                        None => None,
                    };
                    model.push((ino, m, next_handle));
                    prop_assert_eq!(c.insert(id(ino), ver(m, 1), next_handle), Insert::Cached { evicted });
                }
            }
        }
    }
}

#[test]
fn bytes_count_what_the_cached_copies_hold() {
    let mut c: ShadowCache<u32> = ShadowCache::new(ShadowLimit::DEFAULT);
    assert_eq!(c.bytes(), 0);
    c.insert(id(1), ver(1, 10), 1);
    c.insert(id(2), ver(1, 32), 2);
    assert_eq!(c.bytes(), 42);
    // A newer version replaces the older copy's size; a removed copy counts nothing.
    c.insert(id(1), ver(2, 5), 3);
    assert_eq!(c.bytes(), 37);
    c.remove(id(2));
    assert_eq!(c.bytes(), 5);
}
