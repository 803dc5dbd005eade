//! Memory the guest gives back stays reserved. The guest shares kbox's address space: a
//! range the guest unmaps could next be handed to kbox's own allocator, and then a stale
//! guest pointer into it (a use after free, or a test of EFAULT) would read or write kbox's
//! memory instead of faulting. So munmap leaves an inaccessible reservation behind, and a
//! mremap that moves or shrinks a mapping does the same for what it leaves. The guest sees
//! what munmap promises: the range faults, EFAULT for syscalls, ENOMEM from the calls that
//! ask about mappings (mincore, mprotect, madvise, msync); a new mapping the guest places
//! there with MAP_FIXED takes the range back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous};

const PAGE: u64 = 4096;
const MAP_FIXED: u64 = 0x10;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;

/// The reserved ranges, start to end, never overlapping or touching.
static RESERVED: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

/// Holds the reservations (across a fork: see `super::hold_for_fork`).
pub fn hold() -> std::sync::MutexGuard<'static, BTreeMap<u64, u64>> {
    reserved()
}

fn reserved() -> std::sync::MutexGuard<'static, BTreeMap<u64, u64>> {
    RESERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether any of `[addr, addr + len)` is a reservation left by munmap.
pub fn overlaps(addr: u64, len: u64) -> bool {
    let end = addr.saturating_add(len.max(1));
    reserved()
        .range(..end)
        .next_back()
        .is_some_and(|(_, &e)| e > addr)
}

fn add(start: u64, end: u64) {
    let mut map = reserved();
    let (mut start, mut end) = (start, end);
    // Absorb every range that overlaps or touches.
    let touching: Vec<(u64, u64)> = map
        .range(..=end)
        .filter(|(_, e)| **e >= start)
        .map(|(s, e)| (*s, *e))
        .collect();
    for (s, e) in touching {
        map.remove(&s);
        start = start.min(s);
        end = end.max(e);
    }
    map.insert(start, end);
}

/// The guest mapped `[start, end)` anew: none of it is a reservation any more.
pub fn remove(start: u64, end: u64) {
    let mut map = reserved();
    let hit: Vec<(u64, u64)> = map
        .range(..end)
        .filter(|(_, e)| **e > start)
        .map(|(s, e)| (*s, *e))
        .collect();
    for (s, e) in hit {
        map.remove(&s);
        if s < start {
            map.insert(s, start);
        }
        if e > end {
            map.insert(end, e);
        }
    }
}

/// After a guest mmap that returned `at`: a fixed mapping may have replaced reservations.
pub fn after_mmap(at: u64, len: u64, flags: u64) {
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
        remove(at, at.saturating_add(len.next_multiple_of(PAGE)));
    }
}

/// Replaces `[addr, addr + len)` with an inaccessible reservation; the errno munmap would
/// give for bad arguments.
pub fn munmap(addr: u64, len: u64) -> Result<i64, kbox_lkl::Errno> {
    if !addr.is_multiple_of(PAGE) || len == 0 || addr.checked_add(len).is_none() {
        return Err(kbox_lkl::Errno::EINVAL);
    }
    let len = usize::try_from(len.next_multiple_of(PAGE)).map_err(|_| kbox_lkl::Errno::EINVAL)?;
    // SAFETY: the guest asked for this range to go (munmap); what it held is the guest's
    // (a range of kbox's would be lost the same way to the guest's own munmap).
    unsafe {
        mmap_anonymous(
            addr as *mut _,
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
        )
    }
    .map(|_| {
        add(addr, addr + len as u64);
        0
    })
    .map_err(|e| kbox_lkl::Errno(e.raw_os_error()))
}

/// After a successful mremap of `[old, old + old_len)` to `new` (`new_len` bytes): reserves
/// what the old range no longer covers.
pub fn after_mremap(old: u64, old_len: u64, new: u64, new_len: u64) {
    let old_len = old_len.next_multiple_of(PAGE);
    let new_len = new_len.next_multiple_of(PAGE);
    if new != old {
        let _ = munmap(old, old_len);
    } else if new_len < old_len {
        let _ = munmap(old + new_len, old_len - new_len);
    }
}
