//! x86-64 instruction length decoder.
//!
//! It answers one question per position: how long is the instruction starting here, and is
//! it something the rewriter must care about (a `syscall`, a relative branch, a RIP-relative
//! operand, a call, `endbr64`)? It does not name mnemonics. Tables follow the opcode maps of
//! the Intel SDM Vol. 2 appendix A and the AMD APM Vol. 3 (XOP, 3DNow!), 64-bit mode only.

/// Architectural limit on instruction length.
pub const MAX_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The opcode is undefined in 64-bit mode, or the encoding exceeds 15 bytes.
    Invalid,
}

/// What the rewriter needs to know about one instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `syscall` (0F 05).
    Syscall,
    /// A direct branch with a relative displacement: Jcc, JMP, CALL, LOOP/JrCXZ, XBEGIN.
    RelBranch {
        call: bool,
    },
    /// An indirect `call` (FF /2, FF /3): the next instruction is a return landing.
    IndirectCall,
    /// `endbr64`: marks an indirect-branch target in CET-enabled code.
    Endbr64,
    Other,
}

/// Location of a displacement field inside an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u8,
    pub size: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub len: u8,
    pub kind: Kind,
    /// The relative displacement of a direct branch.
    pub rel: Option<Field>,
    /// A RIP-relative memory operand's disp32 (ModRM mod=00, r/m=101).
    pub rip_disp: Option<Field>,
}

impl Insn {
    /// Length in bytes, as a usize for slicing.
    pub fn size(&self) -> usize {
        usize::from(self.len)
    }

    /// Target of a direct branch located at `ip`, or None for anything else.
    pub fn branch_target(&self, bytes: &[u8], ip: u64) -> Option<u64> {
        let f = self.rel?;
        let disp = read_signed(bytes, f)?;
        let next = ip.checked_add(u64::from(self.len))?;
        Some(next.wrapping_add_signed(disp))
    }
}

/// Sign-extends the little-endian field `f` of `bytes`.
pub fn read_signed(bytes: &[u8], f: Field) -> Option<i64> {
    let start = usize::from(f.offset);
    let raw = bytes.get(start..start + usize::from(f.size))?;
    Some(match *raw {
        [a] => i64::from(i8::from_le_bytes([a])),
        [a, b] => i64::from(i16::from_le_bytes([a, b])),
        [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
        _ => return None,
    })
}

#[derive(Default, Clone, Copy)]
struct Prefixes {
    opsize: bool,
    addrsize: bool,
    rep: bool,
    repne: bool,
    rex_w: bool,
}

/// Immediate operand sizes, resolved against the prefixes once the opcode is known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Imm {
    None,
    B,
    W,
    /// imm16 with 66h, else imm32 (never 64 bits).
    Z,
    /// imm64 with REX.W, imm16 with 66h, else imm32 (MOV r, imm only).
    V,
    /// ENTER: imm16 + imm8.
    WB,
    /// EXTRQ/INSERTQ: two imm8.
    BB,
    /// XOP map 0Ah: imm32.
    D,
    /// moffs: 8 bytes, 4 with 67h.
    Moffs,
}

/// How the opcode byte is followed.
#[derive(Clone, Copy)]
struct Shape {
    modrm: bool,
    imm: Imm,
    kind: Kind,
    /// Relative displacement size in bytes, taken from the immediate slot.
    rel: bool,
}

const fn plain(modrm: bool, imm: Imm) -> Shape {
    Shape {
        modrm,
        imm,
        kind: Kind::Other,
        rel: false,
    }
}

const fn branch(imm: Imm, call: bool) -> Shape {
    Shape {
        modrm: false,
        imm,
        kind: Kind::RelBranch { call },
        rel: true,
    }
}

/// Decodes the instruction at the start of `code`.
pub fn decode(code: &[u8]) -> Result<Insn, DecodeError> {
    let mut c = Cursor { code, pos: 0 };
    let mut p = Prefixes::default();
    let op = loop {
        let b = c.byte()?;
        match b {
            0x66 => p.opsize = true,
            0x67 => p.addrsize = true,
            0xF3 => p.rep = true,
            0xF2 => p.repne = true,
            0xF0 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 => {}
            0x40..=0x4F => {
                // A REX prefix only counts when the opcode follows it directly.
                let next = c.peek()?;
                if is_prefix(next) || (0x40..=0x4F).contains(&next) {
                    continue;
                }
                p.rex_w = b & 0x08 != 0;
            }
            _ => break b,
        }
    };
    let shape = match op {
        0x0F => return two_byte(&mut c, p),
        0xC4 | 0xC5 => return vex(&mut c, p, op),
        0x62 => return evex(&mut c, p),
        0x8F if c.peek()? & 0x1F >= 8 => return xop(&mut c, p),
        _ => one_byte(op).ok_or(DecodeError::Invalid)?,
    };
    let shape = refine_one_byte(&mut c, op, shape)?;
    finish(&mut c, p, shape, false)
}

