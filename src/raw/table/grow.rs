//! Growing a table: publish a larger bucket array, split every bucket off the old one, unzip
//! the chains the new buckets share, detach the old array.
//!
//! When a shard holds more entries than its load allows, the maintainer publishes a bucket
//! array large enough to bring the load back under it: `2^k` times as large (`k >= 1`), whose
//! buckets are [`UNINIT`]. Old bucket `b` feeds the new buckets `b + i * old_len` for
//! `i < 2^k` (its *classes*): readers of an uninitialised bucket read the old bucket's chain (a
//! superset of theirs), and the first thread that needs to link into a new bucket (a writer,
//! or the maintainer) *splits* it (`Table::split_bucket`): it freezes the old bucket head (so no
//! insert can land in the old array any more) and points the new bucket at the first node of
//! the old chain that hashes to it. Chains are then shared ("zipped") between the buckets of
//! one old bucket; readers skip the other classes' nodes by key. Finally the maintainer
//! "unzips" the chains in rounds separated by grace periods (after Triplett, McKenney and
//! Walpole, "Resizable, scalable, concurrent hash tables via relativistic programming", 2011,
//! generalised to many classes): in a round, a link is redirected past the nodes of every
//! class that has no reader positioned on it (see [`Growth::unzip_chain`] for the argument).
//! No reader ever waits, and writers never wait either: the only writer-visible state is an
//! uninitialised bucket, which the writer initialises itself. `docs/growth.md` has the proofs
//! at length.
//!
//! A growth is driven by the maintainer (`raw/maint`), one bounded [`step`](Growth::step) per
//! pass; this module knows nothing of the maintainer but the node flag [`ZIPPED`] it sets.

use std::mem;

use super::buckets::{free_buckets, new_buckets};
use super::node::{FLAG_BITS, IDX_MASK, Idx, LINK_BITS, MARK, NIL, UNINIT};
use super::{Buckets, Table, bucket_of};
use crate::raw::reclaim::{Grace, retire};
use crate::sync::Ordering;
use crate::sync::epoch::Guard;

/// Node flag (in the node's `state` byte, see node.rs): the node is on one of the old array's
/// (frozen) chains. Its unlink waits for the growth to end; a node without the flag (inserted
/// in front of a new bucket after it was split) can be unlinked at once. Set by
/// [`Growth::split_chain`], cleared by the maintainer when the growth ends.
pub(crate) const ZIPPED: u8 = 1 << 6;
const _: () = assert!(ZIPPED & !FLAG_BITS == 0);

/// Work (nodes visited plus buckets initialised) one step spends on a growth, beyond the
/// chain it is in the middle of.
const GROWTH_BUDGET: usize = 16384;
/// Most nodes one link skips per unzipping round (bounds a round's cost on a pathological
/// chain; skipping fewer is as safe, see `unzip_chain`).
const MAX_SKIP: u32 = 256;
/// Largest bucket array of one shard.
pub(crate) const MAX_BUCKETS: usize = 1 << 30;

enum Phase {
    /// Every old chain is frozen and recorded, and the new buckets it feeds are split off it.
    Splitting,
    /// The zipped chains are separated, one round per grace period.
    Unzipping,
}

/// A growth in progress: the old array's chains, recorded when they were frozen.
pub(crate) struct Growth {
    phase: Phase,
    /// Next old bucket to split.
    progress: usize,
    /// The grace period between two steps, if one is running (see [`Grace`]).
    grace: Option<Grace>,
    /// The nodes of the old chains, chain after chain, each chain in its frozen order.
    nodes: Vec<Idx>,
    /// Per node (as in `nodes`): position in its chain of the first node of its class (its
    /// new bucket). Two nodes of a chain have one class iff these are equal.
    first: Vec<u32>,
    /// Per node: its link as the maintainer last set it, as a position in its chain (the
    /// chain's length for NIL). Only the maintainer changes these links' index bits.
    next: Vec<u32>,
    /// Chains (start in `nodes`, length) still to go through the current round.
    zipped: Vec<(u32, u32)>,
    /// Chains that went through the current round and are still zipped.
    unzipped: Vec<(u32, u32)>,
    scratch: Scratch,
}

