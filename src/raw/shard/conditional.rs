//! Conditional writes: a write that takes effect only if the key's value is still the one a
//! function was given (compute, remove-if), and removal by predicate (`retain`).
//!
//! # The compute protocol
//!
//! A compute reads its key's current value without any lock ([`Shard::observe`]: the first
//! node `O` of the key, live, or none), runs the caller's function on it, and then publishes
//! the function's decision *on the condition that `O` is still the key's live value*, or
//! starts over ([`Stale`]). Readers never wait and see the key's values in a single order:
//! a replacement becomes visible at the compare-and-swap that links its node at the head of
//! the bucket (the key invariant of `table/node.rs`: the first node of a key is its state).
//!
//! The condition concerns two words, the bucket head (no newer node of the key) and `O`'s
//! link (not marked removed), which no single compare-and-swap covers. So the publication
//! runs while the compute holds the shard's maintenance lock, which excludes everyone else
//! who could change either word in a way the head's compare-and-swap would not catch:
//!
//! - the maintainer (expiry, eviction, `clear`, unlinking; the last is what could bring a
//!   bucket head back to a value the compute loaded, an ABA): they all run under that lock;
//! - other computes: the same lock;
//! - inserts: they link at the head, so one that lands between the compute's check and its
//!   compare-and-swap makes the latter fail, and the compute checks again;
//! - *lookup-based removers* (`remove`, an expiring `set_ttl`, a stale read's removal,
//!   `retain`): they mark `O` without the lock, which is what keeps them lock-free. They take
//!   part in a handshake instead (`Table::overtaken`): the compute announces `O` in
//!   `Table::computing` and fences before it checks `O`'s mark; a remover fences after its
//!   mark and then looks at `computing`. If the compute missed the mark and published,
//!   the remover learns it (the compute's own mark of `O` fails, and it records that in
//!   `Table::overtaken`), and its removal becomes the compute's replacement (reported as
//!   `Replaced`); the remover then looks again and removes the value the compute put.
//!   Linearization: the compute, then the remover. If the compute saw the mark, it starts
//!   over: the remover, then the compute.
//!
//! The lock is held for the check and the publication only, never while the caller's
//! function runs (which may use the cache), and events are recorded after it is released
//! (a full event ring makes its writer take the lock).

use std::borrow::Borrow;
use std::hash::BuildHasher;

use super::{Removed, Shard};
use crate::listener::RemovalCause;
use crate::raw::Config;
use crate::raw::maint::{Event, Notes};
use crate::raw::table::{
    Idx, MARK, NEVER, NIL, Node, Table, UNINIT, bits_of, bucket_of, tag_of, word_value,
};
use crate::sync::Ordering;
use crate::sync::epoch::Guard;

/// The key's value was not the one the compute was given any more: start over.
#[derive(Debug)]
pub(crate) struct Stale;

/// The live value a compute was given: its node, its deadline, and (for a value word) its
/// bits, which the value must still have when the compute takes effect (an in-place write
/// changes the value without changing the node).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub(crate) idx: Idx,
    pub(crate) deadline: u64,
    pub(crate) bits: u64,
}

/// Holds `node` ([`Node::hold`]) if its value is a value word, and checks that the word is
/// still `bits`: for a remover that decided on that value, so that its mark (with
/// `Node::mark_held`) removes exactly it. `Ok(true)`: held; `Ok(false)`: not a value word,
/// nothing held (the node alone identifies the value); `Err(Stale)`: marked, or overwritten.
fn hold_if_word<K, V: 'static>(node: &Node<K, V>, bits: u64) -> Result<bool, Stale> {
    if !word_value::<V>() {
        return Ok(false);
    }
    if !node.hold() {
        return Err(Stale);
    }
    // SAFETY: the callers reached the node while protected, and hold it; a value word.
    if unsafe { node.word_bits() } != bits {
        node.end_write();
        return Err(Stale);
    }
    Ok(true)
}

/// The key of a compute and, once it decided to put a value, the private node that holds
/// both (kept across attempts: only the value changes). Released if dropped unpublished.
pub(crate) struct Staged<'a, K, V> {
    table: &'a Table<K, V>,
    key: Option<K>,
    idx: Option<Idx>,
}

