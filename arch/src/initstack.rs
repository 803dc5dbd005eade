//! The stack a new program starts on, as Linux lays it out for execve: argc, the argv and
//! envp pointer arrays, the auxiliary vector, and above them the strings and the 16 random
//! bytes they point at. Pure byte layout for a given top address; the loader copies it into
//! the stack it maps.

use alloc::vec;
use alloc::vec::Vec;

pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;
pub const AT_MINSIGSTKSZ: u64 = 51;

/// Linux's limit on one argument or environment string (MAX_ARG_STRLEN, 32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;

/// What goes on the stack.
#[derive(Debug, Clone, Copy)]
pub struct StackSpec<'a> {
    pub argv: &'a [&'a [u8]],
    pub envp: &'a [&'a [u8]],
    /// The path execve was given (AT_EXECFN).
    pub execfn: &'a [u8],
    /// AT_PLATFORM's string ("x86_64", "aarch64").
    pub platform: &'a [u8],
    /// AT_RANDOM's bytes (libc seeds its stack protector and pointer guard from them).
    pub random: [u8; 16],
    /// Every other auxv entry; AT_RANDOM, AT_EXECFN, AT_PLATFORM and AT_NULL are added.
    pub auxv: &'a [(u64, u64)],
}

/// The bytes of `[sp, top)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackImage {
    pub sp: u64,
    pub bytes: Vec<u8>,
}

/// The strings do not fit in `limit` bytes, or one is longer than MAX_ARG_STRLEN (E2BIG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooBig;

/// Lays out `spec` below `top` (16-byte aligned), using at most `limit` bytes.
pub fn build(top: u64, spec: &StackSpec<'_>, limit: usize) -> Result<StackImage, TooBig> {
    let strings = spec.argv.iter().chain(spec.envp).chain([&spec.execfn]);
    let mut text = 0usize;
    for s in strings {
        if s.len() >= MAX_ARG_STRLEN || s.contains(&0) {
            return Err(TooBig);
        }
        text += s.len() + 1;
    }
    // Above the strings, 8 zero bytes end the area (as Linux leaves them); below them the
    // platform string and the random bytes.
    let info = text + 8 + spec.platform.len() + 1 + 16;
    let pointers = 1 + spec.argv.len() + 1 + spec.envp.len() + 1;
    let aux_entries = spec.auxv.len() + 4;
    let vectors = (pointers + 2 * aux_entries) * 8;
    let total = (info.next_multiple_of(16) + vectors).next_multiple_of(16);
    if total > limit || !top.is_multiple_of(16) || top < total as u64 {
        return Err(TooBig);
    }
    let sp = top - total as u64;
    let mut bytes = vec![0u8; total];
    // Strings go down from the top: execfn highest, then envp, then argv (Linux's order).
    let mut cursor = total - 8;
    // Places `s` (and a NUL when `nul`) just below the last thing placed; its address.
    let mut place = |s: &[u8], nul: bool, bytes: &mut Vec<u8>| -> u64 {
        cursor -= s.len() + usize::from(nul);
        bytes[cursor..cursor + s.len()].copy_from_slice(s);
        sp + cursor as u64
    };
    let execfn = place(spec.execfn, true, &mut bytes);
    let mut envp: Vec<u64> = spec
        .envp
        .iter()
        .rev()
        .map(|s| place(s, true, &mut bytes))
        .collect();
    envp.reverse();
    let mut argv: Vec<u64> = spec
        .argv
        .iter()
        .rev()
        .map(|s| place(s, true, &mut bytes))
        .collect();
    argv.reverse();
    let platform = place(spec.platform, true, &mut bytes);
    let random = place(&spec.random, false, &mut bytes);
    let mut words = Vec::with_capacity(vectors / 8);
    words.push(spec.argv.len() as u64);
    words.extend(&argv);
    words.push(0);
    words.extend(&envp);
    words.push(0);
    for &(k, v) in spec.auxv {
        words.extend([k, v]);
    }
    words.extend([AT_RANDOM, random, AT_EXECFN, execfn, AT_PLATFORM, platform]);
    words.extend([AT_NULL, 0]);
    for (i, w) in words.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    Ok(StackImage { sp, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(img: &StackImage, addr: u64) -> u64 {
        let i = usize::try_from(addr - img.sp).expect("in range");
        u64::from_le_bytes(img.bytes[i..i + 8].try_into().expect("8 bytes"))
    }

    fn string(img: &StackImage, addr: u64) -> &[u8] {
        let i = usize::try_from(addr - img.sp).expect("in range");
        let len = img.bytes[i..]
            .iter()
            .position(|&b| b == 0)
            .expect("terminated");
        &img.bytes[i..i + len]
    }

    #[test]
    fn the_layout_reads_back_as_a_program_sees_it() {
        let spec = StackSpec {
            argv: &[b"/bin/prog", b"-x", b""],
            envp: &[b"HOME=/root", b"PATH=/bin"],
            execfn: b"/bin/prog",
            platform: b"x86_64",
            random: *b"0123456789abcdef",
            auxv: &[(AT_PAGESZ, 4096), (AT_ENTRY, 0x40_1000)],
        };
        let top = 0x7fff_0000;
        let img = build(top, &spec, 1 << 20).expect("fits");
        assert_eq!(img.sp % 16, 0);
        assert_eq!(img.sp + img.bytes.len() as u64, top);
        assert_eq!(word(&img, img.sp), 3);
        let mut p = img.sp + 8;
        for want in spec.argv {
            assert_eq!(string(&img, word(&img, p)), *want);
            p += 8;
        }
        assert_eq!(word(&img, p), 0);
        p += 8;
        for want in spec.envp {
            assert_eq!(string(&img, word(&img, p)), *want);
            p += 8;
        }
        assert_eq!(word(&img, p), 0);
        p += 8;
        let mut aux = Vec::new();
        loop {
            let (k, v) = (word(&img, p), word(&img, p + 8));
            p += 16;
            if k == AT_NULL {
                break;
            }
            aux.push((k, v));
        }
        assert_eq!(aux[..2], spec.auxv[..]);
        let find = |key| aux.iter().find(|(k, _)| *k == key).expect("present").1;
        assert_eq!(string(&img, find(AT_EXECFN)), b"/bin/prog");
        assert_eq!(string(&img, find(AT_PLATFORM)), b"x86_64");
        let r = usize::try_from(find(AT_RANDOM) - img.sp).expect("in range");
        assert_eq!(&img.bytes[r..r + 16], b"0123456789abcdef");
        assert_eq!(word(&img, top - 8), 0);
    }

    #[test]
    fn oversized_or_embedded_nul_strings_are_refused() {
        let spec = |argv: &'static [&'static [u8]]| StackSpec {
            argv,
            envp: &[],
            execfn: b"/p",
            platform: b"x86_64",
            random: [0; 16],
            auxv: &[],
        };
        assert_eq!(build(0x10_0000, &spec(&[b"a\0b"]), 1 << 20), Err(TooBig));
        assert_eq!(build(0x10_0000, &spec(&[b"abc"]), 64), Err(TooBig));
        let long: &'static [u8] = alloc::vec![b'a'; MAX_ARG_STRLEN].leak();
        let argv: &'static [&'static [u8]] = alloc::vec![long].leak();
        assert_eq!(build(0x100_0000, &spec(argv), 1 << 22), Err(TooBig));
        assert!(build(0x10_0000, &spec(&[b"abc"]), 1 << 20).is_ok());
    }
}