/// Buffers reused from one chain to the next.
#[derive(Default)]
struct Scratch {
    /// The chain being split: (node, class), gathered before any growth state changes.
    walked: Vec<(Idx, u32)>,
    firsts: Vec<u32>,
    child: Vec<u32>,
    sibling: Vec<u32>,
    enter: Vec<u32>,
    leave: Vec<u32>,
    stack: Vec<u32>,
    target: Vec<u32>,
}

impl Growth {
    /// A growth of a shard holding about `entries` entries: the per-node records are sized for
    /// them up front (a few more come from inserts during the split), so that they are not
    /// reallocated while they fill (each reallocation left a freed buffer in the allocator's
    /// heap, about 3 bytes per entry of a cache that grew to a million).
    pub(crate) fn new(entries: usize) -> Self {
        let room = entries + entries / 8;
        Growth {
            phase: Phase::Splitting,
            progress: 0,
            grace: None,
            nodes: Vec::with_capacity(room),
            first: Vec::with_capacity(room),
            next: Vec::with_capacity(room),
            zipped: Vec::new(),
            unzipped: Vec::new(),
            scratch: Scratch::default(),
        }
    }
}

impl<K, V> Table<K, V> {
    /// Publishes a bucket array of `len` buckets in front of the current one (which becomes
    /// the old array; the maintainer then drives a [`Growth`]). False, changing nothing, if
    /// the allocator refused the memory: the shard then keeps its array (longer chains, never
    /// an abort) and a later pass tries again.
    pub(crate) fn publish_larger(&self, len: usize, guard: &Guard) -> bool {
        let current = self.current(guard);
        debug_assert!(len > current.len() && len.is_power_of_two());
        let Some(word) = new_buckets(len, UNINIT, self.arena.huge()) else {
            return false;
        };
        // Release: the old array stays reachable for readers of uninitialised buckets; pairs
        // with the Acquire in `old`. Stored before the new array is published, so anyone who
        // sees the new array sees its old one.
        self.old.store(current.word(), Ordering::Release);
        // Release: publishes the new array; pairs with the Acquire loads in `current`.
        self.buckets.store(word, Ordering::Release);
        true
    }

    /// Detaches the old table once every bucket is split and every chain unzipped: readers
    /// have not been able to reach the old table's heads for a grace period (no bucket is
    /// uninitialised). It is freed after grace periods of both kinds (retire.rs).
    fn detach_old(&self, owner: u64)
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        // AcqRel: Acquire to own the pointer we retire; Release orders our unzipping before it.
        let old = self.old.swap(0, Ordering::AcqRel);
        // SAFETY: the old table is unreachable from now on (see above); threads inside a read
        // or pinned now may still hold it, and this runs only after they have all left. The
        // closure owns the table (nothing else frees it).
        retire::retire(owner, move || unsafe { free_buckets(old) });
    }
}

impl Growth {
    /// Whether every old bucket has been split and its chain recorded (until then, no node of
    /// an old chain may be unlinked: see [`ZIPPED`]).
    pub(crate) fn is_splitting(&self) -> bool {
        matches!(self.phase, Phase::Splitting)
    }