impl<'a, K, V: 'static> Staged<'a, K, V> {
    pub(crate) fn new(table: &'a Table<K, V>, key: K) -> Self {
        Self {
            table,
            key: Some(key),
            idx: None,
        }
    }

    /// Runs `f` on the key.
    pub(crate) fn with_key<R>(&self, f: impl FnOnce(&K) -> R) -> R {
        match (&self.key, self.idx) {
            (Some(key), _) => f(key),
            (None, Some(idx)) => {
                // SAFETY: the node is ours (allocated and initialised by `stage`, never
                // published: `published` clears `idx`), so its payload is initialised.
                unsafe { self.table.node(idx).with_key(|k| f(k)) }
            }
            (None, None) => unreachable!("a staged key is in `key` or in its node"),
        }
    }

    /// Puts `value` in the private node (taking a slot the first time), dropping the value a
    /// previous attempt put there. Gives `value` back if the shard cannot hold another node.
    pub(crate) fn stage(&mut self, value: V, hash: u64) -> Result<Idx, V> {
        if let Some(idx) = self.idx {
            // SAFETY: ours and unpublished (see `with_key`).
            drop(unsafe { self.table.node(idx).swap_value(value) });
            return Ok(idx);
        }
        let Some(idx) = self.table.arena.alloc() else {
            return Err(value);
        };
        let Some(key) = self.key.take() else {
            unreachable!("no node yet, so the key is in `key`");
        };
        // SAFETY: `idx` was just taken from the arena, so this thread owns the slot (node.rs,
        // rule 1). The deadline is set before publication (`publish`).
        unsafe { self.table.node(idx).init(tag_of(hash), NEVER, key, value) };
        self.idx = Some(idx);
        Ok(idx)
    }

    /// The node was published: it belongs to the table now.
    fn published(&mut self) {
        self.idx = None;
    }
}

impl<K, V> Drop for Staged<'_, K, V> {
    fn drop(&mut self) {
        if let Some(idx) = self.idx {
            // SAFETY: initialised by `stage` and never published, so nothing else can reach it.
            unsafe { self.table.arena.release(idx) };
        }
    }
}

/// What a compute's publication did, for [`Shard::published`] to record once the maintenance
/// lock is released.
#[must_use]
pub(crate) struct Published {
    event: Event,
    own: Option<(Idx, RemovalCause)>,
}

/// Announces the node a compute is replacing in `Table::computing` (see the module
/// documentation), and withdraws it when dropped, also on unwind (a user's `Eq` or `Hash`).
struct Announce<'a>(&'a crate::sync::AtomicU32);

impl<'a> Announce<'a> {
    fn new<K, V>(table: &'a Table<K, V>, idx: Idx) -> Self {
        // Relaxed: ordered before the check of the node's mark by the fence.
        table.computing.store(idx, Ordering::Relaxed);
        // SeqCst: Dekker with the fence a remover makes after its mark (`Table::overtaken`):
        // either our check below sees its mark, or its load sees this store (or a later one).
        crate::sync::fence(Ordering::SeqCst);
        Self(&table.computing)
    }
}

