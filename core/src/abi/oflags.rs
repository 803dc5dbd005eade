//! `open` flags. x86_64 uses the asm-generic values, as does the kernel library; arm64's
//! uapi moves four of them (arch/arm64/include/uapi/asm/fcntl.h), so an aarch64 guest's
//! flags are translated on the way in (open, fcntl F_SETFL) and out (F_GETFL).

/// `(arm64 value, asm-generic value)` of each flag that differs; the other bits agree.
const MOVED: [(u32, u32); 4] = [
    (0o40000, 0o200000),  // O_DIRECTORY
    (0o100000, 0o400000), // O_NOFOLLOW
    (0o200000, 0o40000),  // O_DIRECT
    (0o400000, 0o100000), // O_LARGEFILE
];
const MOVED_BITS: u32 = 0o40000 | 0o100000 | 0o200000 | 0o400000;

pub mod arm64 {
    pub const O_DIRECTORY: u32 = 0o40000;
    pub const O_NOFOLLOW: u32 = 0o100000;
    pub const O_DIRECT: u32 = 0o200000;
    pub const O_LARGEFILE: u32 = 0o400000;
}

pub mod generic {
    pub const O_DIRECT: u32 = 0o40000;
    pub const O_LARGEFILE: u32 = 0o100000;
    pub const O_DIRECTORY: u32 = 0o200000;
    pub const O_NOFOLLOW: u32 = 0o400000;
}

/// aarch64 guest flags → kernel-library flags.
pub const fn aarch64_to_generic(flags: u32) -> u32 {
    permute(flags, false)
}

/// Kernel-library flags → aarch64 guest flags.
pub const fn generic_to_aarch64(flags: u32) -> u32 {
    permute(flags, true)
}

const fn permute(flags: u32, reverse: bool) -> u32 {
    let mut out = flags & !MOVED_BITS;
    let mut i = 0;
    while i < MOVED.len() {
        let (from, to) = if reverse {
            (MOVED[i].1, MOVED[i].0)
        } else {
            MOVED[i]
        };
        if flags & from != 0 {
            out |= to;
        }
        i += 1;
    }
    out
}
