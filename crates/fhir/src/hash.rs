//! A small, fast, non-cryptographic hasher for the static lookup tables.
//!
//! The tables are keyed by short, trusted strings (element and type names) and are looked
//! up on every validated property, so SipHash's DoS resistance buys nothing here while its
//! cost shows. This is a multiply-rotate hash in the style of rustc's `FxHasher`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hasher; see the module docs.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` using [`FastHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguishes_similar_keys() {
        let mut m: FastMap<&str, u32> = FastMap::default();
        for (i, k) in [
            "a",
            "ab",
            "abc",
            "abcdefgh",
            "abcdefghi",
            "valueString",
            "valueStrin",
        ]
        .iter()
        .enumerate()
        {
            m.insert(k, i as u32);
        }
        assert_eq!(m.get("abcdefghi"), Some(&4));
        assert_eq!(m.get("valueStrin"), Some(&6));
        assert_eq!(m.get("abcd"), None);
    }
}
