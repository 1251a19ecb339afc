//! [`Policy`]: a cache's configuration as it runs, and the error of changing its capacity.

use std::fmt;
use std::time::Duration;

/// A cache's eviction and expiry settings, as they are now ([`Cache::policy`](crate::Cache::policy)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) max_capacity: Option<u64>,
    pub(crate) weighted: bool,
    pub(crate) time_to_live: Option<Duration>,
    pub(crate) time_to_idle: Option<Duration>,
    pub(crate) expiry: bool,
    pub(crate) shards: usize,
}

impl Policy {
    /// The bound: entries, or total weight with a weigher; `None` for an unbounded cache. It
    /// follows [`set_max_capacity`](crate::Cache::set_max_capacity).
    pub fn max_capacity(&self) -> Option<u64> {
        self.max_capacity
    }

    /// Whether the bound counts weight (a weigher is set) rather than entries.
    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// The default time to live.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.time_to_live
    }

    /// The time to idle.
    pub fn time_to_idle(&self) -> Option<Duration> {
        self.time_to_idle
    }

    /// Whether an [`Expiry`](crate::Expiry) decides lifetimes.
    pub fn has_expiry(&self) -> bool {
        self.expiry
    }

    /// The number of shards (moka's `num_segments`).
    pub fn shards(&self) -> usize {
        self.shards
    }
}

/// Why [`Cache::set_max_capacity`](crate::Cache::set_max_capacity) refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapacityError {
    /// The cache was built without [`max_capacity`](crate::CacheBuilder::max_capacity): it
    /// keeps no account of the weight it holds, so a bound cannot be added later.
    Unbounded,
    /// A capacity of zero: a cache that can hold nothing.
    Zero,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapacityError::Unbounded => write!(
                f,
                "the cache was built without max_capacity; a bound cannot be added later"
            ),
            CapacityError::Zero => write!(f, "max_capacity must be at least 1"),
        }
    }
}

impl std::error::Error for CapacityError {}
