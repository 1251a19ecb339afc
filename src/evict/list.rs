//! Index-linked lists: a fixed number of circular doubly-linked lists over one space of
//! dense `u32` ids, each id in at most one list at a time.
//!
//! The lists know nothing of what the ids stand for: the eviction policy keeps its queues in
//! one [`Lists`], the timer wheel its slots in another. Each id owns one `[prev, next]` node
//! (8 bytes, nothing else), indexed by the id; each list has a sentinel node whose id is
//! `SENTINEL_BASE + list`, above every entry id. The sentinel makes every operation O(1) and
//! branch-light (no empty-list special cases), and lets [`Lists::unlink`] say which list an
//! id's removal emptied without a per-id list field: when a list's only entry leaves, both of
//! its neighbours are that list's sentinel.
//!
//! An id that is in no list has both links [`UNLINKED`]. Ids must be at most [`MAX_ID`].

/// Index of the previous-node link in a `[u32; 2]` node.
const PREV: usize = 0;
/// Index of the next-node link in a `[u32; 2]` node.
const NEXT: usize = 1;
/// First sentinel id; entry ids must be below it. List `i` has sentinel `SENTINEL_BASE + i`.
const SENTINEL_BASE: u32 = 1 << 31;
/// Largest id the lists accept.
pub(crate) const MAX_ID: u32 = SENTINEL_BASE - 1;
/// Link value of an id that is in no list.
const UNLINKED: u32 = u32::MAX;

/// The sentinel id of list `list`.
fn sentinel(list: usize) -> u32 {
    SENTINEL_BASE + list as u32
}

/// A fixed number of circular doubly-linked lists over dense `u32` ids (see the module
/// documentation).
#[derive(Clone)]
pub(crate) struct Lists {
    /// Sentinel nodes, one per list: `heads[list] = [last, first]` (a node is `[prev, next]`).
    heads: Box<[[u32; 2]]>,
    /// Entry nodes, indexed by id: `[prev, next]`, or `[UNLINKED; 2]` when in no list.
    links: Vec<[u32; 2]>,
}

/// A list detached by [`Lists::detach`]: its entries, still chained, to be taken one by one
/// with [`Lists::pop_detached`].
pub(crate) struct Detached {
    next: u32,
    end: u32,
}

impl Lists {
    /// `lists` empty lists.
    pub(crate) fn new(lists: usize) -> Self {
        assert!(
            lists < (u32::MAX - SENTINEL_BASE) as usize,
            "too many lists"
        );
        Lists {
            heads: (0..lists).map(|list| [sentinel(list); 2]).collect(),
            links: Vec::new(),
        }
    }

    /// Grows the node table to hold id `id` (8 bytes per id up to the largest one).
    pub(crate) fn reserve(&mut self, id: u32) {
        assert!(id <= MAX_ID, "list ids must be below 2^31");
        let index = id as usize;
        if index >= self.links.len() {
            self.links.resize(index + 1, [UNLINKED; 2]);
        }
    }

