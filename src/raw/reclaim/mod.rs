//! Reclamation: when memory that other threads may still be reading can be freed.
//!
//! Two kinds of readers protect what they reach: *light* reads ([`light`]: a lookup announces
//! itself with two plain stores; the thread that frees pays for the ordering), and threads
//! pinned to crossbeam-epoch (writers, the maintainer, iterators). Memory made unreachable is
//! [`retire`]d and freed after a grace period of each kind; [`Grace`] is the same pair of
//! grace periods for a caller that waits for one itself rather than freeing something.
//!
//! This module knows nothing of keys, values, tables or growth: what it frees is a closure,
//! and the work its reclaimer thread runs besides collecting is a [`Chore`] someone
//! registered.

pub(crate) mod light;
pub(crate) mod retire;

pub(crate) use light::Protected;
#[cfg(not(loom))]
pub(crate) use retire::Chore;

use crate::sync::epoch::Guard;
use crate::sync::{Arc, AtomicBool, Ordering};

/// A grace period of both kinds: over once every thread that is pinned to crossbeam-epoch
/// now has unpinned, and every light read in progress now has ended.
pub(crate) struct Grace {
    /// Set by an epoch-deferred function.
    pinned: Arc<AtomicBool>,
    /// The light grace period's token (light.rs).
    light: u64,
}

impl Grace {
    /// Starts a grace period (after the writes it must separate from later ones).
    pub(crate) fn start(guard: &Guard) -> Grace {
        let flag = Arc::new(AtomicBool::new(false));
        let done = flag.clone();
        // Release: pairs with the Acquire in `is_over`.
        guard.defer(move || done.store(true, Ordering::Release));
        guard.flush();
        Grace {
            pinned: flag,
            light: light::token(),
        }
    }

    /// Whether the grace period is over (moving the light one along if it can).
    pub(crate) fn is_over(&self) -> bool {
        // Acquire: pairs with the Release in the deferred function.
        self.pinned.load(Ordering::Acquire) && light::advance(self.light, false)
    }
}
