//! The shadow cache: recently built read-only shadow memfds, keyed by the file they copy,
//! so reopening a hot file (a DSO every exec maps) dups a memfd instead of copying the
//! file again. Also the shadow size cap, which bounds both this cache and shadowing itself.

use core::fmt;

/// Default cap on a file's size for shadowing.
pub const DEFAULT_SHADOW_LIMIT: u64 = 256 << 20;
/// Highest cap a user may set. A shadow is a full in-memory copy and several may be alive
/// at once (64 cached plus the open ones), so the bound stops one `--shadow-limit` from
/// asking for more memory than typical hosts have; 4 GiB still covers any shared library
/// or executable, the files shadowing exists for.
pub const MAX_SHADOW_LIMIT: u64 = 4 << 30;
/// Entries the cache holds by default.
pub const DEFAULT_CAPACITY: usize = 64;

/// The largest file size that may be shadowed (and cached). Zero disables shadowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowLimit(u64);

/// A requested shadow limit above [`MAX_SHADOW_LIMIT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowLimitTooLarge {
    pub requested: u64,
}

impl fmt::Display for ShadowLimitTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shadow limit {} bytes is above the maximum of {} bytes",
            self.requested, MAX_SHADOW_LIMIT
        )
    }
}

impl ShadowLimit {
    pub const DEFAULT: Self = Self(DEFAULT_SHADOW_LIMIT);

    pub const fn new(bytes: u64) -> Result<Self, ShadowLimitTooLarge> {
        if bytes > MAX_SHADOW_LIMIT {
            Err(ShadowLimitTooLarge { requested: bytes })
        } else {
            Ok(Self(bytes))
        }
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Whether a file of `size` bytes may be shadowed.
    pub const fn admits(self, size: u64) -> bool {
        size <= self.0
    }
}

impl Default for ShadowLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which file: its device and inode in the kernel library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Which contents: a change of any field means the cached copy is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub size: u64,
}

/// The result of [`ShadowCache::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<H> {
    /// A current copy: dup it for the guest.
    Hit(H),
    /// No copy cached: build one, then insert it.
    Miss,
    /// The cached copy was of another version and has been dropped from the cache: close
    /// this handle, then proceed as on a miss.
    Stale(H),
    /// The file is above the shadow limit: serve it from the kernel library, unshadowed.
    TooLarge,
}

/// The result of [`ShadowCache::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert<H> {
    /// Cached; a handle pushed out to make room (least recently used, or an older copy of
    /// the same file) comes back to be closed.
    Cached { evicted: Option<H> },
    /// Above the shadow limit: not cached, the handle is returned untouched.
    Refused(H),
}

#[derive(Clone, Copy)]
struct Slot<H> {
    id: FileId,
    version: FileVersion,
    handle: H,
    last_used: u64,
}

/// Up to `N` cached shadow handles with LRU eviction. `H` is whatever the caller uses to
/// hold a memfd (an fd number, typically); the cache never closes anything itself, it
/// hands back every handle it lets go of.
pub struct ShadowCache<H: Copy, const N: usize = DEFAULT_CAPACITY> {
    slots: [Option<Slot<H>>; N],
    clock: u64,
    limit: ShadowLimit,
}

impl<H: Copy, const N: usize> ShadowCache<H, N> {
    pub const fn new(limit: ShadowLimit) -> Self {
        const { assert!(N > 0, "a shadow cache needs at least one slot") };
        Self {
            slots: [const { None }; N],
            clock: 0,
            limit,
        }
    }

    pub fn limit(&self) -> ShadowLimit {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of file contents the cached copies hold (their files' sizes).
    pub fn bytes(&self) -> u64 {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.version.size)
            .fold(0, u64::saturating_add)
    }

    /// Looks up the copy of `id`, checking it is of `version`.
    pub fn lookup(&mut self, id: FileId, version: FileVersion) -> Lookup<H> {
        let now = self.tick();
        match self.find(id) {
            Some(i) => match &mut self.slots[i] {
                Some(slot) if slot.version == version => {
                    slot.last_used = now;
                    Lookup::Hit(slot.handle)
                }
                other => match other.take() {
                    Some(stale) => Lookup::Stale(stale.handle),
                    None => Lookup::Miss,
                },
            },
            None if !self.limit.admits(version.size) => Lookup::TooLarge,
            None => Lookup::Miss,
        }
    }

    /// Caches `handle` as the copy of `id` at `version`.
    pub fn insert(&mut self, id: FileId, version: FileVersion, handle: H) -> Insert<H> {
        if !self.limit.admits(version.size) {
            return Insert::Refused(handle);
        }
        let last_used = self.tick();
        let fresh = Slot {
            id,
            version,
            handle,
            last_used,
        };
        let i = self
            .find(id)
            .or_else(|| self.slots.iter().position(Option::is_none))
            .unwrap_or_else(|| self.lru());
        let evicted = self
            .slots
            .get_mut(i)
            .and_then(|s| s.replace(fresh))
            .map(|old| old.handle);
        Insert::Cached { evicted }
    }

    /// Drops the copy of `id`, if cached, returning its handle to close.
    pub fn remove(&mut self, id: FileId) -> Option<H> {
        let i = self.find(id)?;
        self.slots[i].take().map(|s| s.handle)
    }

    /// Changes the limit, handing `on_evict` every cached copy now above it.
    pub fn set_limit(&mut self, limit: ShadowLimit, mut on_evict: impl FnMut(H)) {
        self.limit = limit;
        for slot in &mut self.slots {
            if let Some(s) = slot.take_if(|s| !limit.admits(s.version.size)) {
                on_evict(s.handle);
            }
        }
    }

    /// Empties the cache, handing every handle to `on_evict` (at exit).
    pub fn drain(&mut self, mut on_evict: impl FnMut(H)) {
        self.slots
            .iter_mut()
            .filter_map(Option::take)
            .for_each(|s| on_evict(s.handle));
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn find(&self, id: FileId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.is_some_and(|s| s.id == id))
    }

    /// The least recently used slot; only called when every slot is full.
    fn lru(&self) -> usize {
        let used = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?.last_used)));
        used.min_by_key(|&(_, t)| t).map_or(0, |(i, _)| i)
    }
}
