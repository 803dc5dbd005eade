//! ELF64 program-header reading for the site scanner.
//!
//! xmas-elf does the field decoding, but it indexes and casts without checking (a 62-byte
//! input made 0.10 panic) and asserts on alignment, so every offset, size and count it will
//! touch is validated here first; anything malformed is an [`ElfError`], never a panic.

use alloc::vec::Vec;
use xmas_elf::header::{self, Machine as XMachine};
use xmas_elf::program::{self, Type};

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// e_phnum value that moves the real count into section 0 (extended numbering).
const PN_XNUM: u16 = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF64 header.
    TooShort,
    BadMagic,
    /// Not ELF64 little-endian, the only layout of the architectures kbox runs.
    UnsupportedClass,
    /// The buffer is not 8-byte aligned, which xmas-elf requires of its header views.
    Misaligned,
    /// e_machine is neither x86-64 nor AArch64.
    UnsupportedMachine(u16),
    /// e_phentsize is not 56, or e_phnum uses extended numbering.
    BadProgramHeaderSize,
    /// The program header table does not lie inside the file.
    ProgramHeadersOutOfBounds,
    /// Program header `index` has file bytes or addresses outside any valid range.
    SegmentOutOfBounds {
        index: u16,
    },
    /// xmas-elf rejected a field we had already bounds-checked.
    Field(&'static str),
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("file shorter than an ELF64 header"),
            Self::BadMagic => f.write_str("no ELF magic"),
            Self::UnsupportedClass => f.write_str("not a little-endian ELF64 file"),
            Self::Misaligned => f.write_str("ELF buffer is not 8-byte aligned"),
            Self::UnsupportedMachine(m) => write!(f, "unsupported e_machine {m}"),
            Self::BadProgramHeaderSize => f.write_str("unexpected program header size or count"),
            Self::ProgramHeadersOutOfBounds => f.write_str("program header table outside the file"),
            Self::SegmentOutOfBounds { index } => write!(f, "segment {index} outside the file"),
            Self::Field(why) => write!(f, "malformed ELF field: {why}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
}

/// File bytes of one executable PT_LOAD segment, with the address they are mapped at.
#[derive(Debug, Clone, Copy)]
pub struct CodeSegment<'a> {
    pub vaddr: u64,
    pub bytes: &'a [u8],
}

#[derive(Debug)]
pub struct Image<'a> {
    pub machine: Machine,
    /// ET_DYN (PIE or shared object) rather than ET_EXEC.
    pub position_independent: bool,
    /// Has PT_INTERP: the program is dynamically linked.
    pub has_interp: bool,
    pub code: Vec<CodeSegment<'a>>,
}

impl Image<'_> {
    /// Static binaries carry their libc inside; a dynamic one loads it from elsewhere.
    pub fn is_static(&self) -> bool {
        !self.has_interp
    }
}

