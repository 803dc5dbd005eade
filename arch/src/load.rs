//! What loading an ELF program into memory means, decided from its bytes alone: the segments
//! to map and their protections, the entry point, where the program headers end up (AT_PHDR),
//! the interpreter a dynamic program names, and whether the stack is executable; and the
//! `#!` line of a script. The in-process tiers' loader (bin/loader) maps what this plans.
//!
//! Everything here is checked arithmetic over untrusted bytes: a malformed file is a
//! [`LoadError`] (ENOEXEC for the guest), never a panic; the `load_plan` fuzz target checks
//! that.

use alloc::vec::Vec;

use crate::elf::{ElfError, Machine, le_u16, le_u64, validate_header};

pub const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_PHDR: u32 = 6;
const PT_GNU_STACK: u32 = 0x6474_e551;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
/// Linux's PATH_MAX, the longest interpreter path kbox accepts.
const PATH_MAX: usize = 4096;
/// No program needs more address space than this (2^46 = 64 TiB); a larger span is a
/// malformed file, refused before anything is reserved.
const MAX_SPAN: u64 = 1 << 46;

/// Segment protection bits, as PF_X/PF_W/PF_R are numbered in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prot(pub u32);

impl Prot {
    pub const X: u32 = 1;
    pub const W: u32 = 2;
    pub const R: u32 = 4;
    pub fn read(self) -> bool {
        self.0 & Self::R != 0
    }
    pub fn write(self) -> bool {
        self.0 & Self::W != 0
    }
    pub fn exec(self) -> bool {
        self.0 & Self::X != 0
    }
}

/// One PT_LOAD segment: `file_size` bytes from `file_offset` at `vaddr`, zeros up to
/// `mem_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub prot: Prot,
}

impl Segment {
    /// The pages the segment touches, `[first, end)`.
    pub fn pages(&self) -> (u64, u64) {
        // Cannot overflow: plan() checked vaddr + mem_size against MAX_SPAN.
        (
            self.vaddr & !(PAGE - 1),
            (self.vaddr + self.mem_size).next_multiple_of(PAGE),
        )
    }
}

/// Addresses are the file's own; a position-independent program adds the base it is mapped
/// at (`bias`) to every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan<'a> {
    pub machine: Machine,
    /// ET_DYN: placed wherever there is room. ET_EXEC: at its own addresses.
    pub position_independent: bool,
    /// Sorted by address, never overlapping.
    pub segments: Vec<Segment>,
    pub entry: u64,
    /// Where the program header table is in memory, if any segment maps it.
    pub phdr: Option<u64>,
    pub phnum: u16,
    /// The interpreter's path (without its NUL), for a dynamically linked program.
    pub interp: Option<&'a [u8]>,
    /// PT_GNU_STACK asks for an executable stack, or is missing (the old default).
    pub exec_stack: bool,
    /// First page and end of the pages the segments span.
    pub span: (u64, u64),
}

