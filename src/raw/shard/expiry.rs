//! Reads of a cache with an [`Expiry`](crate::Expiry): the read hook may move the entry's
//! deadline. Caches without one never come here (`RawCache::read` dispatches), so their
//! reads are untouched.

use std::borrow::Borrow;
use std::time::Duration;

use super::{Shard, TICK_NS};
use crate::expiry::ExpiryFn;
use crate::raw::Config;
use crate::raw::reclaim::Protected;
use crate::raw::table::{Idx, MARK, NEVER};
use crate::sync::Ordering;

/// The deadline for a lifetime an expiry hook `given` at `now`, capped by the cache's time to
/// live (`ttl`, ns; [`NEVER`] for none) counted from now.
fn deadline_for(now: u64, given: Option<Duration>, ttl: u64) -> u64 {
    let lifetime = match given {
        Some(d) => crate::builder::duration_to_ns(d).min(ttl),
        None => ttl,
    };
    if lifetime == NEVER {
        NEVER
    } else {
        now.saturating_add(lifetime).min(NEVER - 1)
    }
}

impl<K, V> Shard<K, V>
where
    K: Eq + std::hash::Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// [`read_in`](Self::read_in) for a cache with an expiry: on a hit, `expire_after_read`
    /// decides the entry's new deadline, written if it moves by a tick or more. Returns `f`'s
    /// result, and the node if its deadline moved earlier (the timer wheel must re-file it:
    /// the caller records the event, outside the read).
    pub(crate) fn read_hooked<Q, S, R>(
        &self,
        cfg: &Config<K, V, S>,
        expiry: &ExpiryFn<K, V>,
        hash: u64,
        key: &Q,
        f: impl FnOnce(&V) -> R,
        guard: &impl Protected,
    ) -> (Option<R>, Option<Idx>)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let Some((idx, node, next)) = self.table.lookup(hash, key, guard) else {
            return (None, None);
        };
        if next & MARK != 0 {
            return (None, None);
        }
        // Relaxed: a single word (a cache with an expiry never writes values in place, so no
        // value is ordered by it).
        let deadline = node.deadline.load(Ordering::Relaxed);
        cfg.time.ensure_ticking();
        let now = cfg.time.now();
        if deadline != NEVER && now >= deadline {
            return (None, None);
        }
        if let Some(bound) = &cfg.bound {
            node.touch(bound.sample(hash));
        }
        let remaining = (deadline != NEVER).then(|| Duration::from_nanos(deadline - now));
        // SAFETY: found while protected (see `Table::find`).
        let (r, given) =
            unsafe { node.with_payload(|k, v| (f(v), expiry.expire_after_read(k, v, remaining))) };
        let wanted = deadline_for(now, given, cfg.ttl);
        if wanted > deadline && wanted - deadline >= TICK_NS {
            // Relaxed: as for a time-to-idle extension (`alive_on_hit`): a later deadline needs
            // no event, the wheel re-files lazily.
            node.deadline.store(wanted, Ordering::Relaxed);
        } else if wanted < deadline && deadline - wanted >= TICK_NS {
            // Relaxed: as above; the wheel learns of the earlier deadline from the event the
            // caller records.
            node.deadline.store(wanted, Ordering::Relaxed);
            return (Some(r), Some(idx));
        }
        (Some(r), None)
    }
}
