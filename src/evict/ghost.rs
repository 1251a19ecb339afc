//! The ghost history: a bounded table of small records about recently evicted keys, looked up
//! by key hash when a key is inserted again.
//!
//! A record is a `u32`: a 16-bit fingerprint (15 bits of the hash and a set bit, so that it is
//! never zero and 0 marks an empty slot) and 16 bits the policy chooses ([`Ghost::add`]'s `info`). The table is cut into
//! buckets of 16 records (one 64-byte cache line, aligned to one), each a FIFO, newest first. A bucket uses its
//! first `depth` slots; the policy picks `depth` so that the table holds about one record per
//! resident entry, so the history reaches back about one cache's worth of evictions.

/// Records per bucket: 16 `u32` = one 64-byte cache line.
const BUCKET: usize = 16;
/// Fewest slots a table has.
pub(super) const MIN_SLOTS: usize = 64;
/// Bits of a record below the fingerprint (the policy's `info`).
pub(super) const INFO_BITS: u32 = 16;

/// One bucket: [`BUCKET`] records in one cache line. Aligned, so that a lookup or an
/// insert misses on one line rather than two (a `Vec<u32>`'s buckets straddled two lines
/// three times in four: 1.7 misses per lookup under callgrind's simulated cache).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket([u32; BUCKET]);

/// Bounded history of evicted keys (see the module documentation).
pub(super) struct Ghost {
    table: Vec<Bucket>,
    buckets: u64,
}

impl Ghost {
    /// A table of at least `n` slots (and at least [`MIN_SLOTS`]).
    pub(super) fn with_slots(n: usize) -> Self {
        let b = n.div_ceil(BUCKET).max(MIN_SLOTS / BUCKET);
        Ghost {
            table: vec![Bucket([0; BUCKET]); b],
            buckets: b as u64,
        }
    }

    /// Number of slots.
    pub(super) fn slots(&self) -> usize {
        self.table.len() * BUCKET
    }

    /// The bucket of `hash`.
    fn bucket(&self, hash: u64) -> usize {
        ((((hash as u32) as u64) * self.buckets) >> 32) as usize
    }

    fn fingerprint(hash: u64) -> u32 {
        ((hash >> 36) as u32 & 0xFFFF) | 1
    }

    /// Slots in use per bucket for `entries` records.
    pub(super) fn depth(&self, entries: usize) -> usize {
        (entries * BUCKET).div_ceil(self.slots()).clamp(1, BUCKET)
    }

    /// Removes and returns the `info` of the record for `hash`, if any; with `check`, only a
    /// record whose `info` bits under `mask` equal it matches (the policy's own extension of
    /// the fingerprint).
    pub(super) fn take(
        &mut self,
        hash: u64,
        depth: usize,
        mask: u32,
        check: Option<u32>,
    ) -> Option<u32> {
        let at = self.bucket(hash);
        let fp = Self::fingerprint(hash);
        let b = &mut self.table[at].0;
        // The slots whose fingerprint matches, as a bit mask: a fixed-length loop without an
        // early exit, which the compiler turns into a few vector compares (the search was a
        // tenth of an evicting insert's instructions). A fingerprint has its low bit set, so
        // an empty slot (0) never matches.
        let mut matches = 0u32;
        for (j, &v) in b.iter().enumerate() {
            matches |= u32::from(v >> INFO_BITS == fp) << j;
        }
        matches &= (1u32 << depth) - 1;
        while matches != 0 {
            let i = matches.trailing_zeros() as usize;
            let v = b[i];
            if check.is_none_or(|c| v & mask == c) {
                b.copy_within(i + 1..depth, i);
                b[depth - 1] = 0;
                return Some(v & ((1 << INFO_BITS) - 1));
            }
            matches &= matches - 1;
        }
        None
    }

