//! Chains: finding a key's first node, splitting a bucket off its old chain during a growth,
//! and unlinking a marked node.
//!
//! A bucket holds the index of the first node of its chain; nodes link through `next` (see
//! node.rs for the bits of a link). Inserts link at the head with a CAS, so the first node of
//! a key in its chain is the key's current state (node.rs, "the key invariant"). Readers and
//! writers walk chains with Acquire loads; only the maintainer unlinks (node.rs, rule 4).

use std::borrow::Borrow;

use super::node::{IDX_MASK, Idx, LINK_BITS, MARK, NIL, Node, UNINIT, WRITING, wait_link_unheld};
use super::prefetch::prefetch_write;
use super::{Buckets, Table, bucket_of, tag_of};
use crate::raw::reclaim::Protected;
use crate::sync::Ordering;

/// Where a lookup started (see [`Table::unchanged`]).
pub(crate) struct Start {
    buckets: usize,
    bucket: u32,
    old: u32,
}

impl<K, V> Table<K, V> {
    /// Where a lookup of `hash` starts: the first node of its chain, and a [`Start`] to
    /// validate an "absent" answer with. An uninitialised bucket reads the old array's chain
    /// (a superset: it also holds the sibling buckets' nodes, which the key comparison skips).
    #[inline]
    pub(crate) fn start(&self, hash: u64, guard: &impl Protected) -> (u32, Start) {
        let buckets = self.current(guard);
        // Acquire: pairs with the Release CAS that linked the head node (insert, unlink or
        // bucket split), so the node's contents are visible.
        let bucket = buckets.bucket(hash).load(Ordering::Acquire);
        let mut start = Start {
            buckets: buckets.word(),
            bucket,
            old: 0,
        };
        if bucket != UNINIT {
            return (bucket & IDX_MASK, start);
        }
        match self.old(guard) {
            Some(old) => {
                // Acquire: as above. The frozen bit may be set; it is not part of the index.
                start.old = old.bucket(hash).load(Ordering::Acquire);
                (start.old & IDX_MASK, start)
            }
            None => {
                debug_assert!(false, "uninitialised bucket without an old array");
                (NIL, start)
            }
        }
    }

    /// Whether nothing was linked in front of the chain since `start`: the array, the bucket
    /// head and (for an uninitialised bucket) the old head are unchanged.
    ///
    /// A lookup that started from a head loaded *before* an insert of its key can walk into
    /// the node that insert superseded (already marked, or even unlinked). So "absent" is
    /// only an answer if the head did not move meanwhile (no node was linked in front, or
    /// every such node has been removed again, so the key was absent at some point of the
    /// lookup); otherwise the lookup starts over. Indices cannot be reused while we are
    /// protected (`guard`), so an unchanged head is the same node.
    #[inline]
    pub(crate) fn unchanged(&self, start: &Start, hash: u64, guard: &impl Protected) -> bool {
        let buckets = self.current(guard);
        if buckets.word() != start.buckets {
            return false;
        }
        // Acquire: as in `start`.
        let bucket = buckets.bucket(hash).load(Ordering::Acquire);
        if bucket != start.bucket {
            return false;
        }
        if bucket != UNINIT {
            return true;
        }
        // Acquire: as in `start`.
        self.old(guard)
            .is_some_and(|old| old.bucket(hash).load(Ordering::Acquire) == start.old)
    }

