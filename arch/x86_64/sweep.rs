//! Linear sweep over a code range, yielding every instruction boundary.
//!
//! Resync rule: an undecodable byte is skipped alone and decoding restarts at the next byte.
//! Compilers do not place data in x86-64 text, so the only undecodable bytes in practice are
//! padding or hand-written data, and objdump resyncs the same way (see docs/rewrite.md).

use super::decode::{DecodeError, Insn, decode};

/// One position of the sweep: a decoded instruction or one skipped byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Insn(Insn),
    /// One byte that does not start a valid instruction.
    Bad,
    /// The range ends inside an instruction.
    Truncated,
}

#[derive(Debug, Clone)]
pub struct Sweep<'a> {
    code: &'a [u8],
    pos: usize,
}

impl<'a> Sweep<'a> {
    pub fn new(code: &'a [u8]) -> Self {
        Self { code, pos: 0 }
    }
}

impl Iterator for Sweep<'_> {
    /// Offset of the step within the range and what was found there.
    type Item = (usize, Step);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.code.get(self.pos..).filter(|r| !r.is_empty())?;
        let at = self.pos;
        let step = match decode(rest) {
            Ok(insn) => {
                self.pos += insn.size();
                Step::Insn(insn)
            }
            Err(DecodeError::Invalid) => {
                self.pos += 1;
                Step::Bad
            }
            Err(DecodeError::Truncated) => {
                self.pos = self.code.len();
                Step::Truncated
            }
        };
        Some((at, step))
    }
}