    /// Records `hash` with `info` (below `2^INFO_BITS`) as the newest record of its bucket;
    /// the oldest falls out.
    pub(super) fn add(&mut self, hash: u64, info: u32, depth: usize) {
        debug_assert!(info < 1 << INFO_BITS);
        let at = self.bucket(hash);
        let b = &mut self.table[at].0;
        // Fixed lengths, so that the shift and the clearing compile to vector moves and
        // selects instead of a call to `memmove` and a loop: everything moves down one slot,
        // then the slots from `depth` on (the oldest record, or stale ones after a change of
        // depth) are cleared.
        b.copy_within(0..BUCKET - 1, 1);
        b[0] = (Self::fingerprint(hash) << INFO_BITS) | info;
        for (j, v) in b.iter_mut().enumerate() {
            if j >= depth {
                *v = 0;
            }
        }
    }

    /// Checks the table's shape and records. For tests and fuzzing.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(super) fn validate(&self) {
        assert_eq!(self.table.len() as u64, self.buckets);
        for &v in self.table.iter().flat_map(|b| &b.0) {
            assert!(
                v == 0 || v & (1 << INFO_BITS) != 0,
                "malformed ghost record"
            );
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// Every bucket is one whole cache line: a lookup misses on one line, not two.
    #[test]
    fn each_bucket_is_one_aligned_cache_line() {
        for n in [64, 1000, 1 << 16] {
            let g = Ghost::with_slots(n);
            assert!(g.slots() >= n);
            for b in [0, g.table.len() / 2, g.table.len() - 1] {
                assert_eq!(std::ptr::from_ref(&g.table[b]) as usize % 64, 0);
            }
        }
    }

    /// Within a bucket: the newest matching record is taken, a record failing the check is
    /// passed over for an older one that passes it, and slots past `depth` are not searched.
    #[test]
    fn take_searches_newest_first_within_depth_and_check() {
        let mut g = Ghost::with_slots(64);
        let h = mix(7);
        // Three records of one hash: infos 0x10, 0x21, 0x12 (newest last).
        for info in [0x10, 0x21, 0x12] {
            g.add(h, info, 4);
        }
        // The check compares the low nibble: 0x1 matches 0x21 only, passing over 0x12.
        assert_eq!(g.take(h, 4, 0xF, Some(0x1)), Some(0x21));
        assert_eq!(g.take(h, 4, 0xF, Some(0x1)), None);
        assert_eq!(g.take(h, 4, 0, None), Some(0x12));
        assert_eq!(g.take(h, 4, 0, None), Some(0x10));
        assert_eq!(g.take(h, 4, 0, None), None);
        // A record pushed past the depth in use is gone (4 buckets: another hash of the
        // same bucket is among the first few).
        let other = (0..1000u64)
            .map(|k| mix(k + 1_000_000))
            .find(|&o| g.bucket(o) == g.bucket(h) && Ghost::fingerprint(o) != Ghost::fingerprint(h))
            .expect("a hash of the same bucket");
        g.add(h, 0x30, 2);
        g.add(other, 0x32, 2);
        assert_eq!(g.take(h, 2, 0, None), Some(0x30));
        g.add(h, 0x30, 2);
        g.add(other, 0x32, 2);
        g.add(other, 0x33, 2);
        assert_eq!(g.take(h, 2, 0, None), None);
        g.validate();
    }

    #[test]
    fn ghost_forgets_old_history() {
        let mut g = Ghost::with_slots(256);
        let depth = g.depth(256);
        for k in 0..10_000u64 {
            g.add(mix(k), (k & 0xFFFF) as u32, depth);
        }
        // recent keys are found with their info, old ones are gone
        let recent = (9_900..10_000u64)
            .filter(|&k| g.take(mix(k), depth, 0, None) == Some((k & 0xFFFF) as u32))
            .count();
        let old = (0..1_000u64)
            .filter(|&k| g.take(mix(k), depth, 0, None).is_some())
            .count();
        assert!(recent >= 95, "recent {recent}");
        assert!(old <= 2, "old {old}");
        g.validate();
    }
}
