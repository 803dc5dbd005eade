//! The table itself. Storage is a flat array indexed by guest FD plus arrays indexed by
//! kernel and host FD; every field is an integer and all-zero means "empty", so a zeroed
//! allocation is a valid empty table (see [`FdTable::new`]).

use super::bitmap::{AllocBitmap, Bits};
use super::{FD_LIMIT, FdEntry, FdKind, GuestFd, HostFd, KernelFd};
use crate::Errno;

const HAS_KERNEL: u8 = 1;
const HAS_HOST: u8 = 2;

/// Raw storage of one guest FD. `kind == 0` marks a free slot. `prev`/`next` thread the
/// slot into the circular list of guest FDs holding the same host FD; a sole holder
/// points at itself, so no sentinel value is needed and all 65536 numbers stay usable.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot {
    kernel: u16,
    host: u16,
    prev: u16,
    next: u16,
    kind: u8,
    flags: u8,
}

static_assertions::const_assert_eq!(core::mem::size_of::<Slot>(), 10);

impl Slot {
    const FREE: Self = Self {
        kernel: 0,
        host: 0,
        prev: 0,
        next: 0,
        kind: 0,
        flags: 0,
    };

    fn entry(&self, cloexec: bool) -> Option<FdEntry> {
        Some(FdEntry {
            kind: FdKind::from_u8(self.kind)?,
            kernel: (self.flags & HAS_KERNEL != 0).then_some(KernelFd(self.kernel)),
            host: (self.flags & HAS_HOST != 0).then_some(HostFd(self.host)),
            cloexec,
        })
    }
}

/// What a removal took out of the table, and which backing FDs it left unreferenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    pub fd: GuestFd,
    pub entry: FdEntry,
    /// Set when this was the last guest FD holding that kernel-library FD: close it now.
    pub kernel_released: Option<KernelFd>,
    /// Set when this was the last guest FD holding that host FD.
    pub host_released: Option<HostFd>,
}

/// The virtual FD table of one guest process. About 1 MiB (see docs/core.md); build it
/// with [`FdTable::new`] in a `static`, or zero-allocate it on the heap.
#[derive(PartialEq, Eq)]
pub struct FdTable {
    slots: [Slot; FD_LIMIT],
    used: AllocBitmap,
    cloexec: Bits,
    /// Number of guest FDs holding each kernel-library FD. u32 because all 65536 guest FDs
    /// may hold the same one.
    kernel_refs: [u32; FD_LIMIT],
    /// Some guest FD holding each host FD, valid where `host_held` is set.
    host_head: [u16; FD_LIMIT],
    host_held: Bits,
    live: u32,
    /// `FD_LIMIT` minus the guest's current RLIMIT_NOFILE; stored this way round so that
    /// zero, the value of a zeroed table, means the full range.
    limit_deficit: u32,
}

impl Default for FdTable {
    fn default() -> Self {
        Self::new()
    }
}

impl FdTable {
    /// The empty table. Every field of the result is zero, so
    /// `Box::<FdTable>::new_zeroed().assume_init()` yields the same value without putting
    /// a megabyte on the stack (core's tests check the equality).
    pub const fn new() -> Self {
        Self {
            slots: [Slot::FREE; FD_LIMIT],
            used: AllocBitmap::new(),
            cloexec: Bits::new(),
            kernel_refs: [0; FD_LIMIT],
            host_head: [0; FD_LIMIT],
            host_held: Bits::new(),
            live: 0,
            limit_deficit: 0,
        }
    }

    /// The current limit on new guest FD numbers (RLIMIT_NOFILE as the guest set it).
    pub fn limit(&self) -> usize {
        FD_LIMIT - self.limit_deficit as usize
    }

    /// Applies a guest `setrlimit(RLIMIT_NOFILE)`. Open FDs above the new limit stay open,
    /// as on Linux; only new allocations and dup2 targets are bounded.
    pub fn set_limit(&mut self, limit: usize) -> Result<(), Errno> {
        let deficit = FD_LIMIT.checked_sub(limit).ok_or(Errno::EINVAL)?;
        self.limit_deficit = u32::try_from(deficit).map_err(|_| Errno::EINVAL)?;
        Ok(())
    }

