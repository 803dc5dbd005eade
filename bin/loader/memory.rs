//! The loader's memory: mapping a planned program and a stack in kbox's process, and the
//! aligned buffer the ELF reader needs.

use kbox_arch::load::{LoadPlan, PAGE, Prot};
use kbox_lkl::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect, munmap};

use super::LoadError;

/// File bytes in 8-byte aligned storage (the ELF reader requires it).
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        AlignedBytes {
            words,
            len: bytes.len(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the words own at least `len` initialized bytes; u8 has no invalid values.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Memory the loader mapped, unmapped when dropped unless kept.
#[derive(Debug)]
pub struct Region {
    start: u64,
    len: usize,
    kept: bool,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Leaves the memory mapped for good.
    #[cfg(test)]
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Copies `bytes` to `addr`, which the loader mapped writable inside this region.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        assert!(addr >= self.start && addr + bytes.len() as u64 <= self.end());
        // SAFETY: inside this region (checked), which this loader mapped writable and nothing
        // else references yet.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if !self.kept {
            // SAFETY: the region was mapped by this loader and nothing refers into it: the
            // program it was for never started.
            let _ = unsafe { munmap(self.start as *mut _, self.len) };
        }
    }
}

// kbox runs on 64-bit machines only: a u64 length or offset always fits a usize.
const _: () = assert!(usize::BITS == 64);

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

fn prot_flags(p: Prot) -> MprotectFlags {
    let mut f = MprotectFlags::empty();
    if p.read() {
        f |= MprotectFlags::READ;
    }
    if p.write() {
        f |= MprotectFlags::WRITE;
    }
    if p.exec() {
        f |= MprotectFlags::EXEC;
    }
    f
}

/// Reserves the program's span (at its own addresses for ET_EXEC, anywhere for ET_DYN),
/// copies each segment in and gives it its protection. Returns the bias added to the file's
/// addresses and the region.
pub fn map_program(
    plan: &LoadPlan<'_>,
    data: &[u8],
    hook: &mut dyn super::CodeHook,
) -> Result<(u64, Region, Vec<Region>), LoadError> {
    let len =
        usize::try_from(plan.span.1 - plan.span.0).map_err(|_| LoadError::Map(Errno::ENOMEM))?;
    let (hint, fixed) = if plan.position_independent {
        (std::ptr::null_mut(), MapFlags::empty())
    } else {
        (plan.span.0 as *mut _, MapFlags::FIXED_NOREPLACE)
    };
    // SAFETY: a fresh private anonymous mapping; FIXED_NOREPLACE never replaces memory in use.
    let at = unsafe {
        mmap_anonymous(
            hint,
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE | fixed,
        )
    }
    .map_err(|e| LoadError::Map(errno(e)))?;
    let region = Region {
        start: at as u64,
        len,
        kept: false,
    };
    if !plan.position_independent && region.start != plan.span.0 {
        // A kernel without FIXED_NOREPLACE (before 4.17) treats it as a hint.
        return Err(LoadError::Map(Errno::ENOMEM));
    }
    let bias = region.start - plan.span.0;
    for seg in &plan.segments {
        let (first, end) = seg.pages();
        // SAFETY: inside the reservation made above, which only this loader uses.
        unsafe {
            mprotect(
                (first + bias) as *mut _,
                usize_of(end - first),
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        }
        .map_err(|e| LoadError::Map(errno(e)))?;
        // In bounds: load::plan checked offset + file_size against the file.
        let from = usize_of(seg.file_offset);
        region.write(
            seg.vaddr + bias,
            &data[from..from + usize_of(seg.file_size)],
        );
    }
    let mut extra = Vec::new();
    for seg in plan.segments.iter().filter(|s| s.prot.exec()) {
        let at = seg.vaddr + bias;
        let len = usize_of(seg.file_size);
        // SAFETY: the segment's bytes inside the reservation, writable until the loop below.
        let code = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        extra.extend(hook.code(at, code));
    }
    for (i, seg) in plan.segments.iter().enumerate() {
        let (first, end) = seg.pages();
        // A page two segments share gets both protections.
        let mut prot = seg.prot.0;
        for other in [i.checked_sub(1), Some(i + 1)].into_iter().flatten() {
            if let Some(o) = plan.segments.get(other) {
                let (ofirst, oend) = o.pages();
                if ofirst < end && first < oend {
                    prot |= o.prot.0;
                }
            }
        }
        // SAFETY: as above; the segment's bytes are in place.
        unsafe {
            mprotect(
                (first + bias) as *mut _,
                usize_of(end - first),
                prot_flags(Prot(prot)),
            )
        }
        .map_err(|e| LoadError::Map(errno(e)))?;
    }
    Ok((bias, region, extra))
}

impl Region {
    /// Takes over memory someone else mapped for the program (unmapped when dropped).
    pub fn adopt(start: u64, len: usize) -> Self {
        Region {
            start,
            len,
            kept: false,
        }
    }
}

/// A stack of `size` bytes with a guard page below it.
pub fn map_stack(size: usize, exec: bool) -> Result<Region, LoadError> {
    let guard = usize_of(PAGE);
    let mut prot = ProtFlags::READ | ProtFlags::WRITE;
    if exec {
        prot |= ProtFlags::EXEC;
    }
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
    let at = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            size + guard,
            prot,
            MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::STACK,
        )
    }
    .map_err(|e| LoadError::Map(errno(e)))?;
    let region = Region {
        start: at as u64,
        len: size + guard,
        kept: false,
    };
    // SAFETY: the lowest page of the mapping just made.
    unsafe { mprotect(at, guard, MprotectFlags::empty()) }.map_err(|e| LoadError::Map(errno(e)))?;
    Ok(region)
}
