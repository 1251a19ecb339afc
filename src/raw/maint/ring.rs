//! The bounded event buffer between writers and a shard's maintainer.
//!
//! Writers record what the maintainer must learn (a node was inserted, a node was marked
//! removed, a deadline moved earlier) here; whoever holds the shard's maintenance lock drains
//! it. It is a multi-producer, single-consumer ring with a sequence number per slot (after
//! Vyukov's bounded queue): a producer claims a slot by advancing `tail` with a CAS, writes the
//! event, and publishes it by storing the slot's sequence number with Release; the consumer
//! reads slots in order while their sequence numbers say they are full.
//!
//! When the ring is full, [`Ring::push`] fails and the producer applies back-pressure (see
//! `Upkeep::record`): it takes the maintenance lock, drains the ring and applies its own event
//! directly. Reads never touch the ring.

use crossbeam_utils::CachePadded;

use crate::listener::RemovalCause;
use crate::raw::table::Idx;
use crate::sync::{AtomicUsize, Ordering, UnsafeCell};

/// What happened to a node, as a writer tells the maintainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// The node was linked into its chain.
    Inserted {
        idx: Idx,
        weight: u32,
        /// The key's hash (for the eviction policy's ghost history).
        hash: u64,
    },
    /// The node was marked removed by a writer (not by the maintainer itself), for `cause`.
    Removed { idx: Idx, cause: RemovalCause },
    /// The node was linked into its chain and, by the same insert, the live node of its key
    /// that it superseded (`old`) was marked removed for `cause` (`Replaced`, or `Expired` if
    /// its deadline had passed): the new value takes the old one's place in the maintainer's
    /// bookkeeping (its timer and its eviction-queue position), which costs one step instead
    /// of an admission and a dismissal.
    Replaced {
        idx: Idx,
        old: Idx,
        weight: u32,
        hash: u64,
        cause: RemovalCause,
    },
    /// The node's deadline moved earlier: the timer wheel must re-file it.
    Rescheduled { idx: Idx },
}

// An event is copied into and out of a ring slot: keep it small.
const _: () = assert!(std::mem::size_of::<Event>() <= 24);

struct Slot {
    /// `pos` when free for the producer of position `pos`; `pos + 1` when it holds that
    /// producer's event.
    seq: AtomicUsize,
    event: UnsafeCell<Event>,
}

pub(crate) struct Ring {
    slots: Box<[Slot]>,
    mask: usize,
    tail: CachePadded<AtomicUsize>,
    head: CachePadded<AtomicUsize>,
}

// SAFETY: a slot's event is written only by the producer that claimed it (between its claim and
// its Release publication) and read only by the single consumer after an Acquire load of the
// sequence number, and `Event` is plain data.
unsafe impl Sync for Ring {}
// SAFETY: see above; nothing in the ring is tied to a thread.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring with `capacity` slots (a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        let slots = (0..capacity)
            .map(|i| Slot {
                seq: AtomicUsize::new(i),
                event: UnsafeCell::new(Event::Rescheduled { idx: 0 }),
            })
            .collect();
        Self {
            slots,
            mask: capacity - 1,
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Appends an event. On success returns the position it took (positions count up from 0);
    /// fails, returning the event, if the ring is full.
    #[inline]
    pub(crate) fn push(&self, event: Event) -> Result<usize, Event> {
        // Relaxed: `tail` only arbitrates which producer gets which position; the slot's
        // sequence number carries the synchronisation.
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            // Acquire: pairs with the consumer's Release store that freed the slot, so our write
            // below cannot race with its read of the previous event.
            let seq = slot.seq.load(Ordering::Acquire);
            let lag = seq.wrapping_sub(pos) as isize;
            if lag == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        slot.event.with_mut(|p| {
                            // SAFETY: winning the CAS for `pos` gives this thread exclusive write
                            // access to the slot until it publishes it below; the consumer does
                            // not read it before seeing `seq == pos + 1`.
                            unsafe { p.write(event) }
                        });
                        // Release: publishes the event; pairs with the Acquire in `pop`.
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(pos);
                    }
                    Err(actual) => pos = actual,
                }
            } else if lag < 0 {
                // The slot still holds the event of position `pos - capacity`: full.
                return Err(event);
            } else {
                // Another producer took `pos`; look again.
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the oldest event, if it has been published. Only the holder of the shard's
    /// maintenance lock may call this (single consumer). Stops at a slot that a producer has
    /// claimed but not yet filled: that event is picked up by a later drain.
    pub(crate) fn pop(&self) -> Option<Event> {
        // Relaxed: only the consumer writes `head`, and consumers are serialised by the
        // maintenance lock (whose Acquire/Release order successive consumers).
        let pos = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        // Acquire: pairs with the producer's Release store publishing the event.
        if slot.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
            return None;
        }
        let event = slot.event.with(|p| {
            // SAFETY: `seq == pos + 1` means the producer of `pos` finished writing, and no
            // producer writes the slot again before we free it below.
            unsafe { *p }
        });
        // Release: hands the slot back to the producer of `pos + capacity` (Acquire in push).
        slot.seq
            .store(pos.wrapping_add(self.capacity()), Ordering::Release);
        // Relaxed: see above; producers read it only for an estimate.
        self.head.store(pos.wrapping_add(1), Ordering::Relaxed);
        Some(event)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ev(idx: u32) -> Event {
        Event::Removed {
            idx,
            cause: RemovalCause::Explicit,
        }
    }

    fn idx(e: Event) -> u32 {
        match e {
            Event::Removed { idx, .. } => idx,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fifo_and_full() {
        let ring = Ring::new(4);
        for i in 0..4 {
            assert_eq!(ring.push(ev(i)), Ok(i as usize));
        }
        assert_eq!(ring.push(ev(9)), Err(ev(9)));
        assert_eq!(ring.pop(), Some(ev(0)));
        assert!(ring.push(ev(4)).is_ok());
        for i in 1..5 {
            assert_eq!(ring.pop(), Some(ev(i)));
        }
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn concurrent_producers_lose_nothing() {
        let ring = std::sync::Arc::new(Ring::new(64));
        let per: u32 = if cfg!(miri) { 200 } else { 10_000 };
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        let mut e = ev(t * 100_000 + i);
                        loop {
                            match ring.push(e) {
                                Ok(_) => break,
                                Err(back) => {
                                    e = back;
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let mut seen = [0u32; 4];
        let mut got = 0;
        while got < 4 * per {
            if let Some(e) = ring.pop() {
                let t = (idx(e) / 100_000) as usize;
                assert_eq!(idx(e) % 100_000, seen[t], "per-producer order");
                seen[t] += 1;
                got += 1;
            } else {
                std::thread::yield_now();
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ring.pop(), None);
    }
}
