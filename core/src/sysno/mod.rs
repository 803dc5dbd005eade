//! Syscall numbers: the x86_64 and aarch64 host tables, the asm-generic table the kernel
//! library implements, and how each x86_64 syscall is expressed in asm-generic terms.
//!
//! The tables are generated from the kernel's own `.tbl` files by `core/gen/syscalls.sh`
//! and checked against linux-raw-sys on each target by `tests/sysno_vs_linux_raw_sys.rs`.
//! linux-raw-sys alone is not enough: it only has the numbers of the target it is built for,
//! and core must know both arches (the BPF filter and the tests run for either).

mod lower;

pub use lower::{Arg, Conversion, Lowering, Rewrite, lower_x86_64};

/// One syscall of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub nr: u32,
    pub name: &'static str,
}

/// One x86_64 syscall and the number of the asm-generic syscall of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86Syscall {
    pub nr: u32,
    pub name: &'static str,
    pub generic: Option<u32>,
}

macro_rules! syscall_table {
    ($($konst:ident = $nr:literal $name:literal,)*) => {
        $(pub const $konst: u32 = $nr;)*
        /// Every syscall of this table, ascending by number.
        pub const TABLE: &[super::Syscall] = &[$(super::Syscall { nr: $nr, name: $name }),*];

        /// The name of syscall `nr`, for `-v` traces.
        pub fn name(nr: u32) -> Option<&'static str> {
            let i = TABLE.binary_search_by_key(&nr, |s| s.nr).ok()?;
            Some(TABLE[i].name)
        }
    };
}

macro_rules! x86_64_table {
    ($($konst:ident = $nr:literal $name:literal => $generic:expr,)*) => {
        $(pub const $konst: u32 = $nr;)*
        /// Every x86_64 syscall (64-bit ABI, no x32), ascending by number.
        pub const TABLE: &[super::X86Syscall] =
            &[$(super::X86Syscall { nr: $nr, name: $name, generic: $generic }),*];

        /// The name of syscall `nr`, for `-v` traces.
        pub fn name(nr: u32) -> Option<&'static str> {
            Some(entry(nr)?.name)
        }

        pub(crate) fn entry(nr: u32) -> Option<&'static super::X86Syscall> {
            let i = TABLE.binary_search_by_key(&nr, |s| s.nr).ok()?;
            Some(&TABLE[i])
        }
    };
}

/// The asm-generic numbers the kernel library implements (ABIs common, 64, rlimit,
/// renameat, as in the 6.12 `scripts/syscall.tbl`).
pub mod generic {
    include!("generic.rs");
}

/// aarch64 host numbers: asm-generic plus `memfd_secret`, which arm64 enables.
pub mod aarch64 {
    include!("aarch64.rs");
}

/// x86_64 host numbers (64-bit ABI).
pub mod x86_64 {
    include!("x86_64.rs");
}

/// The asm-generic number of x86_64 syscall `nr` when asm-generic has the same syscall;
/// None when it does not (see [`lower_x86_64`] for how to express those) or when `nr` is
/// not an x86_64 syscall at all.
pub fn x86_64_to_generic(nr: u32) -> Option<u32> {
    x86_64::entry(nr)?.generic
}
