//! # evanesce
//!
//! A concurrent in-process cache whose reads are lock-free, and a session store built on it.
//!
//! ```
//! use evanesce::Cache;
//!
//! let cache: Cache<String, u64> = Cache::new();
//! cache.insert("visits".to_string(), 1);
//! assert_eq!(cache.get("visits"), Some(1)); // lookups borrow: &str for a String key
//! assert_eq!(cache.get_or_insert_with("other".to_string(), || 7), 7);
//! assert_eq!(cache.remove("visits"), Some(1));
//! assert_eq!(cache.len(), 1);
//! ```
//!
//! ## Consistency
//!
//! Every operation on a single key is linearizable:
//! - [`get`](Cache::get) returns the value of the latest insert that completed before it
//!   started, or of one running concurrently with it; never a value that was replaced or
//!   removed before it started, and never freed memory.
//! - [`insert`](Cache::insert), [`remove`](Cache::remove) and
//!   [`get_or_insert_with`](Cache::get_or_insert_with) on the same key from many threads
//!   leave exactly the value of one of them (the last to take effect); every replaced or
//!   removed value is reported to the eviction listener exactly once.
//! - The computes of the [entry API](entry) ([`and_compute_with`](EntrySelector::and_compute_with),
//!   [`and_upsert_with`](EntrySelector::and_upsert_with),
//!   [`remove_if`](EntrySelector::remove_if), [`replace`](EntrySelector::replace)) take effect
//!   only if the value their function was given is still the key's: no update is lost to a
//!   concurrent insert, remove, compute, expiry or eviction.
//!
//! Whole-cache operations are weakly consistent: [`len`](Cache::len) sums per-shard
//! counters (exact when no write is in flight), [`iter`](Cache::iter) snapshots one shard at
//! a time, [`clear`](Cache::clear) may leave entries inserted while it runs, and
//! [`retain`](Cache::retain) tests every entry live for the whole call, and may or may not
//! test one inserted while it runs.
//!
//! ## Coming from moka or quick_cache
//!
//! | moka 0.12 | quick_cache 0.7 | evanesce |
//! |---|---|---|
//! | `get_with` | — | [`get_or_insert_with`](Cache::get_or_insert_with) |
//! | `future::Cache::get_with` | `get_or_insert_async` | [`get_or_insert_async`](Cache::get_or_insert_async) (any executor) |
//! | `try_get_with` | `get_or_insert_with` | [`try_get_or_insert_with`](Cache::try_get_or_insert_with), [`try_get_or_insert_async`](Cache::try_get_or_insert_async) |
//! | `optionally_get_with` | — | [`optionally_get_or_insert_with`](Cache::optionally_get_or_insert_with), [`optionally_get_or_insert_async`](Cache::optionally_get_or_insert_async) |
//! | `entry(k).or_insert_with_if`, `and_upsert_with`, `and_compute_with` | `entry` | [`entry(k)`](Cache::entry): the same names ([`EntrySelector`]) |
//! | — | `remove_if`, `replace` | [`entry(k).remove_if`](EntrySelector::remove_if), [`entry(k).replace`](EntrySelector::replace) |
//! | `invalidate`, `invalidate_all` | `remove`, `clear` | [`remove`](Cache::remove), [`clear`](Cache::clear) |
//! | `invalidate_entries_if` | `retain` | [`invalidate_entries_if`](Cache::invalidate_entries_if), [`retain`](Cache::retain) |
//! | `entry_count` | `len`, `weight` | [`len`](Cache::len), [`weighted_size`](Cache::weighted_size) |
//! | `policy` | `capacity`, `set_capacity` | [`policy`](Cache::policy), [`set_max_capacity`](Cache::set_max_capacity) |
//! | builder `expire_after` | — | [`CacheBuilder::expire_after`] with an [`Expiry`] |
//!
//! [`migration`] maps every public method of moka's `sync::Cache` and `future::Cache` and of
//! quick_cache's `sync::Cache`, including those with no equivalent (the `_by_ref` loaders,
//! `get_value_or_guard`, `drain`, async eviction listeners); the README's "Async and the
//! entry API" states the semantics that differ: cancellation of loads, computes that may run
//! their function more than once, `retain` done at once.
//!
//! ## Progress
//!
//! - Reads never lock, never CAS, and never write memory other threads read (except a
//!   per-entry counter that saturates after a few hits). A read announces itself with two
//!   plain stores to a per-thread slot, and on Linux executes no memory barrier: the thread
//!   that reclaims memory pays for the ordering instead (one `membarrier` system call per grace
//!   period); elsewhere, or where the kernel refuses `membarrier`, readers execute a fence. A
//!   thread's first read registers it (one CAS, once).
//! - Writes publish and unlink with CAS; no write ever waits for a reader, and a writer
//!   waits for another thread only when its shard's event buffer is full (it then takes the
//!   shard's maintenance lock and does the maintenance itself: back-pressure).
//! - Removed entries are reclaimed with crossbeam-epoch behind the readers' own grace
//!   period: memory is freed once every thread that could hold a reference has moved on.

#![deny(unsafe_op_in_unsafe_fn)]
// `unsafe` lives under `raw/` only (its `mod` below allows it); everything else is safe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod cache;
mod clock;
pub mod entry;
mod evict;
mod expire;
mod expiry;
#[cfg(all(
    any(
        feature = "tower-sessions",
        feature = "actix-session",
        feature = "redis"
    ),
    not(loom)
))]
pub mod integrations;
mod listener;
mod loader;
pub mod migration;
#[cfg(not(loom))]
mod periodic;
mod policy;
#[allow(unsafe_code)]
mod raw;
#[cfg(all(feature = "session", not(loom)))]
pub mod session;
mod stats;
mod sync;

pub use builder::{BuildError, CacheBuilder, MAX_SHARDS, MIN_CHECK_PERIOD};
pub use cache::{Cache, Iter, Pinned};
pub use entry::{CompResult, Entry, EntrySelector, Op};
pub use expiry::Expiry;
pub use listener::RemovalCause;
pub use policy::{CapacityError, Policy};
pub use stats::Stats;

/// The README's Rust example, compiled and run as a doc test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
