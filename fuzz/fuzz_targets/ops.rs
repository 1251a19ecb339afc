//! Differential fuzzing of `evanesce::Cache` against a `HashMap` model, with the entry API's
//! computes (`and_upsert_with`, `and_compute_with`, `remove_if`, `replace`) and `retain`.
//!
//! The input decodes into a cache configuration (shards, initial capacity, hash function,
//! value type, eviction listener or not) and a sequence of operations. Each operation is
//! applied to the cache and to the model, and its result is compared at once. Single-threaded,
//! so the cache must behave exactly like a map: `len` exact, `iter` yields every live entry
//! exactly once, the listener hears exactly the replaced / removed / cleared values.
//!
//! Keys come from a small domain (4 to 1024 keys, chosen by the input) so that re-inserts,
//! removals of present keys, chain collisions and table growth all happen. The hash function
//! is deterministic (so crashes reproduce) and can be degraded by the input: forced bits put
//! many keys in one bucket, one chain tag or one shard.
//!
//! Values are unique per creation (a serial number), so a stale value is never mistaken for
//! the current one. With `tracked`, values are [`Tracked`]: they count their creations and
//! drops, poison themselves when dropped, and own a heap allocation, so that a value dropped
//! twice, used after drop, or never dropped is reported. After the run the cache is dropped,
//! crossbeam-epoch is flushed, and every value created must have been dropped exactly once.
//!
//! `len()` runs a maintenance pass before it counts, so it is only called by the `Len` and
//! `IsEmpty` operations (and at the end), never as a check after every operation: that would
//! hide every state in which writes are waiting for maintenance.

#![no_main]

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use evanesce::{Cache, CompResult, RemovalCause};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

type Key = u16;

/// Key domains the input chooses from.
const KEY_SPACES: [u16; 5] = [4, 16, 64, 256, 1024];

/// Epoch flushes after the cache is dropped before the wait for deferred drops also sleeps.
const FLUSHES: usize = 256;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `1 << (shards % 3)`: 1, 2 or 4 shards.
    shards: u8,
    /// `capacity % 33` entries of initial capacity.
    capacity: u8,
    /// `KEY_SPACES[key_space % 5]` distinct keys.
    key_space: u8,
    hash: HashMode,
    /// Drop-counting values instead of `u64`.
    tracked: bool,
    /// Install an eviction listener and check its notifications after every operation.
    listener: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HashMode {
    /// SipHash-1-3 with fixed keys: well spread and deterministic.
    Sip,
    /// SipHash with bits forced: `(h & mask) | set`. Lets the fuzzer put many keys in one
    /// bucket (low bits), one chain tag (bits 32..48) or one shard (top bits).
    Masked { mask: u64, set: u64 },
    /// The key itself, rotated left by `rot % 64`: the key bits land in the bucket, the tag or
    /// the shard bits, and all other bits are zero.
    Rotated { rot: u8 },
}

/// One operation. Keys are taken modulo the key space.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    /// Insert a fresh value.
    Insert(u16),
    Get(u16),
    Remove(u16),
    /// `get_or_insert_with` with a fresh value.
    GetOrInsertWith(u16),
    ContainsKey(u16),
    Len,
    IsEmpty,
    Clear,
    /// Collect `iter()` and compare it with the model.
    Iter,
    /// Take the first `n` entries of `iter()` and drop the iterator.
    IterPrefix(u8),
    RunPendingTasks,
    /// Insert fresh values for `count` consecutive keys (wrapping in the key space): drives
    /// growth and the event ring quickly.
    InsertRange {
        start: u16,
        count: u8,
    },
    /// Remove `count` consecutive keys.
    RemoveRange {
        start: u16,
        count: u8,
    },
    /// `entry(k).and_upsert_with` storing a fresh value.
    Upsert(u16),
    /// `entry(k).and_compute_with`: by `action % 3`, keep, put a fresh value, or remove.
    Compute {
        key: u16,
        action: u8,
    },
    /// `entry(k).remove_if` with a predicate that answers `yes`.
    RemoveIf {
        key: u16,
        yes: bool,
    },
    /// `entry(k).replace` with a fresh value (only if the key has a value).
    Replace(u16),
    /// `retain`: keep the keys whose remainder modulo `1 + modulus % 4` is not `rest` (taken
    /// modulo the same).
    Retain {
        modulus: u8,
        rest: u8,
    },
}

// ---------------------------------------------------------------------------------------------
// Hashing

/// Deterministic [`BuildHasher`] whose quality the input chooses.
#[derive(Clone, Copy)]
struct FuzzState(HashMode);