fn is_prefix(b: u8) -> bool {
    matches!(
        b,
        0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65
    )
}

fn one_byte(op: u8) -> Option<Shape> {
    use Imm::*;
    Some(match op {
        // ALU blocks: r/m forms, then AL,imm8 and eAX,imm.
        0x00..=0x3F => match op & 7 {
            0..=3 => plain(true, None),
            4 => plain(false, B),
            5 => plain(false, Z),
            // push/pop of segment registers, DAA/DAS/AAA/AAS: gone in 64-bit mode.
            _ => return Option::None,
        },
        0x50..=0x5F => plain(false, None),
        0x63 => plain(true, None),
        0x68 => plain(false, Z),
        0x69 => plain(true, Z),
        0x6A => plain(false, B),
        0x6B => plain(true, B),
        0x6C..=0x6F => plain(false, None),
        0x70..=0x7F => branch(B, false),
        0x80 | 0x83 => plain(true, B),
        0x81 => plain(true, Z),
        0x84..=0x8F => plain(true, None),
        0x90..=0x99 | 0x9B..=0x9F => plain(false, None),
        0xA0..=0xA3 => plain(false, Moffs),
        0xA4..=0xA7 | 0xAA..=0xAF => plain(false, None),
        0xA8 => plain(false, B),
        0xA9 => plain(false, Z),
        0xB0..=0xB7 => plain(false, B),
        0xB8..=0xBF => plain(false, V),
        0xC0 | 0xC1 | 0xC6 => plain(true, B),
        0xC2 | 0xCA => plain(false, W),
        0xC3 | 0xC9 | 0xCB | 0xCC | 0xCF => plain(false, None),
        0xC7 => plain(true, Z),
        0xC8 => plain(false, WB),
        0xCD => plain(false, B),
        0xD0..=0xD3 => plain(true, None),
        0xD7 => plain(false, None),
        0xD8..=0xDF => plain(true, None),
        0xE0..=0xE3 | 0xEB => branch(B, false),
        0xE4..=0xE7 => plain(false, B),
        0xE8 => branch(Z, true),
        0xE9 => branch(Z, false),
        0xEC..=0xEF | 0xF1 | 0xF4 | 0xF5 | 0xF8..=0xFD => plain(false, None),
        0xF6 | 0xF7 | 0xFE | 0xFF => plain(true, None),
        _ => return Option::None,
    })
}

/// Opcodes whose operands depend on the ModRM reg field.
fn refine_one_byte(c: &mut Cursor<'_>, op: u8, mut s: Shape) -> Result<Shape, DecodeError> {
    let modrm = if matches!(op, 0xF6 | 0xF7 | 0xFF | 0xC7) {
        c.peek()?
    } else {
        0
    };
    let reg = (modrm >> 3) & 7;
    match op {
        // TEST r/m, imm is /0 (and the undocumented alias /1).
        0xF6 if reg <= 1 => s.imm = Imm::B,
        0xF7 if reg <= 1 => s.imm = Imm::Z,
        0xFF if matches!(reg, 2 | 3) => s.kind = Kind::IndirectCall,
        // XBEGIN rel32 is C7 F8.
        0xC7 if modrm == 0xF8 => {
            s.kind = Kind::RelBranch { call: false };
            s.rel = true;
        }
        _ => {}
    }
    Ok(s)
}

fn two_byte(c: &mut Cursor<'_>, p: Prefixes) -> Result<Insn, DecodeError> {
    use Imm::*;
    let op = c.byte()?;
    let shape = match op {
        0x38 => {
            c.byte()?;
            plain(true, None)
        }
        0x3A => {
            c.byte()?;
            plain(true, B)
        }
        0x05 => Shape {
            modrm: false,
            imm: None,
            kind: Kind::Syscall,
            rel: false,
        },
        0x00..=0x03 | 0x0D | 0x10..=0x1D | 0x1F | 0x28..=0x2F => plain(true, None),
        0x1E => {
            let kind = if p.rep && c.peek()? == 0xFA {
                Kind::Endbr64
            } else {
                Kind::Other
            };
            Shape {
                modrm: true,
                imm: None,
                kind,
                rel: false,
            }
        }
        0x20..=0x23 => {
            // MOV to/from control and debug registers ignores ModRM.mod: no SIB, no disp.
            c.byte()?;
            return c.insn(Kind::Other, Option::None, Option::None);
        }
        0x06..=0x09 | 0x0B | 0x0E | 0x30..=0x35 | 0x37 | 0x77 | 0xA0..=0xA2 | 0xA8..=0xAA => {
            plain(false, None)
        }
        0xC8..=0xCF => plain(false, None),
        0x0F => plain(true, B),
        0x40..=0x6F | 0x74..=0x76 | 0x7C..=0x7F => plain(true, None),
        0x70..=0x73 => plain(true, B),
        // EXTRQ/INSERTQ (66h / F2h) carry two imm8; VMREAD/VMWRITE carry none.
        0x78 if p.opsize || p.repne => plain(true, BB),
        0x78 | 0x79 => plain(true, None),
        0x7A | 0x7B => return Err(DecodeError::Invalid),
        0x80..=0x8F => branch(Z, false),
        0x90..=0x9F | 0xA3 | 0xA5 | 0xAB | 0xAD..=0xB9 | 0xBB..=0xC1 | 0xC3 | 0xC7 => {
            plain(true, None)
        }
        0xA4 | 0xAC | 0xBA | 0xC2 | 0xC4..=0xC6 => plain(true, B),
        0xD0..=0xFF => plain(true, None),
        _ => return Err(DecodeError::Invalid),
    };
    finish(c, p, shape, false)
}