    /// Number of open guest FDs.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn get(&self, fd: GuestFd) -> Option<FdEntry> {
        self.slots[fd.index()].entry(self.cloexec.contains(fd.index()))
    }

    /// Looks up a raw guest FD argument: EBADF when it is out of range or not open.
    pub fn lookup(&self, raw: i32) -> Result<FdEntry, Errno> {
        self.get(GuestFd::from_raw(raw)?).ok_or(Errno::EBADF)
    }

    /// Installs `entry` at the lowest free number `>= min` (POSIX open/dup/F_DUPFD).
    /// EMFILE when no number in `min..limit` is free.
    pub fn insert(&mut self, min: GuestFd, entry: FdEntry) -> Result<GuestFd, Errno> {
        let i = self
            .used
            .lowest_clear(min.index(), self.limit())
            .ok_or(Errno::EMFILE)?;
        let fd = GuestFd::from_raw(i32::try_from(i).map_err(|_| Errno::EMFILE)?)?;
        self.install(fd, entry);
        Ok(fd)
    }

    /// Installs `entry` at exactly `fd` (dup2/dup3), returning what it displaced so the
    /// caller can close what that released. A backing FD shared by the displaced and the
    /// new entry is not reported released. EBADF when `fd` is at or past the limit.
    pub fn insert_at(&mut self, fd: GuestFd, entry: FdEntry) -> Result<Option<Closed>, Errno> {
        if fd.index() >= self.limit() {
            return Err(Errno::EBADF);
        }
        // Take the new kernel reference before dropping the old one, so a slot overwritten
        // with a dup of the same open file never sees its count touch zero.
        if let Some(k) = entry.kernel {
            self.acquire_kernel(k);
        }
        let displaced = self.take(fd).map(|mut closed| {
            if closed.host_released.is_some() && closed.host_released == entry.host {
                closed.host_released = None;
            }
            closed
        });
        self.install(fd, entry);
        if let Some(k) = entry.kernel {
            self.release_kernel(k);
        }
        Ok(displaced)
    }

    /// Closes one guest FD. EBADF when it is not open.
    pub fn remove(&mut self, fd: GuestFd) -> Result<Closed, Errno> {
        self.take(fd).ok_or(Errno::EBADF)
    }

    /// Sets or clears close-on-exec (F_SETFD). EBADF when `fd` is not open.
    pub fn set_cloexec(&mut self, fd: GuestFd, cloexec: bool) -> Result<(), Errno> {
        if !self.used.contains(fd.index()) {
            return Err(Errno::EBADF);
        }
        if cloexec {
            self.cloexec.insert(fd.index());
        } else {
            self.cloexec.remove(fd.index());
        }
        Ok(())
    }

    /// Number of guest FDs holding kernel-library FD `k`.
    pub fn kernel_refs(&self, k: KernelFd) -> u32 {
        self.kernel_refs[k.index()]
    }

    /// One guest FD holding host FD `h`, in O(1).
    pub fn find_by_host_fd(&self, h: HostFd) -> Option<GuestFd> {
        self.host_held
            .contains(h.index())
            .then(|| GuestFd(self.host_head[h.index()]))
    }

    /// Every guest FD holding host FD `h`, in no particular order.
    pub fn host_holders(&self, h: HostFd) -> HostHolders<'_> {
        let start = self.find_by_host_fd(h);
        HostHolders {
            table: self,
            start,
            next: start,
        }
    }

    /// Closes one guest FD holding host FD `h`, in O(1); None when no guest FD holds it.
    /// Call repeatedly to close every holder.
    pub fn close_by_host_fd(&mut self, h: HostFd) -> Option<Closed> {
        let fd = self.find_by_host_fd(h)?;
        self.take(fd)
    }

    /// The exec-time sweep: closes every close-on-exec guest FD, handing each removal to
    /// `on_close` so the caller can close what it released. Visits only close-on-exec FDs.
    pub fn close_on_exec(&mut self, mut on_close: impl FnMut(Closed)) {
        for w in 0..FD_LIMIT / 64 {
            let mut bits = self.cloexec.word(w);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(closed) = u16::try_from(i).ok().and_then(|i| self.take(GuestFd(i))) {
                    on_close(closed);
                }
            }
        }
    }

    /// Makes `self` a copy of `src`: the table of a child after fork, whose kernel task was
    /// forked from the parent's and so holds the same kernel FD numbers.
    pub fn copy_from(&mut self, src: &Self) {
        self.slots.copy_from_slice(&src.slots);
        self.used.copy_from(&src.used);
        self.cloexec.copy_from(&src.cloexec);
        self.kernel_refs.copy_from_slice(&src.kernel_refs);
        self.host_head.copy_from_slice(&src.host_head);
        self.host_held.copy_from(&src.host_held);
        self.live = src.live;
        self.limit_deficit = src.limit_deficit;
    }

    /// Open guest FDs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (GuestFd, FdEntry)> + '_ {
        self.used.used().iter().filter_map(|i| {
            let fd = GuestFd(u16::try_from(i).ok()?);
            Some((fd, self.get(fd)?))
        })
    }

    fn install(&mut self, fd: GuestFd, entry: FdEntry) {
        let g = fd.index();
        let mut slot = Slot {
            kind: entry.kind as u8,
            ..Slot::FREE
        };
        if let Some(k) = entry.kernel {
            slot.kernel = k.0;
            slot.flags |= HAS_KERNEL;
            self.acquire_kernel(k);
        }
        if let Some(h) = entry.host {
            slot.host = h.0;
            slot.flags |= HAS_HOST;
        }
        self.slots[g] = slot;
        if let Some(h) = entry.host {
            self.link_host(fd, h);
        }
        self.used.insert(g);
        if entry.cloexec {
            self.cloexec.insert(g);
        }
        self.live += 1;
    }

    fn take(&mut self, fd: GuestFd) -> Option<Closed> {
        let g = fd.index();
        let entry = self.get(fd)?;
        let kernel_released = entry.kernel.filter(|&k| self.release_kernel(k));
        let host_released = entry.host.filter(|&h| self.unlink_host(fd, h));
        self.slots[g] = Slot::FREE;
        self.used.remove(g);
        self.cloexec.remove(g);
        self.live -= 1;
        Some(Closed {
            fd,
            entry,
            kernel_released,
            host_released,
        })
    }

    fn acquire_kernel(&mut self, k: KernelFd) {
        self.kernel_refs[k.index()] += 1;
    }

    /// Drops one reference; true when it was the last.
    fn release_kernel(&mut self, k: KernelFd) -> bool {
        let refs = &mut self.kernel_refs[k.index()];
        *refs -= 1;
        *refs == 0
    }

    fn link_host(&mut self, fd: GuestFd, h: HostFd) {
        let g = fd.0;
        if self.host_held.contains(h.index()) {
            let head = self.host_head[h.index()];
            let after = self.slots[usize::from(head)].next;
            self.slots[usize::from(g)].prev = head;
            self.slots[usize::from(g)].next = after;
            self.slots[usize::from(head)].next = g;
            self.slots[usize::from(after)].prev = g;
        } else {
            self.slots[usize::from(g)].prev = g;
            self.slots[usize::from(g)].next = g;
            self.host_head[h.index()] = g;
            self.host_held.insert(h.index());
        }
    }

    /// Unthreads `fd` from `h`'s holder list; true when it was the last holder.
    fn unlink_host(&mut self, fd: GuestFd, h: HostFd) -> bool {
        let g = fd.0;
        let Slot { prev, next, .. } = self.slots[usize::from(g)];
        if next == g {
            self.host_held.remove(h.index());
            return true;
        }
        self.slots[usize::from(prev)].next = next;
        self.slots[usize::from(next)].prev = prev;
        if self.host_head[h.index()] == g {
            self.host_head[h.index()] = next;
        }
        false
    }
}

/// Iterator over the guest FDs holding one host FD.
pub struct HostHolders<'a> {
    table: &'a FdTable,
    start: Option<GuestFd>,
    next: Option<GuestFd>,
}

impl Iterator for HostHolders<'_> {
    type Item = GuestFd;

    fn next(&mut self) -> Option<GuestFd> {
        let cur = self.next?;
        let after = GuestFd(self.table.slots[cur.index()].next);
        self.next = (Some(after) != self.start).then_some(after);
        Some(cur)
    }
}

// The budget from docs/core.md: table plus reverse maps within 1.5 MiB.
static_assertions::const_assert!(core::mem::size_of::<FdTable>() <= 3 * 512 * 1024);