    /// The nodes of the old chains recorded so far (all flagged [`ZIPPED`]).
    pub(crate) fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// Whether the growth is unzipping, with a chain of at least `len` nodes still zipped
    /// (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn unzipping_a_chain_of(&self, len: u32) -> bool {
        matches!(self.phase, Phase::Unzipping) && self.zipped.iter().any(|&(_, l)| l >= len)
    }

    /// One step of the growth of `table` (whose keys hash with `hash`; its retirements are
    /// `owner`'s): returns true once it is complete (the old array detached). Runs user code
    /// (the hasher): if it panics, the growth is still consistent (see `split_chain`), and
    /// the next step redoes the chain.
    pub(crate) fn step<K, V>(
        &mut self,
        table: &Table<K, V>,
        hash: &impl Fn(&K) -> u64,
        owner: u64,
        guard: &Guard,
    ) -> bool
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        let growth = self;
        if let Some(grace) = &growth.grace {
            if !grace.is_over() {
                // Help the epoch along: this thread's deferred functions join the global queue.
                guard.flush();
                return false;
            }
            growth.grace = None;
        }
        let buckets = table.current(guard);
        let Some(old) = table.old(guard) else {
            debug_assert!(false, "growth without an old array");
            return true;
        };
        match growth.phase {
            Phase::Splitting => {
                let mut work = 0;
                while growth.progress < old.len() && work < GROWTH_BUDGET {
                    let b = growth.progress;
                    work += growth.split_chain(table, hash, buckets, old, b);
                    growth.progress += 1;
                }
                if growth.progress < old.len() {
                    return false;
                }
                // Every bucket is initialised and every old chain recorded. No link may be
                // redirected while a reader can still be walking an old chain from its head
                // (through the old table, or an uninitialised bucket), and the old table may
                // not be detached while a reader that loaded an uninitialised bucket can still
                // look it up: wait one grace period, even if no chain needs unzipping.
                growth.phase = Phase::Unzipping;
                growth.grace = Some(Grace::start(guard));
                false
            }
            Phase::Unzipping => {
                // One round: every chain still zipped gets all the redirections that are
                // safe now (possibly over several passes, never two rounds of one chain
                // within a grace period).
                let mut work = 0;
                while work < GROWTH_BUDGET {
                    let Some((start, len)) = growth.zipped.pop() else {
                        break;
                    };
                    work += len as usize;
                    if !growth.unzip_chain(table, start as usize, len as usize) {
                        growth.unzipped.push((start, len));
                    }
                }
                if !growth.zipped.is_empty() {
                    return false;
                }
                if growth.unzipped.is_empty() {
                    // Every chain is separated: done, with no further grace period (readers
                    // still on a redirected link are safe whatever they read next, see
                    // `unzip_chain`; the old table is freed through the epoch).
                    table.detach_old(owner);
                    return true;
                }
                mem::swap(&mut growth.zipped, &mut growth.unzipped);
                growth.grace = Some(Grace::start(guard));
                false
            }
        }
    }

    /// Splits every bucket of the new table fed by old bucket `b` (the new buckets
    /// `b + i * old.len()`): freezes the old head, records the frozen chain (its nodes in
    /// order, flagged [`ZIPPED`], and for each the position of the first node of its class,
    /// i.e. of its new bucket), and points each new bucket at the first node of its class
    /// (NIL if none), as `Table::split_bucket` would. Returns the work done.
    fn split_chain<K, V>(
        &mut self,
        table: &Table<K, V>,
        hash: &impl Fn(&K) -> u64,
        buckets: Buckets<'_>,
        old: Buckets<'_>,
        b: usize,
    ) -> usize {
        let growth = self;
        let shift = old.len().trailing_zeros();
        let ways = buckets.len() / old.len();
        // AcqRel: as in `Table::split_bucket` (freezes the chain; Acquire makes the nodes
        // linked before visible).
        let head = old.at(b).fetch_or(MARK, Ordering::AcqRel) & IDX_MASK;
        // First the walk, with the user's hasher: if it panics, no growth state has changed
        // yet (freezing the head again is harmless), and the next pass redoes this chain.
        let walked = &mut growth.scratch.walked;
        walked.clear();
        let mut cur = head;
        while cur != NIL {
            let node = table.node(cur);
            // SAFETY: reached through links while pinned (the frozen chain is final; none of
            // its nodes is unlinked before the growth ends).
            let h = unsafe { node.with_key(|k| hash(k)) };
            walked.push((cur, (bucket_of(h, buckets.mask()) >> shift) as u32));
            // Acquire: as in `Table::find`.
            cur = node.next.load(Ordering::Acquire) & IDX_MASK;
        }
        let start = growth.nodes.len();
        // Per class of this chain (`i` for new bucket `b + i * old.len()`): the position of
        // its first node.
        let firsts = &mut growth.scratch.firsts;
        firsts.clear();
        firsts.resize(ways, NIL);
        for &(cur, class) in &growth.scratch.walked {
            let class = class as usize;
            let pos = (growth.nodes.len() - start) as u32;
            if firsts[class] == NIL {
                firsts[class] = pos;
            }
            growth.nodes.push(cur);
            growth.first.push(firsts[class]);
            growth.next.push(pos + 1);
            let node = table.node(cur);
            node.set_flags(node.flags() | ZIPPED);
        }
        let len = growth.nodes.len() - start;
        for (i, &first) in firsts.iter().enumerate() {
            let target = if first == NIL {
                NIL
            } else {
                growth.nodes[start + first as usize]
            };
            // Release: publishes the chain to readers of the new bucket, as in
            // `Table::split_bucket`; a writer that split it first stored the same node (the
            // first of its class in the frozen chain), so a failure changes nothing.
            let _ = buckets.at(b + (i << shift)).compare_exchange(
                UNINIT,
                target,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        let chain = start..start + len;
        let zipped = growth.next[chain.clone()]
            .iter()
            .zip(&growth.first[chain.clone()])
            .any(|(&next, &first)| {
                (next as usize) < len && growth.first[start + next as usize] != first
            });
        // A chain whose links already join nodes of one class needs no unzipping round.
        if zipped {
            growth.zipped.push((start as u32, len as u32));
        }
        len + ways
    }

    /// One unzipping round over the chain at `start..start + len` of `growth.nodes`: redirects
    /// every link that may be redirected now, and returns whether the chain is separated
    /// (every link joins two nodes of one class, or ends the chain).
    ///
    /// # Why this is safe
    ///
    /// Write `G` for the chain's links as they were when the grace period that precedes this
    /// round began (the rounds are separated by grace periods, and the first one follows the
    /// last split). Every thread now walking the chain is a reader of one new bucket (class)
    /// `c` that entered it at the first node of `c` (where the bucket head, or the nodes
    /// inserted in front of it, lead) and has followed links of `G`, or links written by this
    /// round. Let `S(x)` be the classes whose first node reaches `x` through `G`: only
    /// readers of those classes can be at `x`. The round sets the link of `x` to the first
    /// node `w` after `x` along `G` whose class is in `S(x)` (or NIL): it skips only nodes of
    /// classes with no reader at `x`.
    ///
    /// A reader of class `c` at a node `x` of its path in `G` (so `c` is in `S(x)`) reads
    /// either the old link, and stays on its path in `G`, or the new one: then it lands on
    /// `w`, which is on the same path (the path of `c` from `x` is `x`'s walk along `G`),
    /// having skipped no node of `c`. By induction it never leaves its path in `G`, which
    /// holds all the nodes of `c` (inductively again: no round skips a node of `c` on a path
    /// of `c`), whichever mix of old and new links it reads: each round is safe alone, and
    /// the grace period between rounds makes every reader of the next one start from the
    /// links this one left. The same holds for writers (which walk chains like readers) and
    /// for the maintainer's own walks.
    ///
    /// Progress: if no link changes, every path holds nodes of one class only (take the
    /// earliest node `z` that is foreign on some path, of class `e`, with predecessor `y`
    /// on that path: `y` is not foreign, and `e` in `S(y)` makes `y` a foreign node of the
    /// path of `e`, earlier than `z`). So a chain is done once its links join nodes of one
    /// class, checked after each round; the round that separates the last chain needs no
    /// grace period after it. With two classes this is the classic unzip (one alternation
    /// per round); with as many classes as nodes, as a growth to a load of one makes them,
    /// chains of hundreds of nodes separate in a handful of rounds.
    fn unzip_chain<K, V>(&mut self, table: &Table<K, V>, start: usize, len: usize) -> bool {
        let growth = self;
        let nodes = &growth.nodes[start..start + len];
        let first = &growth.first[start..start + len];
        let next = &mut growth.next[start..start + len];
        let sc = &mut growth.scratch;
        let nil = len as u32;
        let idx_at = |pos: u32| if pos == nil { NIL } else { nodes[pos as usize] };
        if cfg!(debug_assertions) {
            for (x, &pos) in next.iter().enumerate() {
                // Acquire: as in `Table::find`. Only the maintainer changes these index bits.
                let actual = table.node(nodes[x]).next.load(Ordering::Acquire) & IDX_MASK;
                assert_eq!(
                    actual,
                    idx_at(pos),
                    "unzip: a link moved under the maintainer"
                );
            }
        }
        round_targets(first, next, sc);
        for x in 0..len {
            let y = sc.target[x];
            if y == next[x] {
                continue;
            }
            let link = &table.node(nodes[x]).next;
            let new = idx_at(y);
            let mut cur = idx_at(next[x]);
            loop {
                // A held node's link is written by its holder only (see `WRITING`).
                cur = table.node(nodes[x]).wait_unheld(cur);
                // Release: as for an unlink (readers following the new link see the node it
                // leads to). Only the mark and claim bits can change under us (a writer marking
                // or claiming x, or the holder of an in-place write releasing it), and they are
                // kept.
                match link.compare_exchange_weak(
                    cur,
                    (cur & LINK_BITS) | new,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => {
                        debug_assert_eq!(
                            actual & IDX_MASK,
                            cur & IDX_MASK,
                            "a zipped link changed under the maintainer"
                        );
                        cur = actual;
                    }
                }
            }
            next[x] = y;
        }
        next.iter()
            .enumerate()
            .all(|(x, &y)| y == nil || first[y as usize] == first[x])
    }
}

/// The targets of one unzipping round over a chain (positions; `first.len()` is NIL): in
/// `sc.target`, for each node `x`, the first node after it along the links `next` whose class
/// (`first`) has a reader that can be on `x` (see `unzip_chain`); at most [`MAX_SKIP`] nodes
/// ahead. A pure function of the chain, so that tests can check it against plain
/// link-following.
fn round_targets(first: &[u32], next: &[u32], sc: &mut Scratch) {
    let len = first.len();
    let nil = len as u32;
    // `G` as a forest of in-trees (each node's parent is its successor, the root is the
    // end of the chain), numbered by a depth-first walk: `a` reaches `x` iff `a` lies in
    // `x`'s subtree, i.e. enter[x] <= enter[a] < leave[x].
    sc.child.clear();
    sc.child.resize(len + 1, NIL);
    sc.sibling.clear();
    sc.sibling.resize(len, NIL);
    for x in (0..len).rev() {
        let parent = next[x] as usize;
        sc.sibling[x] = sc.child[parent];
        sc.child[parent] = x as u32;
    }
    sc.enter.clear();
    sc.enter.resize(len + 1, 0);
    sc.leave.clear();
    sc.leave.resize(len + 1, 0);
    sc.stack.clear();
    sc.stack.push(nil);
    let mut clock = 1;
    while let Some(&v) = sc.stack.last() {
        let c = sc.child[v as usize];
        if c == NIL {
            sc.leave[v as usize] = clock;
            sc.stack.pop();
        } else {
            sc.child[v as usize] = sc.sibling[c as usize];
            sc.enter[c as usize] = clock;
            clock += 1;
            sc.stack.push(c);
        }
    }
    let reaches = |a: u32, x: usize| {
        sc.enter[x] <= sc.enter[a as usize] && sc.enter[a as usize] < sc.leave[x]
    };
    sc.target.clear();
    for x in 0..len {
        let mut y = next[x];
        let mut hops = 0;
        // Skip the nodes whose class has no reader at `x` (bounded, so that a round costs
        // at most MAX_SKIP steps per node; a shorter skip is as safe).
        while y != nil && !reaches(first[y as usize], x) && hops < MAX_SKIP {
            y = next[y as usize];
            hops += 1;
        }
        sc.target.push(y);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    /// Positions reached from `a` by following `next` (a chain of `next.len()` nodes).
    fn path(next: &[u32], a: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut x = a;
        while (x as usize) < next.len() {
            out.push(x);
            x = next[x as usize];
        }
        out
    }

    /// Unzips a chain whose nodes have the given classes, round after round, checking every
    /// round against plain link-following (not the depth-first numbering `round_targets`
    /// uses): a link only moves forward along the current links, past nodes of classes
    /// whose readers cannot be on it; every class's path from its first node still holds all
    /// its nodes; the chain ends pure, with one in-link per node, within `len` rounds.
    fn unzip_by_rounds(classes: &[u8], max_skip_check: bool) {
        let len = classes.len();
        let nil = len as u32;
        let first: Vec<u32> = classes
            .iter()
            .map(|c| classes.iter().position(|d| d == c).unwrap() as u32)
            .collect();
        let mut next: Vec<u32> = (1..=len as u32).collect();
        let mut sc = super::Scratch::default();
        let mut rounds = 0;
        loop {
            let pure = (0..len).all(|x| next[x] == nil || first[next[x] as usize] == first[x]);
            if pure {
                break;
            }
            rounds += 1;
            assert!(rounds <= len, "no progress: {classes:?}");
            super::round_targets(&first, &next, &mut sc);
            let target = sc.target.clone();
            for x in 0..len {
                // The classes whose readers can be on x: those whose first node reaches x.
                let readers: Vec<u32> = (0..len as u32)
                    .filter(|&a| first[a as usize] == a && path(&next, a).contains(&(x as u32)))
                    .map(|a| first[a as usize])
                    .collect();
                let along = path(&next, x as u32);
                let t = target[x];
                assert!(
                    t == nil || along.contains(&t),
                    "target not ahead along the links: {classes:?} x={x}"
                );
                // Every node skipped (strictly between x and t) is of a class without a
                // reader on x.
                for &y in along.iter().skip(1).take_while(|&&y| y != t) {
                    assert!(
                        !readers.contains(&first[y as usize]),
                        "skips a node of a class with a reader on it: {classes:?} x={x} y={y}"
                    );
                }
                if max_skip_check && t != next[x] {
                    assert!(
                        t == nil || readers.contains(&first[t as usize]) || {
                            // Stopped by MAX_SKIP: exactly that many hops.
                            along.iter().position(|&y| y == t) == Some(super::MAX_SKIP as usize + 1)
                        }
                    );
                }
            }
            next = target;
            for c in 0..len as u32 {
                if first[c as usize] == c {
                    let reached = path(&next, c);
                    for y in 0..len as u32 {
                        if first[y as usize] == c {
                            assert!(reached.contains(&y), "class {c} lost node {y}: {classes:?}");
                        }
                    }
                }
            }
        }
        // Pure: every node has one in-link (its class predecessor), except each class's first.
        let mut in_links = vec![0; len];
        for x in 0..len {
            if next[x] != nil {
                in_links[next[x] as usize] += 1;
            }
        }
        for y in 0..len {
            let expected = usize::from(first[y] != y as u32);
            assert_eq!(in_links[y], expected, "in-links of {y}: {classes:?}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "safe code, exhaustive: hours under Miri")]
    fn every_small_chain_unzips_safely() {
        // Every chain of up to 7 nodes over up to 4 classes.
        for len in 1..=7usize {
            let total = 4usize.pow(len as u32);
            for code in 0..total {
                let mut c = code;
                let classes: Vec<u8> = (0..len)
                    .map(|_| {
                        let d = (c % 4) as u8;
                        c /= 4;
                        d
                    })
                    .collect();
                unzip_by_rounds(&classes, true);
            }
        }
    }

    proptest::proptest! {
        #[test]
        #[cfg_attr(miri, ignore = "safe code: hours under Miri")]
        fn random_chains_unzip_safely(
            classes in proptest::collection::vec(0u8..16, 1..60)
        ) {
            unzip_by_rounds(&classes, true);
        }
    }
}