/// VEX (C4 3-byte, C5 2-byte). In 64-bit mode these bytes are always VEX.
fn vex(c: &mut Cursor<'_>, p: Prefixes, lead: u8) -> Result<Insn, DecodeError> {
    let map = if lead == 0xC5 {
        c.byte()?;
        1
    } else {
        let m = c.byte()? & 0x1F;
        c.byte()?;
        m
    };
    let op = c.byte()?;
    let shape = match map {
        1 if op == 0x77 => plain(false, Imm::None),
        1 => plain(true, map1_imm(op)),
        2 => plain(true, Imm::None),
        3 => plain(true, Imm::B),
        _ => return Err(DecodeError::Invalid),
    };
    finish(c, p, shape, true)
}

/// EVEX (62 P0 P1 P2): always followed by opcode and ModRM.
fn evex(c: &mut Cursor<'_>, p: Prefixes) -> Result<Insn, DecodeError> {
    let map = c.byte()? & 0x07;
    c.byte()?;
    c.byte()?;
    let op = c.byte()?;
    let imm = match map {
        1 => map1_imm(op),
        2 | 5 | 6 => Imm::None,
        3 => Imm::B,
        _ => return Err(DecodeError::Invalid),
    };
    finish(c, p, plain(true, imm), true)
}

/// AMD XOP (8F with map select >= 8).
fn xop(c: &mut Cursor<'_>, p: Prefixes) -> Result<Insn, DecodeError> {
    let map = c.byte()? & 0x1F;
    c.byte()?;
    c.byte()?;
    let imm = match map {
        8 => Imm::B,
        9 => Imm::None,
        0xA => Imm::D,
        _ => return Err(DecodeError::Invalid),
    };
    finish(c, p, plain(true, imm), true)
}

/// Immediates in the 0F map that VEX/EVEX keep.
fn map1_imm(op: u8) -> Imm {
    match op {
        0x70..=0x73 | 0xC2 | 0xC4..=0xC6 => Imm::B,
        _ => Imm::None,
    }
}

fn finish(c: &mut Cursor<'_>, p: Prefixes, s: Shape, vex: bool) -> Result<Insn, DecodeError> {
    let mut rip_disp = None;
    if s.modrm {
        let modrm = c.byte()?;
        let md = modrm >> 6;
        let rm = modrm & 7;
        if md != 3 {
            let mut disp = match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
            if rm == 4 {
                let sib = c.byte()?;
                if md == 0 && sib & 7 == 5 {
                    disp = 4;
                }
            } else if md == 0 && rm == 5 {
                disp = 4;
                rip_disp = Some(Field {
                    offset: c.offset()?,
                    size: 4,
                });
            }
            c.skip(disp)?;
        }
    }
    let imm_len = match s.imm {
        Imm::None => 0,
        Imm::B => 1,
        Imm::W => 2,
        Imm::Z if p.opsize && !vex && !s.rel => 2,
        Imm::Z => 4,
        Imm::V if p.rex_w => 8,
        Imm::V if p.opsize => 2,
        Imm::V => 4,
        Imm::WB => 3,
        Imm::BB => 2,
        Imm::D => 4,
        Imm::Moffs if p.addrsize => 4,
        Imm::Moffs => 8,
    };
    let rel = if s.rel {
        Some(Field {
            offset: c.offset()?,
            size: imm_len,
        })
    } else {
        None
    };
    c.skip(usize::from(imm_len))?;
    c.insn(s.kind, rel, rip_disp)
}

struct Cursor<'a> {
    code: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::Invalid);
        }
        self.code
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.pos += n;
        if self.pos > MAX_LEN {
            return Err(DecodeError::Invalid);
        }
        if self.pos > self.code.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }

    fn offset(&self) -> Result<u8, DecodeError> {
        u8::try_from(self.pos).map_err(|_| DecodeError::Invalid)
    }

    fn insn(
        &self,
        kind: Kind,
        rel: Option<Field>,
        rip_disp: Option<Field>,
    ) -> Result<Insn, DecodeError> {
        Ok(Insn {
            len: self.offset()?,
            kind,
            rel,
            rip_disp,
        })
    }
}
