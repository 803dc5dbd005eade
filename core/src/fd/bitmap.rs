//! Fixed-size bitmaps over the guest FD space: one flat level for membership sets, and a
//! two-level one whose summary of full words makes "lowest clear bit at or above n" O(1).

use super::FD_LIMIT;

const WORDS: usize = FD_LIMIT / 64;
const SUMMARY_WORDS: usize = WORDS / 64;

/// One bit per guest FD number; all-zero is the empty set.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bits {
    words: [u64; WORDS],
}

impl Bits {
    pub(crate) const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub(crate) fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub(crate) fn word(&self, w: usize) -> u64 {
        self.words[w]
    }

    pub(crate) fn copy_from(&mut self, src: &Self) {
        self.words.copy_from_slice(&src.words);
    }

    /// Set bits in ascending order.
    pub(crate) fn iter(&self) -> BitsIter<'_> {
        BitsIter {
            words: &self.words,
            word: 0,
            pending: self.words[0],
        }
    }
}

pub(crate) struct BitsIter<'a> {
    words: &'a [u64; WORDS],
    word: usize,
    pending: u64,
}

impl Iterator for BitsIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.pending == 0 {
            self.word += 1;
            self.pending = *self.words.get(self.word)?;
        }
        let bit = self.pending.trailing_zeros() as usize;
        self.pending &= self.pending - 1;
        Some(self.word * 64 + bit)
    }
}

/// A `Bits` plus one summary bit per word that is set when that word is full, so finding a
/// free number skips 4096 used numbers per summary bit.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AllocBitmap {
    used: Bits,
    full: [u64; SUMMARY_WORDS],
}

impl AllocBitmap {
    pub(crate) const fn new() -> Self {
        Self {
            used: Bits::new(),
            full: [0; SUMMARY_WORDS],
        }
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.used.contains(i)
    }

    pub(crate) fn insert(&mut self, i: usize) {
        self.used.insert(i);
        let w = i / 64;
        if self.used.word(w) == u64::MAX {
            self.full[w / 64] |= 1 << (w % 64);
        }
    }

    pub(crate) fn remove(&mut self, i: usize) {
        self.used.remove(i);
        let w = i / 64;
        self.full[w / 64] &= !(1 << (w % 64));
    }

    pub(crate) fn used(&self) -> &Bits {
        &self.used
    }

    pub(crate) fn copy_from(&mut self, src: &Self) {
        self.used.copy_from(&src.used);
        self.full = src.full;
    }

    /// The lowest clear bit `>= from` and `< below`, if any. At most one word of the first
    /// level, the 16 summary words, and one more first-level word are read.
    pub(crate) fn lowest_clear(&self, from: usize, below: usize) -> Option<usize> {
        if from >= below {
            return None;
        }
        let w = from / 64;
        let here = !self.used.word(w) & (u64::MAX << (from % 64));
        let found = if here != 0 {
            w * 64 + here.trailing_zeros() as usize
        } else {
            let next_word = self.lowest_nonfull_word(w + 1)?;
            next_word * 64 + (!self.used.word(next_word)).trailing_zeros() as usize
        };
        (found < below).then_some(found)
    }

    fn lowest_nonfull_word(&self, from_word: usize) -> Option<usize> {
        if from_word >= WORDS {
            return None;
        }
        let mut s = from_word / 64;
        let mut candidates = !self.full[s] & (u64::MAX << (from_word % 64));
        loop {
            if candidates != 0 {
                return Some(s * 64 + candidates.trailing_zeros() as usize);
            }
            s += 1;
            candidates = !*self.full.get(s)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_clear_when_words_fill_skips_to_next_free() {
        let mut b = AllocBitmap::new();
        for i in 0..5000 {
            b.insert(i);
        }
        assert_eq!(b.lowest_clear(0, FD_LIMIT), Some(5000));
        b.remove(63);
        assert_eq!(b.lowest_clear(0, FD_LIMIT), Some(63));
        assert_eq!(b.lowest_clear(64, FD_LIMIT), Some(5000));
        assert_eq!(b.lowest_clear(64, 5000), None);
    }

    #[test]
    fn lowest_clear_when_all_set_is_none() {
        let mut b = AllocBitmap::new();
        for i in 0..FD_LIMIT {
            b.insert(i);
        }
        assert_eq!(b.lowest_clear(0, FD_LIMIT), None);
        b.remove(FD_LIMIT - 1);
        assert_eq!(b.lowest_clear(7, FD_LIMIT), Some(FD_LIMIT - 1));
    }

    #[test]
    fn iter_yields_set_bits_in_order() {
        let mut b = Bits::new();
        for i in [0, 63, 64, 1025, 65535] {
            b.insert(i);
        }
        let mut it = b.iter();
        for want in [0, 63, 64, 1025, 65535] {
            assert_eq!(it.next(), Some(want));
        }
        assert_eq!(it.next(), None);
    }
}
