//! The ghost history: a bounded table of small records about recently evicted keys, looked up
//! by key hash when a key is inserted again.
//!
//! A record is a `u32`: a 16-bit fingerprint (15 bits of the hash and a set bit, so that it is
//! never zero and 0 marks an empty slot) and 16 bits the policy chooses ([`Ghost::add`]'s `info`). The table is cut into
//! buckets of 16 records (one 64-byte cache line), each a FIFO, newest first. A bucket uses its
//! first `depth` slots; the policy picks `depth` so that the table holds about one record per
//! resident entry, so the history reaches back about one cache's worth of evictions.

/// Records per bucket: 16 `u32` = one 64-byte cache line.
const BUCKET: usize = 16;
/// Fewest slots a table has.
pub(super) const MIN_SLOTS: usize = 64;
/// Bits of a record below the fingerprint (the policy's `info`).
pub(super) const INFO_BITS: u32 = 16;

/// Bounded history of evicted keys (see the module documentation).
pub(super) struct Ghost {
    slots: Vec<u32>,
    buckets: u64,
}

impl Ghost {
    /// A table of at least `n` slots (and at least [`MIN_SLOTS`]).
    pub(super) fn with_slots(n: usize) -> Self {
        let b = n.div_ceil(BUCKET).max(MIN_SLOTS / BUCKET);
        Ghost {
            slots: vec![0; b * BUCKET],
            buckets: b as u64,
        }
    }

    /// Number of slots.
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    fn base(&self, hash: u64) -> usize {
        ((((hash as u32) as u64) * self.buckets) >> 32) as usize * BUCKET
    }

    fn fingerprint(hash: u64) -> u32 {
        ((hash >> 36) as u32 & 0xFFFF) | 1
    }

    /// Slots in use per bucket for `entries` records.
    pub(super) fn depth(&self, entries: usize) -> usize {
        (entries * BUCKET)
            .div_ceil(self.slots.len())
            .clamp(1, BUCKET)
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
        let base = self.base(hash);
        let fp = Self::fingerprint(hash);
        let b = &mut self.slots[base..base + depth];
        let i = b
            .iter()
            .position(|&v| v != 0 && v >> INFO_BITS == fp && check.is_none_or(|c| v & mask == c))?;
        let v = b[i];
        b.copy_within(i + 1.., i);
        b[depth - 1] = 0;
        Some(v & ((1 << INFO_BITS) - 1))
    }

    /// Records `hash` with `info` (below `2^INFO_BITS`) as the newest record of its bucket;
    /// the oldest falls out.
    pub(super) fn add(&mut self, hash: u64, info: u32, depth: usize) {
        debug_assert!(info < 1 << INFO_BITS);
        let base = self.base(hash);
        let b = &mut self.slots[base..base + BUCKET];
        b.copy_within(0..depth - 1, 1);
        b[0] = (Self::fingerprint(hash) << INFO_BITS) | info;
        for v in &mut b[depth..] {
            *v = 0;
        }
    }

    /// Checks the table's shape and records. For tests and fuzzing.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(super) fn validate(&self) {
        assert_eq!(self.slots.len() as u64, self.buckets * BUCKET as u64);
        for &v in &self.slots {
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