    /// Size of the node table: one more than the largest id reserved so far.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn ids(&self) -> usize {
        self.links.len()
    }

    /// Whether `id` is in a list.
    pub(crate) fn is_linked(&self, id: u32) -> bool {
        self.links
            .get(id as usize)
            .is_some_and(|node| node[NEXT] != UNLINKED)
    }

    /// Whether list `list` holds no id.
    pub(crate) fn is_empty(&self, list: usize) -> bool {
        self.heads[list][NEXT] == sentinel(list)
    }

    /// The first id of list `list`.
    pub(crate) fn front(&self, list: usize) -> Option<u32> {
        Self::entry(self.heads[list][NEXT])
    }

    /// The id after linked id `id` in its list, or `None` if `id` is the last one.
    pub(crate) fn next(&self, id: u32) -> Option<u32> {
        Self::entry(self.links[id as usize][NEXT])
    }

    /// The ids of list `list`, front to back.
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn iter(&self, list: usize) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.front(list), |&id| self.next(id))
    }

    /// Links `id`, which is in no list, at the back of list `list`. The node table must hold
    /// `id` ([`Lists::reserve`]).
    pub(crate) fn push_back(&mut self, list: usize, id: u32) {
        debug_assert!(!self.is_linked(id), "id {id} is already linked");
        let end = sentinel(list);
        let last = self.heads[list][PREV];
        self.links[id as usize] = [last, end];
        self.node_mut(last)[NEXT] = id;
        self.heads[list][PREV] = id;
    }

    /// Unlinks linked id `id` from its list. Returns the list if `id` was its only entry (the
    /// list is empty now), `None` otherwise.
    pub(crate) fn unlink(&mut self, id: u32) -> Option<usize> {
        let [prev, next] = self.links[id as usize];
        debug_assert!(next != UNLINKED, "id {id} is not linked");
        self.node_mut(prev)[NEXT] = next;
        self.node_mut(next)[PREV] = prev;
        self.links[id as usize] = [UNLINKED; 2];
        // In a circular list with a sentinel, both neighbours are the same node only if that
        // node is the sentinel and `id` was the list's only entry.
        (prev == next).then(|| {
            debug_assert!(prev >= SENTINEL_BASE, "corrupt list around id {id}");
            (prev - SENTINEL_BASE) as usize
        })
    }

    /// Moves the first id of list `list` to its back (a CLOCK hand advancing over it).
    pub(crate) fn rotate(&mut self, list: usize) {
        if let Some(first) = self.front(list) {
            self.unlink(first);
            self.push_back(list, first);
        }
    }

    /// `new`, which is in no list, takes the place of linked id `old`, which leaves its list.
    pub(crate) fn replace(&mut self, old: u32, new: u32) {
        debug_assert!(self.is_linked(old) && !self.is_linked(new) && old != new);
        let [prev, next] = self.links[old as usize];
        self.links[old as usize] = [UNLINKED; 2];
        self.links[new as usize] = [prev, next];
        self.node_mut(prev)[NEXT] = new;
        self.node_mut(next)[PREV] = new;
    }

    /// Empties list `list` at once; its former entries stay chained until
    /// [`Lists::pop_detached`] takes them, front to back. Meanwhile the list itself may be
    /// used again (an id taken from the chain may even be pushed back onto it).
    pub(crate) fn detach(&mut self, list: usize) -> Detached {
        let end = sentinel(list);
        let next = self.heads[list][NEXT];
        self.heads[list] = [end; 2];
        Detached { next, end }
    }

    /// The next id of a detached chain, now in no list; `None` when the chain is exhausted.
    pub(crate) fn pop_detached(&mut self, chain: &mut Detached) -> Option<u32> {
        if chain.next == chain.end {
            return None;
        }
        let id = chain.next;
        // The chain's next id is read before `id` can be linked anywhere again, so re-linking
        // into the detached list cannot loop.
        chain.next = self.links[id as usize][NEXT];
        self.links[id as usize] = [UNLINKED; 2];
        Some(id)
    }

    /// An entry id, or `None` for a sentinel.
    fn entry(node: u32) -> Option<u32> {
        (node < SENTINEL_BASE).then_some(node)
    }

    /// The `[prev, next]` node of `node`, an entry id or a sentinel id.
    fn node_mut(&mut self, node: u32) -> &mut [u32; 2] {
        if node >= SENTINEL_BASE {
            &mut self.heads[(node - SENTINEL_BASE) as usize]
        } else {
            &mut self.links[node as usize]
        }
    }

    /// Checks the structure, panicking with a message on the first violation, and returns the
    /// number of ids in each list. For tests and fuzzing; O(lists + size of the node table).
    ///
    /// * every list is a well-formed circular list through its sentinel (each node's `prev` is
    ///   the node before it, the sentinel's `prev` is the last node) holding only entry ids;
    /// * every linked id is in exactly one list, and every other id has both links
    ///   [`UNLINKED`].
    #[cfg(any(all(test, not(loom)), fuzzing))]
    pub(crate) fn validate(&self) -> Vec<usize> {
        let mut seen = vec![false; self.links.len()];
        let mut lengths = Vec::with_capacity(self.heads.len());
        for (list, head) in self.heads.iter().enumerate() {
            let end = sentinel(list);
            let mut prev = end;
            let mut cur = head[NEXT];
            let mut len = 0usize;
            while cur != end {
                assert!(
                    cur < SENTINEL_BASE,
                    "list {list} reaches node {cur:#x}, which is not one of its entries"
                );
                let index = cur as usize;
                assert!(
                    index < self.links.len(),
                    "list {list} holds unknown id {cur}"
                );
                assert!(!seen[index], "id {cur} is linked twice (list {list})");
                seen[index] = true;
                assert_eq!(
                    self.links[index][PREV], prev,
                    "id {cur} in list {list} has a wrong prev"
                );
                len += 1;
                prev = cur;
                cur = self.links[index][NEXT];
            }
            assert_eq!(head[PREV], prev, "sentinel of list {list} has a wrong prev");
            lengths.push(len);
        }
        for (index, node) in self.links.iter().enumerate() {
            if seen[index] {
                assert!(
                    node[PREV] != UNLINKED && node[NEXT] != UNLINKED,
                    "id {index} is linked with an UNLINKED link"
                );
            } else {
                assert_eq!(
                    *node, [UNLINKED; 2],
                    "id {index} is in no list but has links"
                );
            }
        }
        lengths
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Clone, Debug)]
    enum Op {
        Push(usize, u32),
        Unlink(u32),
        Rotate(usize),
        Replace(u32, u32),
        Drain(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 0..40u32).prop_map(|(l, id)| Op::Push(l, id)),
            2 => (0..40u32).prop_map(Op::Unlink),
            1 => (0..3usize).prop_map(Op::Rotate),
            1 => (0..40u32, 0..40u32).prop_map(|(a, b)| Op::Replace(a, b)),
            1 => (0..3usize).prop_map(Op::Drain),
        ]
    }

    proptest! {
        /// The lists against a model of three `VecDeque`s, after every operation.
        #[test]
        fn lists_behave_like_deques(ops in prop::collection::vec(op(), 1..300)) {
            let mut lists = Lists::new(3);
            let mut model: [VecDeque<u32>; 3] = Default::default();
            let find = |model: &[VecDeque<u32>; 3], id: u32| {
                model.iter().position(|q| q.contains(&id))
            };
            for op in ops {
                match op {
                    Op::Push(l, id) => {
                        if find(&model, id).is_none() {
                            lists.reserve(id);
                            lists.push_back(l, id);
                            model[l].push_back(id);
                        }
                    }
                    Op::Unlink(id) => {
                        prop_assert_eq!(lists.is_linked(id), find(&model, id).is_some());
                        if let Some(l) = find(&model, id) {
                            model[l].retain(|&x| x != id);
                            let emptied = lists.unlink(id);
                            prop_assert_eq!(emptied, model[l].is_empty().then_some(l));
                        }
                    }
                    Op::Rotate(l) => {
                        lists.rotate(l);
                        if let Some(x) = model[l].pop_front() {
                            model[l].push_back(x);
                        }
                    }
                    Op::Replace(old, new) => {
                        if let (Some(l), None) = (find(&model, old), find(&model, new)) {
                            lists.reserve(new);
                            lists.replace(old, new);
                            let at = model[l].iter().position(|&x| x == old).unwrap();
                            model[l][at] = new;
                        }
                    }
                    Op::Drain(l) => {
                        // Take every entry; push every other one back onto the same list.
                        let mut chain = lists.detach(l);
                        let expected: Vec<u32> = model[l].drain(..).collect();
                        let mut taken = Vec::new();
                        while let Some(id) = lists.pop_detached(&mut chain) {
                            if taken.len() % 2 == 0 {
                                lists.push_back(l, id);
                                model[l].push_back(id);
                            }
                            taken.push(id);
                        }
                        prop_assert_eq!(taken, expected);
                    }
                }
                let lengths = lists.validate();
                for l in 0..3 {
                    prop_assert_eq!(lengths[l], model[l].len());
                    prop_assert_eq!(lists.iter(l).collect::<Vec<_>>(), model[l].iter().copied().collect::<Vec<_>>());
                    prop_assert_eq!(lists.front(l), model[l].front().copied());
                    prop_assert_eq!(lists.is_empty(l), model[l].is_empty());
                }
            }
        }
    }
}