    /// The first node of `key` (marked or not), from a chain head that is current enough: if
    /// it is live, it was `key`'s value at some point of the call; if it is marked or there is
    /// none, `key` was absent at some point of the call (see [`unchanged`](Self::unchanged)).
    #[inline]
    pub(crate) fn lookup<'a, Q>(
        &'a self,
        hash: u64,
        key: &Q,
        guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        loop {
            let (head, start) = self.start(hash, guard);
            let found = self.find_in::<true, false, Q>(head, tag_of(hash), key, guard);
            if matches!(found, Some((_, _, next)) if next & MARK == 0)
                || self.unchanged(&start, hash, guard)
            {
                return found;
            }
        }
    }

    /// The first node of `key` in the chain starting at `head` (marked or not), with the value
    /// of its `next` link as read.
    ///
    /// The caller is protected (`guard`: pinned to crossbeam-epoch or inside a light read)
    /// and reached `head` through an Acquire load.
    #[inline]
    pub(crate) fn find<'a, Q>(
        &'a self,
        head: u32,
        tag: u16,
        key: &Q,
        guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.find_in::<false, false, Q>(head, tag, key, guard)
    }

    /// [`lookup`](Self::lookup) for a writer that will write the node it finds (an in-place
    /// write): each node of the chain is fetched for writing, so that its line comes once,
    /// exclusive, rather than shared for the lookup and then again for the write. Its
    /// answers are those of `lookup` when it finds an unmarked node; otherwise they are only
    /// a reason for the caller to take its other path.
    #[inline]
    pub(crate) fn lookup_for_write<'a, Q>(
        &'a self,
        hash: u64,
        key: &Q,
        guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // No retry for an absent key (see `unchanged`): the caller then writes the usual way,
        // which looks again.
        let (head, _) = self.start(hash, guard);
        self.find_in::<true, true, Q>(head, tag_of(hash), key, guard)
    }

    /// [`find`](Self::find), reaching nodes beyond the arena's first chunk inline
    /// (`INLINE`, for lookups) or through a call (writers).
    #[inline]
    fn find_in<'a, const INLINE: bool, const WRITE: bool, Q>(
        &'a self,
        head: u32,
        tag: u16,
        key: &Q,
        _guard: &impl Protected,
    ) -> Option<(Idx, &'a Node<K, V>, u32)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut cur = head;
        while cur != NIL {
            let node = self.node_at::<INLINE>(cur);
            if WRITE {
                prefetch_write(node);
            }
            // Acquire: pairs with the Release CAS that linked the successor (so its contents
            // are visible when we follow the link) and with the AcqRel CAS that set the mark.
            let next = node.next.load(Ordering::Acquire);
            // The node was reached through links while protected: it is initialised (the
            // Acquire load of the link that led here orders its publication before) and cannot
            // be freed or reused before `_guard` is dropped (node.rs, rules 2 and 5).
            // SAFETY: as just said, for the tag.
            let node_tag = unsafe { node.tag() };
            if node_tag == tag
                // SAFETY: as just said, for the payload.
                && unsafe { node.with_key(|k| k.borrow() == key) }
            {
                return Some((cur, node, next));
            }
            cur = next & IDX_MASK;
        }
        None
    }

    /// Splits bucket `j` of a growing array off its old bucket (idempotent; any thread).
    pub(crate) fn split_bucket(
        &self,
        hash: impl Fn(&K) -> u64,
        buckets: Buckets<'_>,
        j: usize,
        guard: &impl Protected,
    ) {
        let Some(old) = self.old(guard) else {
            debug_assert!(false, "uninitialised bucket without an old array");
            return;
        };
        let b = j & old.mask() as usize;
        // AcqRel: freezing makes every later insert CAS on this old head fail (so the chain we
        // walk is final); Acquire also makes the nodes linked before visible.
        let head = old.at(b).fetch_or(MARK, Ordering::AcqRel) & IDX_MASK;
        let mut cur = head;
        while cur != NIL {
            let node = self.node(cur);
            // SAFETY: reached through links while protected (see `find`).
            let h = unsafe { node.with_key(|k| hash(k)) };
            if bucket_of(h, buckets.mask()) == j {
                break;
            }
            // Acquire: as in `find`.
            cur = node.next.load(Ordering::Acquire) & IDX_MASK;
        }
        // Release: publishes the chain to readers of the new bucket. If another thread split
        // the bucket first it stored the same value (the frozen chain is final), so a
        // failure changes nothing.
        let _ = buckets
            .at(j)
            .compare_exchange(UNINIT, cur, Ordering::Release, Ordering::Relaxed);
    }

    /// Unlinks the marked node `idx` from its chain (node.rs, rule 4; the caller is the
    /// maintainer, and no growth has `idx` on a zipped chain). Before unlinking, every later
    /// node of the same key that is not marked yet (an older value a newer insert superseded)
    /// is handed to `supersede`, which must mark it: unlinking never uncovers an older value.
    pub(crate) fn unlink(
        &self,
        hash: impl Fn(&K) -> u64,
        idx: Idx,
        mut supersede: impl FnMut(Idx),
        guard: &impl Protected,
    ) where
        K: Eq,
    {
        let node = self.node(idx);
        debug_assert!(node.is_marked());
        // SAFETY: the node is in the table (only the maintainer unlinks), and we are protected.
        let h = unsafe { node.with_key(|k| hash(k)) };
        let tag = tag_of(h);
        'retry: loop {
            let buckets = self.current(guard);
            let bucket = buckets.bucket(h);
            let mut pred = bucket;
            // Acquire: pairs with the Release CAS that linked the head node.
            let mut pred_val = pred.load(Ordering::Acquire);
            debug_assert!(
                pred_val != UNINIT && pred_val & MARK == 0,
                "unlink during growth"
            );
            let mut cur = pred_val & IDX_MASK;
            while cur != NIL {
                let cur_node = self.node(cur);
                // Acquire: as in `find`.
                let next = cur_node.next.load(Ordering::Acquire);
                if cur == idx {
                    // Older nodes of the same key behind this one were superseded by a newer
                    // insert; unlinking this one must not uncover them: mark them first.
                    self.superseded(idx, tag, next & IDX_MASK, &mut supersede);
                    // Only the maintainer changes the index bits of a link other than a bucket
                    // head, so `next`'s index is still current (its mark bit is set anyway).
                    // A held predecessor (an in-place write) is written by its holder only
                    // (see `WRITING`): wait it out, then walk again from what it left.
                    if pred_val & WRITING != 0 {
                        wait_link_unheld(pred, pred_val);
                        continue 'retry;
                    }
                    let new = (pred_val & LINK_BITS) | (next & IDX_MASK);
                    // Release: readers that load the new link must see the successor's
                    // contents; they were published to us by the Acquire loads above, and
                    // Release passes that on. Fails if an insert moved the head or the
                    // predecessor was marked meanwhile: walk again.
                    if pred
                        .compare_exchange(pred_val, new, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                    continue 'retry;
                }
                pred = &cur_node.next;
                pred_val = next;
                cur = next & IDX_MASK;
            }
            debug_assert!(false, "marked node {idx} not found in its chain");
            return;
        }
    }

    /// Unlinks the marked node `idx` through `pred`, if `pred`'s link leads to `idx`
    /// (typically the node that replaced `idx`, inserted just in front of it), without hashing
    /// the key or walking the chain from its bucket: then `pred` is `idx`'s predecessor, the
    /// one an unlink from the bucket would find, and the same CAS unlinks it. The caller is
    /// the maintainer and knows `pred` to be in a chain (only the maintainer unlinks; see its
    /// flags), and `idx` is not on a zipped chain. Before the CAS, later nodes of the key go
    /// to `supersede` (as in [`unlink`](Self::unlink)). Returns false if that cannot be done
    /// (the caller then unlinks the usual way).
    pub(crate) fn unlink_after(&self, pred: Idx, idx: Idx, mut supersede: impl FnMut(Idx)) -> bool
    where
        K: Eq,
    {
        let node = self.node(idx);
        debug_assert!(node.is_marked());
        let link = &self.node(pred).next;
        // Acquire: as in `find` (pairs with the CAS that set this link).
        let pred_val = link.load(Ordering::Acquire);
        // A held predecessor is written by its holder only (see `WRITING`): the caller then
        // unlinks the usual way, which waits for it.
        if pred_val & IDX_MASK != idx || pred_val & WRITING != 0 {
            return false;
        }
        // Acquire: as in `find`.
        let next = node.next.load(Ordering::Acquire);
        // SAFETY: the node is in its chain (only the maintainer, our caller, unlinks) and the
        // caller is pinned.
        let tag = unsafe { node.tag() };
        self.superseded(idx, tag, next & IDX_MASK, &mut supersede);
        // Release: as in `unlink`. Fails if a writer marked `pred` meanwhile: the caller then
        // walks the chain.
        link.compare_exchange(
            pred_val,
            (pred_val & LINK_BITS) | (next & IDX_MASK),
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// Hands to `supersede` the unmarked nodes after `from` that hold the same key as `idx`
    /// (whose tag is `tag`).
    pub(crate) fn superseded(&self, idx: Idx, tag: u16, from: u32, supersede: &mut impl FnMut(Idx))
    where
        K: Eq,
    {
        let node = self.node(idx);
        let mut cur = from;
        while cur != NIL {
            let other = self.node(cur);
            // Acquire: as in `find`.
            let next = other.next.load(Ordering::Acquire);
            if next & MARK == 0
                // SAFETY: both nodes are in the chain and the caller is protected.
                && unsafe { other.tag() } == tag
                // SAFETY: both nodes are in the chain and the caller is protected.
                && unsafe { node.with_key(|k| other.with_key(|ok| ok == k)) }
            {
                supersede(cur);
            }
            cur = next & IDX_MASK;
        }
    }
}