impl LoadPlan<'_> {
    /// Where the program break starts: the page after the last segment's end.
    pub fn brk(&self) -> u64 {
        self.span.1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    Elf(ElfError),
    /// Neither ET_EXEC nor ET_DYN (a relocatable object, a core file).
    NotExecutable(u16),
    NoSegments,
    /// Two segments share address space in a way no linker produces.
    SegmentsOverlap,
    /// A segment's file bytes or addresses are out of range, or the span is absurd.
    BadSegment,
    /// PT_INTERP is not one NUL-terminated path.
    BadInterpreter,
    /// The entry point is not inside an executable segment.
    BadEntry,
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Elf(e) => e.fmt(f),
            Self::NotExecutable(t) => write!(f, "ELF type {t} is not a program"),
            Self::NoSegments => f.write_str("no loadable segment"),
            Self::SegmentsOverlap => f.write_str("loadable segments overlap"),
            Self::BadSegment => {
                f.write_str("a loadable segment lies outside the file or address space")
            }
            Self::BadInterpreter => f.write_str("malformed interpreter path"),
            Self::BadEntry => f.write_str("entry point outside the executable segments"),
        }
    }
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Plans loading `data` (8-byte aligned, as elf::parse requires).
pub fn plan(data: &[u8]) -> Result<LoadPlan<'_>, LoadError> {
    let (phoff, phnum) = validate_header(data)?;
    let machine = match le_u16(data, 18) {
        62 => Machine::X86_64,
        183 => Machine::Aarch64,
        m => return Err(ElfError::UnsupportedMachine(m).into()),
    };
    let position_independent = match le_u16(data, 16) {
        ET_EXEC => false,
        ET_DYN => true,
        t => return Err(LoadError::NotExecutable(t)),
    };
    let mut segments = Vec::new();
    let (mut interp, mut exec_stack, mut pt_phdr) = (None, true, None);
    for i in 0..usize::from(phnum) {
        // In bounds: validate_header checked phoff + phnum * 56 <= len.
        let ph = &data[phoff + i * 56..phoff + (i + 1) * 56];
        let (kind, flags) = (u32_at(ph, 0), u32_at(ph, 4));
        let (offset, vaddr) = (le_u64(ph, 8), le_u64(ph, 16));
        let (file_size, mem_size) = (le_u64(ph, 32), le_u64(ph, 40));
        match kind {
            PT_LOAD => {
                let end_in_file = offset.checked_add(file_size);
                let end_in_memory = vaddr.checked_add(mem_size);
                if file_size > mem_size
                    || end_in_file.is_none_or(|e| e > data.len() as u64)
                    || end_in_memory.is_none_or(|e| e > MAX_SPAN)
                {
                    return Err(LoadError::BadSegment);
                }
                if mem_size > 0 {
                    segments.push(Segment {
                        vaddr,
                        mem_size,
                        file_offset: offset,
                        file_size,
                        prot: Prot(flags & 7),
                    });
                }
            }
            PT_INTERP => interp = Some(interp_path(data, offset, file_size)?),
            PT_GNU_STACK => exec_stack = flags & Prot::X != 0,
            PT_PHDR => pt_phdr = Some(vaddr),
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    segments.sort_by_key(|s| s.vaddr);
    for pair in segments.windows(2) {
        // Segments may share a page (their protections are then combined), not bytes.
        if pair[0].vaddr + pair[0].mem_size > pair[1].vaddr {
            return Err(LoadError::SegmentsOverlap);
        }
    }
    let span = (
        segments[0].pages().0,
        segments[segments.len() - 1].pages().1,
    );
    if span.1 - span.0 > MAX_SPAN || (!position_independent && span.0 == 0) {
        return Err(LoadError::BadSegment);
    }
    let entry = le_u64(data, 24);
    if !segments
        .iter()
        .any(|s| s.prot.exec() && entry >= s.vaddr && entry < s.vaddr + s.mem_size)
    {
        return Err(LoadError::BadEntry);
    }
    // Where the headers are in memory: PT_PHDR says so, else the segment holding them in
    // the file does (as Linux finds AT_PHDR).
    let table = (phoff as u64, u64::from(phnum) * 56);
    let phdr = pt_phdr.or_else(|| {
        segments.iter().find_map(|s| {
            (table.0 >= s.file_offset && table.0 + table.1 <= s.file_offset + s.file_size)
                .then(|| s.vaddr + (table.0 - s.file_offset))
        })
    });
    Ok(LoadPlan {
        machine,
        position_independent,
        segments,
        entry,
        phdr,
        phnum,
        interp,
        exec_stack,
        span,
    })
}

fn interp_path(data: &[u8], offset: u64, size: u64) -> Result<&[u8], LoadError> {
    let start = usize::try_from(offset).map_err(|_| LoadError::BadInterpreter)?;
    let len = usize::try_from(size).map_err(|_| LoadError::BadInterpreter)?;
    let bytes = start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or(LoadError::BadInterpreter)?;
    match bytes.split_last() {
        Some((0, path)) if !path.is_empty() && path.len() < PATH_MAX && !path.contains(&0) => {
            Ok(path)
        }
        _ => Err(LoadError::BadInterpreter),
    }
}

/// How many bytes of a file Linux reads to find a `#!` line (BINPRM_BUF_SIZE).
pub const SHEBANG_BUF: usize = 256;

/// A script's `#!` line: the interpreter and its one optional argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shebang<'a> {
    pub interpreter: &'a [u8],
    pub arg: Option<&'a [u8]>,
}

