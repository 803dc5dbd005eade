//! Patch plans for AArch64: each `svc #0` (or promoted cancel `bl`) becomes `b` to a
//! per-site trampoline in a page within branch range (±128 MiB), which calls kbox through an
//! absolute literal and branches back to the next instruction.

use super::insn;
use alloc::vec::Vec;

/// Reach of `b`: ±128 MiB.
pub const B_REACH: u64 = 128 << 20;
/// Bytes of one trampoline.
pub const TRAMPOLINE_SIZE: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Site and trampoline are more than ±128 MiB apart: use a veneer page nearer the site.
    OutOfRange,
    Misaligned,
}

#[derive(Debug, Clone)]
pub struct Trampoline {
    pub bytes: Vec<u8>,
    /// Where the call into kbox returns to; the registry expects exactly this one.
    pub return_addr: u64,
}

/// The trampoline for a site at `site` placed at `at` (8-byte aligned), entering kbox at
/// `entry` with `site_id` in x16 and resuming at `site + 4`.
pub fn trampoline(site: u64, at: u64, site_id: u32, entry: u64) -> Result<Trampoline, LayoutError> {
    if !at.is_multiple_of(8) || !site.is_multiple_of(4) {
        return Err(LayoutError::Misaligned);
    }
    let [lo, hi] = [site_id & 0xFFFF, site_id >> 16];
    let mut w: Vec<u32> = alloc::vec![
        0xD100_83FF,             // sub sp, sp, #32
        0xA900_7BF0,             // stp x16, x30, [sp]
        0xD280_0010 | (lo << 5), // movz x16, #lo
        0xF2A0_0010 | (hi << 5), // movk x16, #hi, lsl #16
        0x5800_00DE,             // ldr x30, [pc + 24] (the literal below)
        0xD63F_03C0,             // blr x30
        0xA940_7BF0,             // ldp x16, x30, [sp]
        0x9100_83FF,             // add sp, sp, #32
    ];
    let back_at = at + 4 * w.len() as u64;
    let back = offset(site + 4, back_at)?;
    w.push(insn::encode_b(back, false).ok_or(LayoutError::OutOfRange)?);
    w.push(0xD420_0000); // brk #0: never reached, keeps the literal 8-byte aligned
    let mut bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    bytes.extend_from_slice(&entry.to_le_bytes());
    debug_assert_eq!(bytes.len(), TRAMPOLINE_SIZE);
    Ok(Trampoline {
        bytes,
        return_addr: at + 24,
    })
}

/// The word replacing the site: `b` to its trampoline.
pub fn patch_word(site: u64, trampoline_at: u64) -> Result<u32, LayoutError> {
    insn::encode_b(offset(trampoline_at, site)?, false).ok_or(LayoutError::OutOfRange)
}

fn offset(to: u64, from: u64) -> Result<i64, LayoutError> {
    let d = to.wrapping_sub(from).cast_signed();
    if d.unsigned_abs() >= B_REACH {
        Err(LayoutError::OutOfRange)
    } else {
        Ok(d)
    }
}

/// Groups sorted site addresses so that one veneer page per group, placed anywhere in the
/// group's returned `[lo, hi)` range, is within `b` reach of every site in it.
pub fn veneer_groups(sites: &[u64], page: u64) -> Vec<(u64, u64)> {
    // Half the reach per side leaves the page room anywhere between the group's ends.
    let span = B_REACH / 2;
    let mut groups: Vec<(u64, u64, u64)> = Vec::new();
    for &s in sites {
        match groups.last_mut() {
            Some((first, last, _)) if s - *first < span => *last = s,
            _ => groups.push((s, s, 0)),
        }
    }
    groups
        .iter()
        .map(|&(first, last, _)| {
            let lo = last.saturating_sub(B_REACH - page);
            let hi = first.saturating_add(B_REACH - page);
            (lo, hi)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trampoline_returns_after_the_site() {
        let t = trampoline(0x40_0000, 0x41_0000, 7, 0xdead_beef_0000).expect("near");
        let back = u32::from_le_bytes(t.bytes[32..36].try_into().expect("4 bytes"));
        let off = insn::b_offset(back).expect("a b");
        assert_eq!((0x41_0000u64 + 32).wrapping_add_signed(off), 0x40_0004);
        assert_eq!(&t.bytes[40..48], &0xdead_beef_0000u64.to_le_bytes());
        assert_eq!(t.bytes[8..12], (0xD280_0010u32 | (7 << 5)).to_le_bytes());
    }

    #[test]
    fn site_out_of_branch_range_is_refused() {
        assert_eq!(
            patch_word(0x40_0000, 0x40_0000 + B_REACH),
            Err(LayoutError::OutOfRange)
        );
        assert!(patch_word(0x40_0000, 0x40_0000 + B_REACH - 4).is_ok());
    }

    #[test]
    fn veneer_groups_keep_every_site_in_reach() {
        let page = 4096;
        let sites: Vec<u64> = (0..40).map(|i| 0x1000_0000 + i * (10 << 20)).collect();
        let groups = veneer_groups(&sites, page);
        assert!(groups.len() > 1, "400 MiB of sites cannot share one page");
        let mut gi = 0;
        let mut first = sites[0];
        for &s in &sites {
            if s - first >= B_REACH / 2 {
                gi += 1;
                first = s;
            }
            let (lo, hi) = groups[gi];
            for page_at in [lo, hi - page] {
                assert!(patch_word(s, page_at).is_ok(), "{s:#x} -> {page_at:#x}");
            }
        }
    }
}