struct FuzzHasher {
    mode: HashMode,
    sip: DefaultHasher,
    /// The bytes written, as an integer (for `Rotated`).
    raw: u64,
}

impl BuildHasher for FuzzState {
    type Hasher = FuzzHasher;

    fn build_hasher(&self) -> FuzzHasher {
        // `DefaultHasher::new()` is SipHash-1-3 with zero keys: the same in every process.
        FuzzHasher {
            mode: self.0,
            sip: DefaultHasher::new(),
            raw: 0,
        }
    }
}

impl Hasher for FuzzHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.sip.write(bytes);
        for &b in bytes {
            self.raw = (self.raw << 8) | u64::from(b);
        }
    }

    fn write_u16(&mut self, i: u16) {
        self.sip.write_u16(i);
        self.raw = (self.raw << 16) | u64::from(i);
    }

    fn finish(&self) -> u64 {
        match self.mode {
            HashMode::Sip => self.sip.finish(),
            HashMode::Masked { mask, set } => (self.sip.finish() & mask) | set,
            HashMode::Rotated { rot } => self.raw.rotate_left(u32::from(rot % 64)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// What the harness needs of a value type.
trait Value: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {}

impl Value for u64 {}

/// Creations and drops of the [`Tracked`] values of one run.
#[derive(Default)]
struct Counts {
    created: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    fn created(&self) -> u64 {
        self.created.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

const LIVE: u64 = 0x5AFE_5AFE_5AFE_5AFE;
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// A value that knows whether it is alive. Every instance (also every clone) counts one
/// creation and one drop. `magic` is an atomic so that the poisoning store in `drop` cannot
/// be optimised away; `heap` makes a double drop a double free and a use after drop a use
/// after free for AddressSanitizer too.
struct Tracked {
    magic: AtomicU64,
    serial: u64,
    heap: Box<u64>,
    counts: Arc<Counts>,
}

impl Tracked {
    fn new(serial: u64, counts: &Arc<Counts>) -> Self {
        counts.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            magic: AtomicU64::new(LIVE),
            serial,
            heap: Box::new(serial),
            counts: counts.clone(),
        }
    }

    fn check(&self) {
        let magic = self.magic.load(Ordering::SeqCst);
        assert_eq!(
            magic, LIVE,
            "use of a dropped (or never initialised) value, magic {magic:#x}"
        );
        assert_eq!(*self.heap, self.serial, "corrupted value");
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.check();
        Tracked::new(self.serial, &self.counts)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let magic = self.magic.swap(DEAD, Ordering::SeqCst);
        assert_eq!(
            magic, LIVE,
            "value dropped twice (or never initialised), magic {magic:#x}"
        );
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.check();
        other.check();
        self.serial == other.serial
    }
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.magic.load(Ordering::SeqCst) {
            LIVE => write!(f, "Tracked({})", self.serial),
            magic => write!(f, "Tracked({}, magic {magic:#x})", self.serial),
        }
    }
}

impl Value for Tracked {}

// ---------------------------------------------------------------------------------------------
// The run

type Log<V> = Arc<Mutex<Vec<(Key, V, RemovalCause)>>>;

struct Run<V, F> {
    cache: Cache<Key, V, FuzzState>,
    model: HashMap<Key, V>,
    /// What the listener heard since the last check (`None`: no listener).
    log: Option<Log<V>>,
    /// What it should have heard.
    expected: Vec<(Key, V, RemovalCause)>,
    key_space: u16,
    /// Makes a fresh, unique value.
    make: F,
}

impl<V: Value, F: FnMut() -> V> Run<V, F> {
    fn key(&self, raw: u16) -> Key {
        raw % self.key_space
    }

    fn insert(&mut self, k: Key) {
        let v = (self.make)();
        if let Some(old) = self.model.insert(k, v.clone()) {
            self.expected.push((k, old, RemovalCause::Replaced));
        }
        self.cache.insert(k, v);
    }

    fn remove(&mut self, k: Key) {
        let got = self.cache.remove(&k);
        let want = self.model.remove(&k);
        assert_eq!(got, want, "remove({k})");
        if let Some(v) = want {
            self.expected.push((k, v, RemovalCause::Explicit));
        }
    }

    /// Collects `iter()`, failing on a duplicate key.
    fn collect(&self) -> HashMap<Key, V> {
        let mut seen = HashMap::new();
        for (k, v) in self.cache.iter() {
            if let Some(first) = seen.insert(k, v.clone()) {
                panic!("iter() yielded key {k} twice: {first:?} then {v:?}");
            }
        }
        seen
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Insert(k) => {
                let k = self.key(k);
                self.insert(k);
            }
            Op::Get(k) => {
                let k = self.key(k);
                assert_eq!(self.cache.get(&k), self.model.get(&k).cloned(), "get({k})");
            }
            Op::Remove(k) => {
                let k = self.key(k);
                self.remove(k);
            }
            Op::GetOrInsertWith(k) => {
                let k = self.key(k);
                let candidate = (self.make)();
                let offered = candidate.clone();
                let mut called = false;
                let got = self.cache.get_or_insert_with(k, || {
                    called = true;
                    offered
                });
                match self.model.get(&k) {
                    Some(existing) => {
                        assert!(
                            !called,
                            "get_or_insert_with({k}) ran init for a present key"
                        );
                        assert_eq!(&got, existing, "get_or_insert_with({k}) of a present key");
                    }
                    None => {
                        assert!(
                            called,
                            "get_or_insert_with({k}) did not run init for an absent key"
                        );
                        assert_eq!(got, candidate, "get_or_insert_with({k}) of an absent key");
                        self.model.insert(k, candidate);
                    }
                }
            }
            Op::ContainsKey(k) => {
                let k = self.key(k);
                assert_eq!(
                    self.cache.contains_key(&k),
                    self.model.contains_key(&k),
                    "contains_key({k})"
                );
            }
            Op::Len => assert_eq!(self.cache.len(), self.model.len(), "len()"),
            Op::IsEmpty => assert_eq!(self.cache.is_empty(), self.model.is_empty(), "is_empty()"),
            Op::Clear => {
                self.cache.clear();
                for (k, v) in self.model.drain() {
                    self.expected.push((k, v, RemovalCause::Cleared));
                }
            }
            Op::Iter => {
                let seen = self.collect();
                assert!(
                    seen == self.model,
                    "iter() != model:\n iter:  {seen:?}\n model: {:?}",
                    self.model
                );
            }
            Op::IterPrefix(n) => {
                let mut seen = HashMap::new();
                for (k, v) in self.cache.iter().take(usize::from(n)) {
                    assert_eq!(self.model.get(&k), Some(&v), "iter() yielded {k} -> {v:?}");
                    assert!(seen.insert(k, ()).is_none(), "iter() yielded key {k} twice");
                }
                assert_eq!(
                    seen.len(),
                    usize::from(n).min(self.model.len()),
                    "iter() ended early"
                );
            }
            Op::RunPendingTasks => self.cache.run_pending_tasks(),
            Op::InsertRange { start, count } => {
                for i in 0..u16::from(count) {
                    let k = self.key(start.wrapping_add(i));
                    self.insert(k);
                }
            }
            Op::RemoveRange { start, count } => {
                for i in 0..u16::from(count) {
                    let k = self.key(start.wrapping_add(i));
                    self.remove(k);
                }
            }
            Op::Upsert(k) => {
                let k = self.key(k);
                let v = (self.make)();
                let offered = v.clone();
                let entry = self.cache.entry(k).and_upsert_with(|old| {
                    assert_eq!(old, self.model.get(&k), "and_upsert_with({k}) was given");
                    offered.clone()
                });
                assert_eq!(entry.value(), &v, "and_upsert_with({k})");
                assert_eq!(
                    entry.is_old_value_replaced(),
                    self.model.contains_key(&k),
                    "and_upsert_with({k}) replaced"
                );
                if let Some(old) = self.model.insert(k, v) {
                    self.expected.push((k, old, RemovalCause::Replaced));
                }
            }
            Op::Compute { key, action } => {
                let k = self.key(key);
                let v = (self.make)();
                let offered = v.clone();
                let got = self.cache.entry(k).and_compute_with(|old| {
                    assert_eq!(old, self.model.get(&k), "and_compute_with({k}) was given");
                    match action % 3 {
                        0 => evanesce::Op::Nop,
                        1 => evanesce::Op::Put(offered.clone()),
                        _ => evanesce::Op::Remove,
                    }
                });
                let want = match (action % 3, self.model.get(&k).cloned()) {
                    (0, Some(old)) => CompResult::Unchanged(old),
                    (1, None) => {
                        self.model.insert(k, v.clone());
                        CompResult::Inserted(v)
                    }
                    (1, Some(old)) => {
                        self.model.insert(k, v.clone());
                        self.expected.push((k, old, RemovalCause::Replaced));
                        CompResult::ReplacedWith(v)
                    }
                    (_, Some(old)) => {
                        self.model.remove(&k);
                        self.expected.push((k, old.clone(), RemovalCause::Explicit));
                        CompResult::Removed(old)
                    }
                    (_, None) => CompResult::StillNone,
                };
                assert_eq!(got, want, "and_compute_with({k}), action {}", action % 3);
            }
            Op::RemoveIf { key, yes } => {
                let k = self.key(key);
                let got = self.cache.entry(k).remove_if(|_| yes);
                let want = if yes { self.model.remove(&k) } else { None };
                assert_eq!(got, want, "remove_if({k}, {yes})");
                if let Some(v) = want {
                    self.expected.push((k, v, RemovalCause::Explicit));
                }
            }
            Op::Replace(k) => {
                let k = self.key(k);
                let v = (self.make)();
                let got = self.cache.entry(k).replace(v.clone());
                let want = self.model.get_mut(&k).map(|old| std::mem::replace(old, v));
                assert_eq!(got, want, "replace({k})");
                if let Some(old) = want {
                    self.expected.push((k, old, RemovalCause::Replaced));
                }
            }
            Op::Retain { modulus, rest } => {
                let m = 1 + u16::from(modulus % 4);
                let r = u16::from(rest) % m;
                let removed = self.cache.retain(|k, _| k % m != r);
                let doomed: Vec<Key> = self.model.keys().copied().filter(|k| k % m == r).collect();
                assert_eq!(removed, doomed.len(), "retain(k % {m} != {r}) removed");
                for k in doomed {
                    if let Some(v) = self.model.remove(&k) {
                        self.expected.push((k, v, RemovalCause::Explicit));
                    }
                }
            }
        }
    }

    /// Compares what the listener heard with what it should have heard.
    fn check_listener(&mut self) {
        let expected = std::mem::take(&mut self.expected);
        let Some(log) = &self.log else { return };
        let mut heard = std::mem::take(&mut *log.lock().unwrap());
        let mut expected = expected;
        // Within one operation the order of a `clear` is unspecified; keys repeat only for
        // ranges, in program order, which the stable sort keeps.
        heard.sort_by_key(|(k, _, _)| *k);
        expected.sort_by_key(|(k, _, _)| *k);
        assert!(
            heard == expected,
            "listener heard {heard:?}, expected {expected:?}"
        );
    }
}

fn run<V: Value>(input: &Input, mut make: impl FnMut() -> V) {
    let shards = 1usize << (input.shards % 3);
    let capacity = usize::from(input.capacity % 33);
    let mut builder = Cache::builder()
        .shards(shards)
        .initial_capacity(capacity)
        .hasher(FuzzState(input.hash));
    let log: Option<Log<V>> = input.listener.then(Log::default);
    if let Some(log) = &log {
        let log = log.clone();
        builder = builder.eviction_listener(move |k: &Key, v: &V, cause| {
            log.lock().unwrap().push((*k, v.clone(), cause));
        });
    }
    let cache = builder.build().unwrap();
    let key_space = KEY_SPACES[usize::from(input.key_space % 5)];
    let mut run = Run {
        cache,
        model: HashMap::new(),
        log,
        expected: Vec::new(),
        key_space,
        make: &mut make,
    };
    for &op in &input.ops {
        run.apply(op);
        run.check_listener();
    }
    // Final state, exactly.
    assert_eq!(run.cache.len(), run.model.len(), "final len()");
    let seen = run.collect();
    assert!(
        seen == run.model,
        "final iter() != model:\n iter:  {seen:?}\n model: {:?}",
        run.model
    );
    // Entries still cached when the last handle goes are not reported.
    drop(run.cache);
    if let Some(log) = &run.log {
        let heard = log.lock().unwrap();
        assert!(
            heard.is_empty(),
            "listener called while the cache was dropped: {heard:?}"
        );
    }
}

fuzz_target!(|input: Input| {
    let mut serial = 0u64;
    if !input.tracked {
        run::<u64>(&input, || {
            serial += 1;
            serial
        });
        return;
    }
    let counts = Arc::new(Counts::default());
    run::<Tracked>(&input, || {
        serial += 1;
        Tracked::new(serial, &counts)
    });
    // Everything the harness held is gone with `run`; what is left is in the epoch's bags, or
    // on its way there from the crate's reclaimer thread (which may have taken it from the
    // retirement queue just before the cache was dropped): flush, and give that thread a
    // moment, within a bound.
    let mut flushes = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while counts.dropped() != counts.created() && std::time::Instant::now() < deadline {
        crossbeam_epoch::pin().flush();
        flushes += 1;
        if flushes > FLUSHES {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    // A few more: a double drop that is still deferred would show up as a panic in `drop`.
    for _ in 0..4 {
        crossbeam_epoch::pin().flush();
    }
    assert_eq!(
        counts.dropped(),
        counts.created(),
        "values dropped != values created after {flushes} epoch flushes"
    );
});