impl Drop for Announce<'_> {
    fn drop(&mut self) {
        // Release: the outcome written in `Table::overtaken` before this store is visible to
        // the remover whose Acquire load sees the announcement withdrawn (or a later one).
        self.0.store(NIL, Ordering::Release);
    }
}

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Runs `f` on `key`'s live value (or `None`), with no lock: returns `f`'s result and the
    /// node it was given, with its deadline. If there is a node, it was the key's value at some
    /// point of the call (`Table::lookup`); `f` runs while this thread is pinned, and the
    /// call does not count as a use of the entry.
    pub(crate) fn observe<Q, S, R>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        guard: &Guard,
        f: impl FnOnce(Option<&V>) -> R,
    ) -> (Option<Seen>, R)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.table.lookup(hash, key, guard) {
            Some((idx, node, next)) if next & MARK == 0 && Self::alive(node, cfg) => {
                // Relaxed: a single word; `alive` above made its Acquire load (the value read
                // next is the one written with that deadline, or a later one).
                let deadline = node.deadline.load(Ordering::Relaxed);
                // SAFETY: found while pinned (see `Table::find`).
                let (r, bits) = unsafe { node.with_payload(|_, v| (f(Some(v)), bits_of(v))) };
                (
                    Some(Seen {
                        idx,
                        deadline,
                        bits,
                    }),
                    r,
                )
            }
            _ => (None, f(None)),
        }
    }

    /// Publishes the staged node for `hash` if `expect` is still the key's live value (`None`:
    /// if the key still has none), superseding it. The caller holds the shard's maintenance
    /// lock (see the module documentation), so that nothing but a lookup-based remover can
    /// mark `expect` meanwhile; the node's own lifetime (`own_ttl`, in ns) and `weight` are
    /// set here, just before it is published.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        staged: &mut Staged<'_, K, V>,
        expect: Option<Seen>,
        own_ttl: Option<u64>,
        weight: u32,
        guard: &Guard,
    ) -> Result<Published, Stale> {
        let table = &self.table;
        let Some(idx) = staged.idx else {
            unreachable!("publish is called after stage");
        };
        let node = table.node(idx);
        let tag = tag_of(hash);
        let (deadline, cap) = Self::expiry_of(cfg, own_ttl.unwrap_or(cfg.ttl));
        // Relaxed: the node is private; published by the Release CAS below.
        node.deadline.store(deadline, Ordering::Relaxed);
        if let Some(recent) = cfg.bound.as_ref().and_then(|b| b.sample(hash)) {
            // Relaxed: as above. The stamp of the recency estimate (a staged node may have
            // waited for its publication, and is requested now).
            node.freq.store(recent.fresh_byte(), Ordering::Relaxed);
        }
        self.set_columns(cfg, idx, own_ttl, cap);
        if cfg.weigher.is_some() {
            table.weights.set(idx, u64::from(weight));
        }
        let announce = expect.map(|o| Announce::new(table, o.idx));
        // Whether we hold the expected node (a value word, checked unchanged; see
        // `hold_if_word`), from the check to the mark.
        let mut held = false;
        let idx_of = |superseded: Option<(Idx, RemovalCause)>| match superseded {
            Some((i, _)) => i,
            None => unreachable!("only a superseded node is held"),
        };
        let superseded = loop {
            let buckets = table.current(guard);
            let bucket = buckets.bucket(hash);
            // Acquire: as in `insert`.
            let head = bucket.load(Ordering::Acquire);
            if head == UNINIT {
                table.split_bucket(
                    |k| cfg.hash(k),
                    buckets,
                    bucket_of(hash, buckets.mask()),
                    guard,
                );
                continue;
            }
            if head & MARK != 0 {
                continue;
            }
            // SAFETY: we own the node (not yet published), so its payload is initialised.
            let first = unsafe { node.with_key(|k| table.find(head, tag, k, guard)) };
            let superseded = match (expect, first) {
                // The value the compute was given: still first, unmarked and alive (the
                // announcement came first, so a remover that marks it from now on finds it),
                // and not overwritten in place.
                (Some(o), Some((f, first, next)))
                    if f == o.idx && next & MARK == 0 && Self::alive(first, cfg) =>
                {
                    // Held from here to the mark, with no user code in between (a user's `Eq`
                    // or `Hash` could panic, or write this key, with the node held).
                    held = hold_if_word(first, o.bits)?;
                    Some((o.idx, RemovalCause::Replaced))
                }
                (Some(_), _) => return Err(Stale),
                (None, None) => None,
                (None, Some((_, _, next))) if next & MARK != 0 => None,
                // Absent because expired: superseded as an expiry, as an insert does. A value
                // word's node is held from the check to the mark, so that an in-place write
                // cannot renew it in between (it would then be live, not absent).
                (None, Some((f, first, _))) if !Self::alive(first, cfg) => {
                    if word_value::<V>() {
                        if !first.hold() {
                            // Marked meanwhile: absent; look again.
                            continue;
                        }
                        held = true;
                        if Self::alive(first, cfg) {
                            first.end_write();
                            return Err(Stale);
                        }
                    }
                    Some((f, RemovalCause::Expired))
                }
                (None, Some(_)) => return Err(Stale),
            };
            // Relaxed: published by the Release CAS below.
            node.next.store(head, Ordering::Relaxed);
            // Release: publishes the node (node.rs, rule 2), as in `insert`. Fails if anything
            // was linked in front since the check (an insert, perhaps of this key): check again.
            if bucket
                .compare_exchange(head, idx, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                break superseded;
            }
            if held {
                // Checked again next time, after the walk (user code) is over.
                table.node(idx_of(superseded)).end_write();
                held = false;
            }
        };
        staged.published();
        let mut event = Event::Inserted { idx, weight, hash };
        let mut own = None;
        if let Some((old_idx, cause)) = superseded {
            let old = table.node(old_idx);
            match if held { old.mark_held() } else { old.mark() } {
                Some(claimed) => {
                    self.writer_removed(cfg, old_idx, claimed);
                    own = Some((old_idx, cause));
                    event = Event::Replaced {
                        idx,
                        old: old_idx,
                        weight,
                        hash,
                        cause,
                    };
                }
                // A lookup-based remover marked the value we replaced after our check: the
                // removal is our replacement (it reads this in `Table::overtaken`, once the
                // announcement is withdrawn, and reports it as such). For an expired value
                // there was no announcement, and no value we depended on: its remover keeps it.
                None if announce.is_some() => table.overtaken.set(old_idx, 1),
                None => {}
            }
        }
        drop(announce);
        Ok(Published { event, own })
    }

    /// Marks `expect` removed for `cause` if it is still `key`'s live value. The caller holds
    /// the shard's maintenance lock (see `publish`). Returns whether the node was claimed.
    pub(crate) fn remove_current<Q, S>(
        &self,
        cfg: &Config<K, V, S>,
        hash: u64,
        key: &Q,
        expect: Seen,
        guard: &Guard,
    ) -> Result<bool, Stale>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.table.lookup(hash, key, guard) {
            Some((idx, node, next))
                if idx == expect.idx && next & MARK == 0 && Self::alive(node, cfg) =>
            {
                // Lost only to a lookup-based remover, which then removed it first (or, for a
                // value word, to an in-place write).
                if hold_if_word(node, expect.bits)? {
                    node.mark_held().ok_or(Stale)
                } else {
                    node.mark().ok_or(Stale)
                }
            }
            _ => Err(Stale),
        }
    }

    /// Records what a compute's publication did, once the maintenance lock is released, and
    /// offers a pass as an insert does; the removals to report.
    pub(crate) fn published<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        published: Published,
        guard: &Guard,
    ) -> Removed {
        let (offer, pass) = self.upkeep.record(&self.table, cfg, published.event, guard);
        let mut removed = Removed {
            pass,
            own: published.own,
        };
        if self.wants_pass(cfg, offer) {
            removed.pass.extend(self.try_maintain(cfg, guard));
        }
        removed
    }

    /// The bookkeeping of a compute's removal of `idx` (marked by `remove_current`, `claimed`
    /// as it returned), once the maintenance lock is released.
    pub(crate) fn removed_current<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        claimed: bool,
        cause: RemovalCause,
        guard: &Guard,
    ) -> Removed {
        self.writer_marked(cfg, idx, claimed, cause, guard)
    }

    /// For a lookup-based remover that has just marked `idx` (`claimed` as `mark` returned):
    /// if a compute replaced the node meanwhile (`Table::overtaken`), does the removal's
    /// bookkeeping as that replacement's (`Replaced`), adds its notifications to `earlier`,
    /// and returns true: the caller then looks again.
    pub(crate) fn overtaken_by_compute<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        claimed: bool,
        earlier: &mut Notes,
        guard: &Guard,
    ) -> bool {
        if !self.table.overtaken(idx) {
            return false;
        }
        let removed = self.writer_marked(cfg, idx, claimed, RemovalCause::Replaced, guard);
        earlier.extend(removed.pass);
        earlier.extend(removed.own);
        true
    }

    /// Removes every live entry for which `pred` returns true (`Explicit`), walking the shard's
    /// chains under `guard`; `pred` runs while this thread is pinned, outside any lock.
    ///
    /// Weakly consistent: an entry live during the whole walk is tested exactly once; one
    /// inserted meanwhile may or may not be. A value is removed only if it is still its key's
    /// live value when it is marked (a newer value, or a compute's replacement of it, is
    /// left alone).
    pub(crate) fn retain<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        pred: &mut dyn FnMut(&K, &V) -> bool,
        guard: &Guard,
    ) -> Removed {
        let table = &self.table;
        let buckets = table.current(guard);
        let old = table.old(guard);
        let mut seen: Vec<Idx> = Vec::new();
        // Each with the bits of the value `pred` was given (see `hold_if_word`).
        let mut doomed: Vec<(Idx, u64)> = Vec::new();
        for j in 0..buckets.len() {
            // Acquire: as in `Table::start`.
            let head = buckets.at(j).load(Ordering::Acquire);
            // The same walk as `snapshot`: an uninitialised bucket reads its old bucket's chain
            // (filtered to this bucket's keys), and a key counts at its first node only.
            let (head, filter) = if head == UNINIT {
                let Some(old) = old else {
                    debug_assert!(false, "uninitialised bucket without an old array");
                    continue;
                };
                // Acquire: as in `Table::start`.
                (
                    old.at(j & old.mask() as usize).load(Ordering::Acquire)
                        & crate::raw::table::IDX_MASK,
                    true,
                )
            } else {
                (head & crate::raw::table::IDX_MASK, old.is_some())
            };
            seen.clear();
            let mut cur = head;
            while cur != NIL {
                let node = table.node(cur);
                // Acquire: as in `Table::find`.
                let next = node.next.load(Ordering::Acquire);
                // SAFETY: reached through links while pinned (see `Table::find`).
                let (mine, first) = unsafe {
                    node.with_key(|k| {
                        let mine = !filter || bucket_of(cfg.hash(k), buckets.mask()) == j;
                        let first = mine
                            && !seen.iter().any(|&s| {
                                let other = table.node(s);
                                other.tag() == node.tag() && other.with_key(|ok| ok == k)
                            });
                        (mine, first)
                    })
                };
                if mine && first {
                    seen.push(cur);
                    if next & MARK == 0 && Self::alive(node, cfg) {
                        // SAFETY: as above.
                        let (doom, bits) =
                            unsafe { node.with_payload(|k, v| (pred(k, v), bits_of(v))) };
                        if doom {
                            doomed.push((cur, bits));
                        }
                    }
                }
                cur = next & crate::raw::table::IDX_MASK;
            }
        }
        let mut notes = Notes::new();
        for (idx, bits) in doomed {
            // Whoever marks first removes it; if it was replaced or removed since the test,
            // the mark fails or the node is no longer its key's value (a newer node was
            // linked in front: then marking it removes nothing visible, and the insert that
            // superseded it reports nothing, as when a remove races an insert). A value word
            // overwritten in place since the test is a newer value: left alone.
            let node = table.node(idx);
            // Whether it is alive when marked: for a value word, checked while held (see
            // `Shard::mark_live`).
            let (marked, live) = match hold_if_word(node, bits) {
                Ok(true) => {
                    let live = Self::alive(node, cfg);
                    (node.mark_held(), live)
                }
                Ok(false) => {
                    let live = Self::alive(node, cfg);
                    (node.mark(), live)
                }
                Err(Stale) => (None, false),
            };
            let Some(claimed) = marked else {
                continue;
            };
            if self.overtaken_by_compute(cfg, idx, claimed, &mut notes, guard) {
                continue;
            }
            // An entry that expired since the test is reported as the expiry it is.
            let cause = if live {
                RemovalCause::Explicit
            } else {
                RemovalCause::Expired
            };
            let removed = self.writer_marked(cfg, idx, claimed, cause, guard);
            notes.extend(removed.pass);
            notes.extend(removed.own);
        }
        Removed {
            pass: notes,
            own: None,
        }
    }

    /// Reschedules node `idx` in the timer wheel (its deadline moved earlier, outside a write:
    /// a read hook of an `Expiry`). `idx` may be stale by now: the maintainer ignores an event
    /// about a node it has not admitted or that is marked.
    pub(crate) fn reschedule<S: BuildHasher>(
        &self,
        cfg: &Config<K, V, S>,
        idx: Idx,
        guard: &Guard,
    ) -> Removed {
        let (offer, mut pass) =
            self.upkeep
                .record(&self.table, cfg, Event::Rescheduled { idx }, guard);
        if offer {
            pass.extend(self.try_maintain(cfg, guard));
        }
        Removed { pass, own: None }
    }
}

impl Removed {
    /// This operation's removals, after those it made earlier (see `overtaken_by_compute`).
    pub(crate) fn after(mut self, mut earlier: Notes) -> Self {
        if !earlier.is_empty() {
            earlier.append(&mut self.pass);
            self.pass = earlier;
        }
        self
    }
}