pub(crate) fn le_u16(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

pub(crate) fn le_u64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Checks everything xmas-elf will read for the header and program header table.
/// Returns the table's offset and entry count.
pub(crate) fn validate_header(data: &[u8]) -> Result<(usize, u16), ElfError> {
    if data.len() < EHDR_SIZE {
        return Err(ElfError::TooShort);
    }
    if data[..4] != header::MAGIC {
        return Err(ElfError::BadMagic);
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if data[4] != 2 || data[5] != 1 {
        return Err(ElfError::UnsupportedClass);
    }
    if data.as_ptr().align_offset(8) != 0 {
        return Err(ElfError::Misaligned);
    }
    let phoff = le_u64(data, 32);
    let phentsize = le_u16(data, 54);
    let phnum = le_u16(data, 56);
    if phnum == 0 {
        return Ok((0, 0));
    }
    if usize::from(phentsize) != PHDR_SIZE || phnum == PN_XNUM {
        return Err(ElfError::BadProgramHeaderSize);
    }
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::ProgramHeadersOutOfBounds)?;
    let end = usize::from(phnum)
        .checked_mul(PHDR_SIZE)
        .and_then(|n| n.checked_add(phoff))
        .ok_or(ElfError::ProgramHeadersOutOfBounds)?;
    if phoff == 0 || end > data.len() || phoff % 8 != 0 {
        return Err(ElfError::ProgramHeadersOutOfBounds);
    }
    Ok((phoff, phnum))
}

/// Parses `data` (8-byte aligned, e.g. a mapped file) into its executable segments.
pub fn parse(data: &[u8]) -> Result<Image<'_>, ElfError> {
    let (_, phnum) = validate_header(data)?;
    let hdr = header::parse_header(data).map_err(ElfError::Field)?;
    let machine = match hdr.pt2.machine().as_machine() {
        XMachine::X86_64 => Machine::X86_64,
        XMachine::AArch64 => Machine::Aarch64,
        _ => return Err(ElfError::UnsupportedMachine(le_u16(data, 18))),
    };
    let position_independent = matches!(hdr.pt2.type_().as_type(), header::Type::SharedObject);
    let mut image = Image {
        machine,
        position_independent,
        has_interp: false,
        code: Vec::new(),
    };
    for index in 0..phnum {
        let ph = program::parse_program_header(data, hdr, index).map_err(ElfError::Field)?;
        let oob = ElfError::SegmentOutOfBounds { index };
        let kind = ph.get_type().map_err(ElfError::Field)?;
        if kind == Type::Interp {
            image.has_interp = true;
            continue;
        }
        if kind != Type::Load || !ph.flags().is_execute() {
            continue;
        }
        let start = usize::try_from(ph.offset()).map_err(|_| oob)?;
        let len = usize::try_from(ph.file_size()).map_err(|_| oob)?;
        let bytes = start
            .checked_add(len)
            .and_then(|end| data.get(start..end))
            .ok_or(oob)?;
        let vaddr = ph.virtual_addr();
        if ph.file_size() > ph.mem_size() || vaddr.checked_add(ph.mem_size()).is_none() {
            return Err(oob);
        }
        image.code.push(CodeSegment { vaddr, bytes });
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An 8-byte aligned copy, as a mapped file would be.
    fn aligned(bytes: &[u8]) -> Vec<u64> {
        let mut v = vec![0u64; bytes.len().div_ceil(8)];
        for (i, b) in bytes.iter().enumerate() {
            v[i / 8] |= u64::from(*b) << ((i % 8) * 8);
        }
        v
    }

    fn as_bytes(v: &[u64], len: usize) -> &[u8] {
        // SAFETY: u64 has no padding and any byte is a valid u8; len <= v.len() * 8.
        unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), len) }
    }

    /// A minimal x86-64 ET_EXEC with one R+X PT_LOAD covering `code`.
    fn tiny_elf(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(&header::MAGIC);
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16] = 2; // ET_EXEC
        f[18] = 62; // EM_X86_64
        f[20] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[52] = 64;
        f[54] = 56;
        f[56] = 1;
        let ph = 64;
        f[ph] = 1; // PT_LOAD
        f[ph + 4] = 5; // R+X
        let off = u64::try_from(f.len()).expect("small");
        let len = u64::try_from(code.len()).expect("small");
        f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&0x40_0000u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    fn parse_copy(bytes: &[u8]) -> Result<(Machine, usize, u64), ElfError> {
        let v = aligned(bytes);
        let img = parse(as_bytes(&v, bytes.len()))?;
        let seg = img
            .code
            .first()
            .map_or((0, 0), |s| (s.bytes.len(), s.vaddr));
        Ok((img.machine, seg.0, seg.1))
    }

    #[test]
    fn tiny_exec_yields_its_code_segment() {
        let f = tiny_elf(&[0x0F, 0x05, 0xC3]);
        assert_eq!(parse_copy(&f), Ok((Machine::X86_64, 3, 0x40_0000)));
    }

    #[test]
    fn segment_past_end_of_file_is_an_error() {
        let mut f = tiny_elf(&[0x0F, 0x05]);
        f[64 + 32] = 0xFF; // p_filesz far beyond the file
        assert_eq!(
            parse_copy(&f),
            Err(ElfError::SegmentOutOfBounds { index: 0 })
        );
    }

    #[test]
    fn program_headers_past_end_are_an_error() {
        let mut f = tiny_elf(&[]);
        f[56] = 3; // three headers, room for one
        assert_eq!(parse_copy(&f), Err(ElfError::ProgramHeadersOutOfBounds));
    }

    #[test]
    fn huge_phoff_is_an_error_not_an_overflow() {
        let mut f = tiny_elf(&[]);
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse_copy(&f), Err(ElfError::ProgramHeadersOutOfBounds));
    }

    #[test]
    fn wrong_phentsize_is_an_error() {
        let mut f = tiny_elf(&[]);
        f[54] = 32;
        assert_eq!(parse_copy(&f), Err(ElfError::BadProgramHeaderSize));
    }

    #[test]
    fn truncated_header_is_an_error() {
        let f = tiny_elf(&[]);
        assert_eq!(parse_copy(&f[..62]), Err(ElfError::TooShort));
    }

    #[test]
    fn elf32_is_rejected() {
        let mut f = tiny_elf(&[]);
        f[4] = 1;
        assert_eq!(parse_copy(&f), Err(ElfError::UnsupportedClass));
    }

    #[test]
    fn misaligned_buffer_is_an_error() {
        let f = tiny_elf(&[0x90]);
        let v = aligned(&[&[0u8][..], &f].concat());
        let shifted = &as_bytes(&v, f.len() + 1)[1..];
        assert_eq!(parse(shifted).err(), Some(ElfError::Misaligned));
    }

    #[test]
    fn other_machine_is_rejected() {
        let mut f = tiny_elf(&[]);
        f[18] = 40; // EM_ARM
        assert_eq!(parse_copy(&f), Err(ElfError::UnsupportedMachine(40)));
    }
}