/// Reads the `#!` line at the start of `head` (a file's first bytes) as Linux's
/// binfmt_script does: None when it does not start with `#!`; `Err(())` (ENOEXEC) when there
/// is no interpreter name, or when the name does not end (blank, NUL, newline or end of
/// file) within the first [`SHEBANG_BUF`] bytes. Everything after the name up to the end of
/// the line, trimmed of blanks, is one argument.
#[allow(clippy::result_unit_err)]
pub fn shebang(head: &[u8]) -> Option<Result<Shebang<'_>, ()>> {
    if !head.starts_with(b"#!") {
        return None;
    }
    // Linux reads into a zeroed buffer: a file shorter than it ends in NULs.
    let head = &head[..head.len().min(SHEBANG_BUF)];
    let at = |i: usize| head.get(i).copied().unwrap_or(0);
    let blank = |c: u8| c == b' ' || c == b'\t';
    let terminator = |c: u8| blank(c) || c == 0;
    let last = SHEBANG_BUF - 1;
    let mut end = match (0..SHEBANG_BUF)
        .take_while(|&i| at(i) != 0)
        .find(|&i| at(i) == b'\n')
    {
        Some(n) => n,
        None => {
            let Some(name) = (2..last).find(|&i| !blank(at(i))) else {
                return Some(Err(()));
            };
            if !(name..last).any(|i| terminator(at(i))) {
                return Some(Err(()));
            }
            last
        }
    };
    while end > 2 && blank(at(end - 1)) {
        end -= 1;
    }
    let Some(name) = (2..end).find(|&i| !blank(at(i))) else {
        return Some(Err(()));
    };
    let sep = (name..end).find(|&i| terminator(at(i))).unwrap_or(end);
    let arg = if sep < end && at(sep) != 0 {
        (sep..end).find(|&i| !blank(at(i)))
    } else {
        None
    };
    // An argument stops at a NUL, as the C string Linux makes of it does.
    let arg = arg.map(|a| {
        let stop = (a..end).find(|&i| at(i) == 0).unwrap_or(end);
        &head[a..stop]
    });
    Some(Ok(Shebang {
        interpreter: &head[name..sep],
        arg: arg.filter(|a| !a.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A program header: type, flags, offset, vaddr, filesz, memsz.
    type Phdr = (u32, u32, u64, u64, u64, u64);

    /// Header + `phdrs` + body.
    fn elf(kind: u16, entry: u64, phdrs: &[Phdr], body: &[u8]) -> Vec<u64> {
        let mut f = vec![0u8; 64 + 56 * phdrs.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&kind.to_le_bytes());
        f[18] = 62;
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54] = 56;
        f[56..58].copy_from_slice(&u16::try_from(phdrs.len()).expect("few").to_le_bytes());
        for (i, &(t, fl, off, va, fs, ms)) in phdrs.iter().enumerate() {
            let p = 64 + 56 * i;
            f[p..p + 4].copy_from_slice(&t.to_le_bytes());
            f[p + 4..p + 8].copy_from_slice(&fl.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&va.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&fs.to_le_bytes());
            f[p + 40..p + 48].copy_from_slice(&ms.to_le_bytes());
        }
        f.extend_from_slice(body);
        f.resize(f.len().next_multiple_of(8), 0);
        f.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }

    fn bytes(v: &[u64]) -> &[u8] {
        // SAFETY: u64 has no padding; every byte of it is a valid u8.
        unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * 8) }
    }

    const RX: u32 = Prot::R | Prot::X;
    const RW: u32 = Prot::R | Prot::W;

    #[test]
    fn static_program_segments_entry_and_headers() {
        let f = elf(
            ET_EXEC,
            0x40_1000,
            &[
                (PT_LOAD, Prot::R, 0, 0x40_0000, 0x200, 0x200),
                (PT_LOAD, RX, 0x100, 0x40_1000, 0x10, 0x10),
                (PT_LOAD, RW, 0x110, 0x40_2110, 0x8, 0x3000),
                (PT_GNU_STACK, RW, 0, 0, 0, 0),
            ],
            &[0x90; 0x100],
        );
        let p = plan(bytes(&f)).expect("valid");
        assert_eq!(p.segments.len(), 3);
        assert!(!p.position_independent && !p.exec_stack && p.interp.is_none());
        assert_eq!(p.phdr, Some(0x40_0040));
        assert_eq!(p.span, (0x40_0000, 0x40_6000));
        assert_eq!(p.brk(), 0x40_6000);
    }

    #[test]
    fn interpreter_path_is_read_and_checked() {
        let body = b"/lib/ld-musl-x86_64.so.1\0";
        let off = 64 + 56 * 2;
        let len = body.len() as u64;
        let f = elf(
            ET_DYN,
            0x1000,
            &[
                (PT_INTERP, Prot::R, off, 0, len, len),
                (PT_LOAD, RX, 0, 0, 0x80, 0x1100),
            ],
            body,
        );
        let p = plan(bytes(&f)).expect("valid");
        assert_eq!(p.interp, Some(&body[..body.len() - 1]));
        assert!(
            p.exec_stack,
            "no PT_GNU_STACK: executable stack, as Linux assumes"
        );
        let unterminated = elf(
            ET_DYN,
            0x1000,
            &[
                (PT_INTERP, Prot::R, off, 0, len - 1, len - 1),
                (PT_LOAD, RX, 0, 0, 0x80, 0x1100),
            ],
            body,
        );
        assert_eq!(plan(bytes(&unterminated)), Err(LoadError::BadInterpreter));
    }

    #[test]
    fn malformed_programs_are_errors() {
        let seg = (PT_LOAD, RX, 0, 0x40_0000, 0x80, 0x80);
        let cases: [(u16, u64, Vec<Phdr>, LoadError); 6] = [
            (1, 0x40_0000, vec![seg], LoadError::NotExecutable(1)),
            (ET_EXEC, 0x40_0000, vec![], LoadError::NoSegments),
            (ET_EXEC, 0x50_0000, vec![seg], LoadError::BadEntry),
            (
                ET_EXEC,
                0x40_0000,
                vec![(PT_LOAD, RX, 0, 0x40_0000, 0x1_0000, 0x80)],
                LoadError::BadSegment,
            ),
            (
                ET_EXEC,
                0x40_0000,
                vec![(PT_LOAD, RX, 0, u64::MAX - 8, 0x80, 0x80)],
                LoadError::BadSegment,
            ),
            (
                ET_EXEC,
                0x40_0000,
                vec![seg, (PT_LOAD, RW, 0, 0x40_0040, 0x10, 0x10)],
                LoadError::SegmentsOverlap,
            ),
        ];
        for (kind, entry, phdrs, want) in cases {
            let f = elf(kind, entry, &phdrs, &[0; 0x80]);
            assert_eq!(plan(bytes(&f)), Err(want), "{phdrs:x?}");
        }
    }

    #[test]
    fn shebang_lines_read_as_linux_reads_them() {
        let ok = |i: &'static [u8], a: Option<&'static [u8]>| {
            Some(Ok(Shebang {
                interpreter: i,
                arg: a,
            }))
        };
        assert_eq!(shebang(b"#!/bin/sh\necho"), ok(b"/bin/sh", None));
        assert_eq!(shebang(b"#! /bin/sh  \n"), ok(b"/bin/sh", None));
        assert_eq!(
            shebang(b"#!/usr/bin/env  python3 -u \t\n"),
            ok(b"/usr/bin/env", Some(b"python3 -u"))
        );
        assert_eq!(
            shebang(b"#!/bin/sh"),
            ok(b"/bin/sh", None),
            "the file's end ends the name"
        );
        assert_eq!(shebang(b"#!/bin/sh -x"), ok(b"/bin/sh", Some(b"-x")));
        assert_eq!(shebang(b"#!  \n"), Some(Err(())));
        assert_eq!(shebang(b"#!/bin/sh -x\0y\n"), ok(b"/bin/sh", Some(b"-x")));
        assert_eq!(shebang(b"\x7fELF"), None);
        let mut long = vec![b'#', b'!'];
        long.resize(300, b'a');
        assert_eq!(shebang(&long), Some(Err(())), "name longer than the buffer");
    }
}
