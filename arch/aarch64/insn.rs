//! The few A64 encodings the rewriter reads and writes (Arm ARM, C4 and C6).

/// `svc #0`.
pub const SVC0: u32 = 0xD400_0001;
/// `ret` (x30).
pub const RET: u32 = 0xD65F_03C0;

/// Reads the little-endian word at byte offset `at`.
pub fn word(code: &[u8], at: usize) -> Option<u32> {
    let b = code.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// `movz Rd, #imm16, lsl #(hw*16)` in either width: (rd, value).
pub fn movz(w: u32) -> Option<(u8, u64)> {
    if w & 0x7F80_0000 != 0x5280_0000 {
        return None;
    }
    let hw = (w >> 21) & 3;
    if w >> 31 == 0 && hw > 1 {
        return None;
    }
    let imm = u64::from((w >> 5) & 0xFFFF);
    Some((rd(w), imm << (hw * 16)))
}

/// `mov Xd, Xm` (ORR Xd, XZR, Xm): (rd, rm).
pub fn mov_reg64(w: u32) -> Option<(u8, u8)> {
    (w & 0xFFE0_FFE0 == 0xAA00_03E0).then(|| (rd(w), low5(w >> 16)))
}

/// Byte offset of a `bl` target.
pub fn bl_offset(w: u32) -> Option<i64> {
    (w & 0xFC00_0000 == 0x9400_0000).then(|| imm26(w))
}

/// Byte offset of a `b` target.
pub fn b_offset(w: u32) -> Option<i64> {
    (w & 0xFC00_0000 == 0x1400_0000).then(|| imm26(w))
}

/// Encodes `b` (or `bl`) to a byte offset, if it is word-aligned and within ±128 MiB.
pub fn encode_b(offset: i64, link: bool) -> Option<u32> {
    if offset % 4 != 0 || !(-(1 << 27)..(1 << 27)).contains(&offset) {
        return None;
    }
    let imm = u32::try_from((offset >> 2) & 0x03FF_FFFF).ok()?;
    Some(if link { 0x9400_0000 } else { 0x1400_0000 } | imm)
}

/// Whether control can leave straight-line flow at this instruction (branches, returns,
/// exception generation), which ends a backward search for a register's definition.
pub fn is_control_flow(w: u32) -> bool {
    // Branches, exception generation and system instructions share op0 = x101.
    (w >> 26) & 0x7 == 0x5
}

fn imm26(w: u32) -> i64 {
    // Sign-extend the 26-bit word offset, then scale to bytes.
    let v = i64::from(w & 0x03FF_FFFF);
    ((v << 38) >> 38) * 4
}

fn rd(w: u32) -> u8 {
    low5(w)
}

fn low5(v: u32) -> u8 {
    // Masked to five bits, so the value always fits.
    u8::try_from(v & 0x1F).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movz_x8_decodes_number_and_register() {
        // mov x8, #220
        assert_eq!(movz(0xD280_1B88), Some((8, 220)));
        // mov w8, #63
        assert_eq!(movz(0x5280_07E8), Some((8, 63)));
    }

    #[test]
    fn movk_is_not_movz() {
        // movk x8, #1
        assert_eq!(movz(0xF280_0028), None);
    }

    #[test]
    fn mov_x8_x1_is_a_register_move() {
        assert_eq!(mov_reg64(0xAA01_03E8), Some((8, 1)));
        // orr x8, x2, x1 is not a plain move
        assert_eq!(mov_reg64(0xAA01_0048), None);
    }

    #[test]
    fn branch_encoding_round_trips() {
        for off in [-(1i64 << 27), -4, 0, 4, 0x0234_5678, (1 << 27) - 4] {
            let b = encode_b(off, false).expect("in range");
            assert_eq!(b_offset(b), Some(off));
            let bl = encode_b(off, true).expect("in range");
            assert_eq!(bl_offset(bl), Some(off));
        }
    }

    #[test]
    fn branch_out_of_range_is_refused() {
        assert_eq!(encode_b(1 << 27, false), None);
        assert_eq!(encode_b(-(1 << 27) - 4, false), None);
        assert_eq!(encode_b(2, false), None);
    }
}
