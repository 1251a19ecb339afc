//! [`MemoryStore`] and its builder.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use quanta::Clock;

use super::key::Key;
use super::snapshot::{self, SnapshotError};
use super::{Error, JsonSerializer, SealingKey, Serializer, SessionData};
use crate::periodic::Periodic;
use crate::sync::{Arc, AtomicBool, Mutex, MutexGuard, Ordering, Weak, lock};
use crate::{Cache, RemovalCause, Stats};

/// Writer locks per store (`set`, `touch`, `destroy` of one id are serialized; ids spread
/// over the stripes by hash).
const STRIPES: usize = 64;

/// The shortest [`check_period`](MemoryStoreBuilder::check_period) accepted: a sweeper that
/// runs more often than this burns a core for nothing (expiry does not depend on it). The
/// engine's own floor ([`crate::MIN_CHECK_PERIOD`]).
pub use crate::builder::MIN_CHECK_PERIOD;

/// The `ttl_fn` option: a session's lifetime from the session and its id.
pub type TtlFn<T> = dyn Fn(&T, &str) -> Duration + Send + Sync + 'static;

/// The `dispose` hook: the id, the session (`None` if its stored bytes do not decode), and
/// why it left.
pub type DisposeFn<T> = dyn Fn(&str, Option<T>, RemovalCause) + Send + Sync + 'static;

/// A stored session: its serialized bytes, shared by the clones the engine hands out, behind
/// one reference count in one allocation with their length and the `touched` flag (triomphe's
/// `ThinArc`: one pointer in the engine's node, as the `std` `Arc` of a boxed slice it replaces
/// was, and one allocation and one free per stored session instead of two each; the session
/// module is not built under loom, like the `std::sync::Arc` the shim gives there).
#[derive(Clone)]
struct Stored(triomphe::ThinArc<AtomicBool, u8>);

impl Stored {
    /// The stored session `bytes`; `touched` starts false: set by `touch` just before it
    /// replaces this value with the same session under a new cookie, so that the dispose hook
    /// is not told about such a replacement.
    fn new(bytes: &[u8]) -> Self {
        Self(triomphe::ThinArc::from_header_and_slice(
            AtomicBool::new(false),
            bytes,
        ))
    }

    fn bytes(&self) -> &[u8] {
        &self.0.slice
    }

    fn touched(&self) -> &AtomicBool {
        &self.0.header.header
    }

    fn same(&self, other: &Stored) -> bool {
        self.0.as_ptr() == other.0.as_ptr()
    }
}

/// Runs `f` with this thread's encoding buffer, empty: a session is encoded there and copied
/// once, at its exact size, into its [`Stored`]. The buffer is taken out for the call, so a
/// serializer that calls into a store on the same thread (or a call from a thread-local
/// destructor, once the buffer is gone) gets a fresh one.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    }
    /// A buffer that grew beyond this (a huge session) is let go after use.
    const KEEP: usize = 64 * 1024;
    let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP {
        // Fails only once the thread's locals are being destroyed: the buffer is then dropped.
        let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
    }
    r
}

/// The options a store was built with (memorystore's `store.options`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// The sweeper's period, if any.
    pub check_period: Option<Duration>,
    /// The bound on sessions, if any.
    pub max: Option<u64>,
    /// The bound on bytes (ids plus serialized sessions), if any.
    pub max_bytes: Option<u64>,
    /// The fixed lifetime, if any.
    pub ttl: Option<Duration>,
    /// Whether lifetimes come from a `ttl_fn`.
    pub ttl_fn: bool,
    /// Whether a dispose hook is set.
    pub dispose: bool,
    /// Whether expired sessions not yet reclaimed are returned once.
    pub stale: bool,
    /// Whether `set` over an existing session skips the dispose hook.
    pub no_dispose_on_set: bool,
    /// Whether the engine reads the clock on every operation instead of the process-wide
    /// coarse clock ([`MemoryStoreBuilder::precise_clock`]).
    pub precise_clock: bool,
    /// The snapshot file loaded at build and saved when the store is dropped, if any.
    pub snapshot_file: Option<PathBuf>,
    /// How often the snapshot file is saved in the background, if at all.
    pub snapshot_every: Option<Duration>,
    /// Whether snapshots are sealed with a [`snapshot_key`](MemoryStoreBuilder::snapshot_key)
    /// (the key itself is not kept here).
    pub snapshot_sealed: bool,
}

/// Builds a [`MemoryStore`]; see [`MemoryStore::builder`]. Every option is memorystore's
/// (see the [module documentation](super) for the table).
pub struct MemoryStoreBuilder<Z: Serializer = JsonSerializer> {
    serializer: Z,
    options: Options,
    ttl_fn: Option<Arc<TtlFn<Z::Session>>>,
    dispose: Option<Arc<DisposeFn<Z::Session>>>,
    clock: Option<Clock>,
    snapshot_key: Option<SealingKey>,
    /// Options tied to the session type that a later `serializer` call discarded.
    discarded: Vec<&'static str>,
}

impl<Z: Serializer> fmt::Debug for MemoryStoreBuilder<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<Z: Serializer> MemoryStoreBuilder<Z> {
    fn with(serializer: Z) -> Self {
        Self {
            serializer,
            options: Options::default(),
            ttl_fn: None,
            dispose: None,
            clock: None,
            snapshot_key: None,
            discarded: Vec::new(),
        }
    }

    /// Runs a background sweeper every `period` that removes expired sessions
    /// ([`prune`](MemoryStore::prune)). Expiry does not depend on it (the engine reclaims
    /// expired sessions as writes happen); it covers a store that nobody writes to. The
    /// thread holds only a weak reference: dropping the store stops it. A period below
    /// [`MIN_CHECK_PERIOD`] (1 ms) is refused by [`build`](Self::build).
    pub fn check_period(mut self, period: Duration) -> Self {
        self.options.check_period = Some(period);
        self
    }

    /// Holds at most `n` sessions; beyond that, the least valuable ones (by the engine's
    /// CLOCK-family policy: recently created and never read again first) are removed, and
    /// the dispose hook hears [`RemovalCause::Size`].
    pub fn max(mut self, n: u64) -> Self {
        self.options.max = Some(n);
        self
    }

    /// Holds at most `n` bytes of sessions, each weighing its id plus its serialized bytes.
    /// A single session heavier than that is refused with [`Error::TooLarge`]. Exclusive
    /// with [`max`](Self::max).
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.options.max_bytes = Some(n);
        self
    }

    /// Every session lives `ttl` from its last `set` or `touch`, whatever its cookie says.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self.options.ttl_fn = false;
        self.ttl_fn = None;
        self
    }

    /// Every session lives what `f(session, id)` says from its last `set` or `touch`
    /// (`Duration::ZERO`: `set` removes it).
    pub fn ttl_fn(
        mut self,
        f: impl Fn(&Z::Session, &str) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.options.ttl = None;
        self.options.ttl_fn = true;
        self.ttl_fn = Some(Arc::new(f));
        self
    }

    /// Calls `f(id, session, cause)` once for every session that leaves the store: expired
    /// ([`RemovalCause::Expired`]), evicted by the bound (`Size`), destroyed (`Explicit`),
    /// overwritten by `set` (`Replaced`, unless [`no_dispose_on_set`](Self::no_dispose_on_set)),
    /// or cleared (`Cleared`). A `touch` is not a removal. `session` is `None` if the stored
    /// bytes do not decode. The hook runs on the thread that caused the removal (or the
    /// sweeper's), after the session is gone from the store; a panic in it is caught.
    pub fn dispose(
        mut self,
        f: impl Fn(&str, Option<Z::Session>, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.options.dispose = true;
        self.dispose = Some(Arc::new(f));
        self
    }

    /// An expired session that has not been reclaimed yet is returned once more by
    /// [`get`](MemoryStore::get) (and removed). The engine reclaims expired sessions within
    /// about a millisecond tick, so this only bridges that moment.
    pub fn stale(mut self, stale: bool) -> Self {
        self.options.stale = stale;
        self
    }

    /// `set` over an existing session does not call the dispose hook.
    pub fn no_dispose_on_set(mut self, no_dispose_on_set: bool) -> Self {
        self.options.no_dispose_on_set = no_dispose_on_set;
        self
    }

    /// Reads the clock on every operation that needs the time instead of a process-wide
    /// coarse clock refreshed every millisecond by a background thread (default: `false`, the
    /// coarse clock). For a store that serves few operations a second, where the thread's
    /// thousand wake-ups a second cost more than the readings it saves (the npm package sets
    /// it). See [`CacheBuilder::coarse_clock`](crate::CacheBuilder::coarse_clock).
    pub fn precise_clock(mut self, precise: bool) -> Self {
        self.options.precise_clock = precise;
        self
    }

    /// The time source (`quanta::Clock::mock()` in tests). Cookie dates are read against a
    /// wall clock that starts at the system time when the store is built and advances with
    /// this clock ([`MemoryStore::now`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Keeps the sessions in `path` across restarts (not a memorystore option): `build`
    /// checks `path`'s directory and those above it (refused if another user could write or
    /// owns one: [`SnapshotError::DirectoryWritableByOthers`],
    /// [`SnapshotError::DirectoryForeignOwner`]) and that a snapshot can be written there (it
    /// creates and removes a temporary file; [`SnapshotError::DirectoryNotWritable`] if it
    /// cannot), loads the
    /// snapshot at `path` if the file exists (sessions that expired meanwhile are skipped; an
    /// empty file is "no sessions yet"; a damaged, untrusted or wrongly keyed file makes
    /// `build` fail with [`Error::Snapshot`] rather than start empty and overwrite it), and
    /// the store saves it when its last handle is dropped. A drop cannot report an error: at
    /// a graceful shutdown call [`MemoryStore::close`], which saves and says whether it
    /// could. See [`MemoryStore::save_snapshot`] and [`MemoryStore::load_snapshot`] for the
    /// format and the checks.
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.snapshot_file = Some(path.into());
        self
    }

    /// Also saves the [`snapshot_file`](Self::snapshot_file) every `period`, from a
    /// background thread that holds only a weak reference to the store. An error of a
    /// background save is kept for [`MemoryStore::take_snapshot_error`].
    pub fn snapshot_every(mut self, period: Duration) -> Self {
        self.options.snapshot_every = Some(period);
        self
    }

    /// Seals snapshots with `key` (XChaCha20-Poly1305, a random nonce per file, the header
    /// authenticated too): every snapshot this store writes is sealed, and it loads sealed
    /// snapshots only. A file without the key neither reads nor loads; a file changed, cut or
    /// sealed with another key is [`SnapshotError::Unauthenticated`]; a sealed file loaded
    /// without a key is [`SnapshotError::KeyRequired`]; and an unsealed file loaded with a key
    /// is [`SnapshotError::NotSealed`], refused rather than trusted (whoever can plant a file
    /// can plant an unsealed one). To move an unsealed snapshot over, load it once with a store
    /// without a key and save it with one.
    ///
    /// A seal is not a date: an older snapshot sealed with the same key loads as well as the
    /// latest, and brings back the sessions it holds (logged out since or not). The directory
    /// checks keep other users from putting one back; this user, root and a backup restore
    /// can. A new key makes every earlier snapshot unloadable.
    ///
    /// Applies to [`snapshot_file`](Self::snapshot_file) and to every snapshot method of the
    /// store. The values themselves, in memory, are not
    /// sealed (see [`Sealed`](super::Sealed) for a serializer that seals them, for Redis).
    pub fn snapshot_key(mut self, key: SealingKey) -> Self {
        self.options.snapshot_sealed = true;
        self.snapshot_key = Some(key);
        self
    }

    /// Stores sessions through `serializer` (and so stores its session type). Call it first:
    /// `ttl_fn` and `dispose` are typed by the session, and setting them before this is
    /// reported by [`build`](Self::build) as an error.
    pub fn serializer<Z2: Serializer>(self, serializer: Z2) -> MemoryStoreBuilder<Z2> {
        let mut discarded = self.discarded;
        if self.ttl_fn.is_some() {
            discarded.push("ttl_fn");
        }
        if self.dispose.is_some() {
            discarded.push("dispose");
        }
        let mut options = self.options;
        options.ttl_fn = false;
        options.dispose = false;
        MemoryStoreBuilder {
            serializer,
            options,
            ttl_fn: None,
            dispose: None,
            clock: self.clock,
            snapshot_key: self.snapshot_key,
            discarded,
        }
    }

    /// Builds the store: checks the options, builds the engine (starting its sweeper if
    /// `check_period` is set), and with a `snapshot_file` loads it and starts the saver.
    pub fn build(self) -> Result<MemoryStore<Z>, Error> {
        self.validate()?;
        let clock = self.clock.clone().unwrap_or_default();
        let serializer = Arc::new(self.serializer);
        let cache = engine(&self.options, self.dispose.clone(), &serializer, &clock)?;
        let options = self.options;
        let snapshot_file = options.snapshot_file.clone();
        let snapshot_every = options.snapshot_every;
        let store = MemoryStore {
            inner: Arc::new(Inner {
                cache,
                serializer,
                ttl_fn: self.ttl_fn,
                origin: crate::clock::Origin::new(clock),
                wall_origin: SystemTime::now(),
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                stripe_hasher: ahash::RandomState::new(),
                max_weight: options.max_bytes.map(|max| max.min(u64::from(u32::MAX))),
                options,
                snapshot_task: Mutex::new(None),
                save_lock: Mutex::new(()),
                closed: AtomicBool::new(false),
                snapshot_error: Mutex::new(None),
                save_on_drop: AtomicBool::new(false),
                key: self.snapshot_key,
            }),
        };
        if let Some(path) = snapshot_file {
            store.start_snapshots(path, snapshot_every)?;
        }
        Ok(store)
    }

    /// Refuses options that do not make a store (each error says which and why), and a
    /// snapshot file that could not be written where it is.
    fn validate(&self) -> Result<(), Error> {
        let options = &self.options;
        if !self.discarded.is_empty() {
            return Err(Error::Config(format!(
                "{} set before serializer(): set them after it (they depend on the session type)",
                self.discarded.join(" and ")
            )));
        }
        if options.max.is_some() && options.max_bytes.is_some() {
            return Err(Error::Config(
                "max and max_bytes are exclusive: bound by sessions or by bytes".into(),
            ));
        }
        if options.max == Some(0) || options.max_bytes == Some(0) {
            return Err(Error::Config("a bound of zero can hold nothing".into()));
        }
        if options.ttl == Some(Duration::ZERO) {
            return Err(Error::Config(
                "a fixed ttl of zero would remove every session as it is set".into(),
            ));
        }
        if let Some(period) = options.check_period
            && period < MIN_CHECK_PERIOD
        {
            return Err(Error::Config(format!(
                "check_period of {period:?} is below the floor of {MIN_CHECK_PERIOD:?}: a sweeper \
                 that often would spin a core (expiry does not depend on it)"
            )));
        }
        match (&options.snapshot_file, options.snapshot_every) {
            (None, Some(_)) => {
                return Err(Error::Config(
                    "snapshot_every needs a snapshot_file to save to".into(),
                ));
            }
            (Some(_), Some(period)) if period < MIN_CHECK_PERIOD => {
                return Err(Error::Config(format!(
                    "snapshot_every of {period:?} is below the floor of {MIN_CHECK_PERIOD:?}"
                )));
            }
            _ => {}
        }
        if let Some(path) = &options.snapshot_file {
            snapshot::probe(path).map_err(Error::Snapshot)?;
        }
        Ok(())
    }
}

/// The engine behind a store: bounded by sessions or by bytes, with `dispose` as its
/// listener (memorystore's `noDisposeOnSet`, and a replacement by `touch`, say nothing), and
/// its sweeper every `check_period`.
fn engine<Z: Serializer>(
    options: &Options,
    dispose: Option<Arc<DisposeFn<Z::Session>>>,
    serializer: &Arc<Z>,
    clock: &Clock,
) -> Result<Cache<Key, Stored>, Error> {
    let mut engine = Cache::<Key, Stored>::builder()
        .clock(clock.clone())
        .coarse_clock(!options.precise_clock)
        .record_stats(true);
    if let Some(max) = options.max {
        engine = engine.max_capacity(max);
    }
    if let Some(max_bytes) = options.max_bytes {
        engine = engine
            .max_capacity(max_bytes)
            .weigher(|id: &Key, stored: &Stored| {
                u32::try_from(weight_of(id.as_str(), stored.bytes())).unwrap_or(u32::MAX)
            });
    }
    if let Some(dispose) = dispose {
        let serializer = serializer.clone();
        let no_dispose_on_set = options.no_dispose_on_set;
        engine = engine.eviction_listener(move |id: &Key, stored: &Stored, cause: RemovalCause| {
            // Acquire: pairs with the Release store in `touch`, which precedes the insert
            // that superseded this value.
            if cause == RemovalCause::Replaced
                && (no_dispose_on_set || stored.touched().load(Ordering::Acquire))
            {
                return;
            }
            let session = serializer.decode(stored.bytes()).ok();
            dispose(id.as_str(), session, cause);
        });
    }
    if let Some(period) = options.check_period {
        engine = engine.check_period(period);
    }
    engine.build().map_err(|e| match e {
        crate::BuildError::SweeperSpawn(why) => Error::Sweeper(std::io::Error::other(why)),
        other => Error::Config(other.to_string()),
    })
}

impl<Z: Serializer> MemoryStore<Z> {
    /// With a `snapshot_file`: loads it (a missing file is "no sessions yet"), starts the
    /// background saver every `every`, and arms the save when the last handle goes.
    fn start_snapshots(&self, path: PathBuf, every: Option<Duration>) -> Result<(), Error> {
        match self.load_snapshot(&path) {
            Ok(_) => {}
            Err(Error::Snapshot(SnapshotError::Io(e)))
                if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(period) = every {
            let weak: Weak<Inner<Z>> = Arc::downgrade(&self.inner);
            let task = Periodic::spawn("evanesce-snapshot", period, move || match weak.upgrade() {
                Some(inner) => inner.background_save(&path),
                None => false,
            })
            .map_err(Error::Sweeper)?;
            *lock(&self.inner.snapshot_task) = Some(task);
        }
        // Relaxed: read by the drop of the last handle, after every other use.
        self.inner.save_on_drop.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// A session's weight against `max_bytes`: its id plus its serialized bytes.
fn weight_of(id: &str, bytes: &[u8]) -> u64 {
    (id.len() as u64).saturating_add(bytes.len() as u64)
}

/// One id or many, for [`MemoryStore::destroy`]: `&str`, `String`, or a slice, array or
/// `Vec` of either.
pub trait Ids {
    /// Calls `f` with each id.
    fn for_each_id(self, f: &mut dyn FnMut(&str));
}

impl Ids for &str {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        f(self)
    }
}

impl Ids for String {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        f(&self)
    }
}

impl Ids for &String {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        f(self)
    }
}

impl<T: AsRef<str>> Ids for &[T] {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        for id in self {
            f(id.as_ref())
        }
    }
}

impl<T: AsRef<str>, const N: usize> Ids for [T; N] {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        for id in &self {
            f(id.as_ref())
        }
    }
}

impl<T: AsRef<str>, const N: usize> Ids for &[T; N] {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        for id in self {
            f(id.as_ref())
        }
    }
}

impl<T: AsRef<str>> Ids for Vec<T> {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        for id in &self {
            f(id.as_ref())
        }
    }
}

impl<T: AsRef<str>> Ids for &Vec<T> {
    fn for_each_id(self, f: &mut dyn FnMut(&str)) {
        for id in self {
            f(id.as_ref())
        }
    }
}

/// A session store with memorystore's options and methods, on the evanesce engine: see the
/// [module documentation](super).
///
/// A cheap-to-clone handle (`Send + Sync`); the store lives until its last handle is dropped.
pub struct MemoryStore<Z: Serializer = JsonSerializer> {
    inner: Arc<Inner<Z>>,
}

struct Inner<Z: Serializer> {
    cache: Cache<Key, Stored>,
    serializer: Arc<Z>,
    options: Options,
    ttl_fn: Option<Arc<TtlFn<Z::Session>>>,
    /// When the store was built, on its clock (`wall_origin` on the system's).
    origin: crate::clock::Origin,
    wall_origin: SystemTime,
    stripes: Box<[Mutex<()>]>,
    stripe_hasher: ahash::RandomState,
    /// The largest weight one session may have (`max_bytes`, at most `u32::MAX`).
    max_weight: Option<u64>,
    /// The background saver (`snapshot_every`); dropping it stops the thread, after a save it
    /// is running has finished (unless dropped by that save's own thread).
    snapshot_task: Mutex<Option<Periodic>>,
    /// Held for the whole of every save (the snapshot taken, written and renamed), so that
    /// saves happen one at a time and the last one to start is the one on disk.
    save_lock: Mutex<()>,
    /// Set by `close` (under `save_lock`): no background save starts after it.
    closed: AtomicBool,
    /// The last error of a background save, until taken.
    snapshot_error: Mutex<Option<SnapshotError>>,
    /// Whether dropping the store saves its snapshot file (set once the file loaded: a store
    /// whose build failed must not overwrite the file it could not read; cleared by `close`).
    save_on_drop: AtomicBool,
    /// The snapshot key, if any.
    key: Option<SealingKey>,
}

impl<Z: Serializer> Drop for Inner<Z> {
    fn drop(&mut self) {
        // Stop the background saver first (it holds only a weak reference, so it is not
        // saving now unless it is the thread dropping us, after its save: it is not joined).
        if let Ok(task) = self.snapshot_task.get_mut() {
            task.take();
        }
        // Relaxed: `&mut self`, every other handle is gone.
        if self.save_on_drop.load(Ordering::Relaxed)
            && let Some(path) = self.options.snapshot_file.clone()
        {
            // A drop cannot return an error; a caller who must know saves explicitly first
            // (`MemoryStore::save_snapshot`).
            let _ = self.save_snapshot(&path);
        }
    }
}

impl<Z: Serializer> Inner<Z> {
    /// The store's wall clock (see [`MemoryStore::now`]).
    fn now(&self) -> SystemTime {
        let elapsed = self.origin.elapsed();
        self.wall_origin
            .checked_add(elapsed)
            .unwrap_or(self.wall_origin)
    }

    /// Every live session with its absolute expiry, in the snapshot format (sealed with the
    /// store's key if it has one).
    fn snapshot_bytes(&self) -> Result<(Vec<u8>, usize), SnapshotError> {
        let now = self.now();
        let mut records: Vec<(String, Option<SystemTime>, Stored)> = Vec::new();
        for (id, stored) in self.cache.iter() {
            // Read the lifetime of exactly these bytes: if the session was replaced between
            // the iteration and the lookup, look again.
            let mut stored = stored;
            let ttl = loop {
                let Some(ttl) = self.cache.ttl(&id) else {
                    break None;
                };
                match self.cache.get_with(&id, Stored::clone) {
                    Some(now_stored) if now_stored.same(&stored) => break Some(ttl),
                    Some(now_stored) => stored = now_stored,
                    None => break None,
                }
            };
            let Some(ttl) = ttl else { continue };
            let expires = if ttl == Duration::MAX {
                None
            } else {
                Some(now.checked_add(ttl).unwrap_or(now))
            };
            records.push((id.into_string(), expires, stored));
        }
        let count = records.len();
        let bytes = snapshot::encode(
            records
                .iter()
                .map(|(id, expires, stored)| (id.as_str(), *expires, stored.bytes())),
            self.key.as_ref(),
        )?;
        Ok((bytes, count))
    }

    /// Takes a snapshot and writes it to `path`, after any save in progress.
    fn save_snapshot(&self, path: &Path) -> Result<usize, SnapshotError> {
        let _saving = lock(&self.save_lock);
        self.save_snapshot_locked(path)
    }

    /// The same, with `save_lock` held by the caller.
    fn save_snapshot_locked(&self, path: &Path) -> Result<usize, SnapshotError> {
        let (bytes, count) = self.snapshot_bytes()?;
        snapshot::write_atomically(path, &bytes)?;
        Ok(count)
    }

    /// One pass of the background saver; returns whether it goes on (not after `close`).
    fn background_save(&self, path: &Path) -> bool {
        let _saving = lock(&self.save_lock);
        // Relaxed: written and read under `save_lock`.
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        if let Err(e) = self.save_snapshot_locked(path) {
            *lock(&self.snapshot_error) = Some(e);
        }
        true
    }
}

impl<Z: Serializer> Clone for MemoryStore<Z> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<Z: Serializer> fmt::Debug for MemoryStore<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("options", &self.inner.options)
            .field("cache", &self.inner.cache)
            .finish_non_exhaustive()
    }
}

impl MemoryStore<JsonSerializer> {
    /// A builder for a store of express-session-shaped JSON [`Session`](super::Session)s.
    pub fn builder() -> MemoryStoreBuilder<JsonSerializer> {
        MemoryStoreBuilder::with(JsonSerializer::new())
    }

    /// A store with memorystore's defaults: unbounded, no sweeper, lifetimes from the
    /// sessions' cookies (one day when they do not say).
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default options are valid and start no thread")
    }
}

impl Default for MemoryStore<JsonSerializer> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Z: Serializer> MemoryStore<Z> {
    /// A builder for a store that keeps sessions through `serializer`.
    pub fn with_serializer(serializer: Z) -> MemoryStoreBuilder<Z> {
        MemoryStoreBuilder::with(serializer)
    }

    /// The session `id`, if it is live (or, with [`stale`](MemoryStoreBuilder::stale),
    /// expired and not yet reclaimed: then it is returned once and removed). Lock-free: the
    /// session is decoded from the stored bytes without copying them.
    ///
    /// Not found is `Ok(None)`. Stored bytes that do not decode give one
    /// [`Error::Decode`] and the session is removed.
    pub fn get(&self, id: &str) -> Result<Option<Z::Session>, Error> {
        let inner = &*self.inner;
        loop {
            let live = inner.cache.get_with(id, |stored| {
                inner
                    .serializer
                    .decode(stored.bytes())
                    .map_err(|e| (stored.clone(), e))
            });
            let failed = match live {
                Some(Ok(session)) => return Ok(Some(session)),
                Some(Err(failed)) => (failed, false),
                None if inner.options.stale => match inner.cache.get_stale_flagged(id) {
                    None => return Ok(None),
                    Some((stored, expired)) => match inner.serializer.decode(stored.bytes()) {
                        Ok(session) => return Ok(Some(session)),
                        Err(e) => ((stored, e), expired),
                    },
                },
                None => return Ok(None),
            };
            let ((stored, source), handed_to_us_alone) = failed;
            // An expired value comes back from `get_stale` to one caller only, already
            // removed: report it. Otherwise whoever removes the bytes reports them.
            if self.discard(id, &stored) || handed_to_us_alone {
                return Err(Error::Decode {
                    id: id.to_string(),
                    source,
                });
            }
            // Another caller reported (and removed) these bytes: look again.
        }
    }

    /// Stores `session` as `id`, replacing its previous session, with the lifetime the
    /// options give (`ttl`, `ttl_fn`, else the cookie, else one day). A lifetime of zero
    /// stores nothing and removes the previous session.
    pub fn set(&self, id: &str, session: &Z::Session) -> Result<(), Error> {
        let (stored, ttl) = self.prepare(id, session)?;
        let _writer = self.writer(id);
        self.inner.cache.insert_with_ttl(Key::new(id), stored, ttl);
        Ok(())
    }

    /// Stores `session` as `id` only if `id` has no live session; returns whether it did.
    /// (tower-sessions' `create`, which must not overwrite on an id collision.)
    pub fn set_if_absent(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        let (stored, ttl) = self.prepare(id, session)?;
        let _writer = self.writer(id);
        if self.inner.cache.contains_key(id) {
            return Ok(false);
        }
        self.inner.cache.insert_with_ttl(Key::new(id), stored, ttl);
        Ok(true)
    }

    /// Stores `session` as `id` only if `id` has a live session (which it replaces); returns
    /// whether it did. (Redis's `SET XX`: an update that must not bring back a session that
    /// expired or was destroyed meanwhile.)
    pub fn set_if_present(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        let (stored, ttl) = self.prepare(id, session)?;
        let _writer = self.writer(id);
        if !self.inner.cache.contains_key(id) {
            return Ok(false);
        }
        self.inner.cache.insert_with_ttl(Key::new(id), stored, ttl);
        Ok(true)
    }

    /// Removes one session or many (`"id"`, `["a", "b"]`, `&ids_vec`); returns how many
    /// were live. The dispose hook hears [`RemovalCause::Explicit`].
    pub fn destroy(&self, ids: impl Ids) -> usize {
        let mut removed = 0;
        ids.for_each_id(&mut |id| {
            let _writer = self.writer(id);
            removed += usize::from(self.inner.cache.remove(id).is_some());
        });
        removed
    }

    /// Restarts the lifetime of the live session `id` by `session` (the lifetime the options
    /// give for it) and replaces the stored session's cookie with `session`'s, keeping the
    /// stored user data. Returns false, and stores nothing, if `id` has no live session.
    pub fn touch(&self, id: &str, session: &Z::Session) -> Result<bool, Error> {
        let inner = &*self.inner;
        let ttl = self.ttl_of(session, id);
        let _writer = self.writer(id);
        let Some(current) = inner.cache.get_with(id, Stored::clone) else {
            return Ok(false);
        };
        // The stored bytes with the new cookie: spliced in by the serializer if it can (no
        // decode of the user data), else decoded, touched and encoded again.
        // `None` when the new cookie ends the session or leaves the bytes as they are (after
        // the decode's verdict, but before any encoding error: a session that is over is
        // expired whatever its encoding).
        let made = with_scratch(|buf| {
            let encoded = match inner.serializer.touch_into(current.bytes(), session, buf) {
                Some(Ok(())) => Ok(()),
                Some(Err(source)) => return Err(source),
                None => {
                    // A `touch_into` that wrote and then declined leaves nothing behind.
                    buf.clear();
                    let mut stored = inner.serializer.decode(current.bytes())?;
                    stored.touch_from(session);
                    inner.serializer.encode_into(&stored, buf)
                }
            };
            if ttl.is_zero() {
                return Ok(Ok(None));
            }
            Ok(encoded.map_err(Error::Encode).and_then(|()| {
                if **buf == *current.bytes() {
                    return Ok(None);
                }
                self.check_weight(id, buf)?;
                Ok(Some(Stored::new(buf)))
            }))
        });
        let made = match made {
            Ok(made) => made,
            Err(source) => {
                // We hold the id's writer lock: nobody else can remove these bytes but
                // expiry, after which they are not ours to report.
                if self.discard_locked(id, &current) {
                    return Err(Error::Decode {
                        id: id.to_string(),
                        source,
                    });
                }
                return Ok(false);
            }
        };
        let Some(stored) = made? else {
            // The session is over (expire it now), or the same cookie (only the lifetime
            // moves, nothing is rewritten).
            return Ok(inner.cache.set_ttl(id, ttl));
        };
        // Release: pairs with the Acquire load in the dispose listener (see `build`).
        current.touched().store(true, Ordering::Release);
        inner.cache.insert_with_ttl(Key::new(id), stored, ttl);
        Ok(true)
    }

    /// Every live session, by id. Stored bytes that do not decode give one
    /// [`Error::Decode`] (that session is removed; the next call succeeds).
    pub fn all(&self) -> Result<HashMap<String, Z::Session>, Error> {
        let mut sessions = HashMap::new();
        for (id, stored) in self.inner.cache.iter() {
            match self.inner.serializer.decode(stored.bytes()) {
                Ok(session) => {
                    sessions.insert(id.into_string(), session);
                }
                Err(source) => {
                    if self.discard(id.as_str(), &stored) {
                        return Err(Error::Decode {
                            id: id.into_string(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(sessions)
    }

    /// The ids of the live sessions.
    pub fn ids(&self) -> Vec<String> {
        self.inner
            .cache
            .iter()
            .map(|(id, _)| id.into_string())
            .collect()
    }

    /// The number of live sessions (exact when no write is in flight).
    pub fn length(&self) -> usize {
        self.inner.cache.len()
    }

    /// Removes every session (the dispose hook hears [`RemovalCause::Cleared`]).
    pub fn clear(&self) {
        self.inner.cache.clear();
    }

    /// Removes every expired session now (the engine does so on its own as writes happen;
    /// this is memorystore's `prune`, for a moment of the caller's choosing).
    pub fn prune(&self) {
        self.inner.cache.run_pending_tasks();
    }

    /// (Re)starts the background sweeper with the [`check_period`](MemoryStoreBuilder::check_period)
    /// option. Returns false, and starts nothing, if the option is not set.
    pub fn start_interval(&self) -> Result<bool, Error> {
        match self.inner.options.check_period {
            Some(period) => {
                self.inner
                    .cache
                    .set_check_period(Some(period))
                    .map_err(Error::Sweeper)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stops the background sweeper, if it runs (expiry goes on as writes happen). A sweep
    /// under way is waited for, so no sweep disposes of a session after this returns (called
    /// from a dispose hook that the sweep runs, it returns at once: the sweep cannot wait for
    /// itself). Do not call it while holding a lock that your dispose hook takes, or from
    /// anything the sweep waits for (another store's dispose hook that this store's sweep
    /// waits on, say): the sweep would wait for it, and it for the sweep.
    pub fn stop_interval(&self) {
        // Stopping never spawns, so it cannot fail.
        let _ = self.inner.cache.set_check_period(None);
    }

    /// The options the store was built with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The engine's counters: `hits` and `misses` of `get`, `inserts`, `removals`,
    /// `evictions`, `expirations`.
    pub fn stats(&self) -> Stats {
        self.inner.cache.stats()
    }

    /// The store's wall clock: the system time when the store was built, advanced by its
    /// [`clock`](MemoryStoreBuilder::clock). Cookie dates are compared with it.
    pub fn now(&self) -> SystemTime {
        self.inner.now()
    }

    /// Saves every live session, with its absolute expiry (by [`now`](Self::now)), to `path`;
    /// returns how many. Not a memorystore method: it makes sessions survive a restart.
    ///
    /// The file's directory is checked first as [`load_snapshot`](Self::load_snapshot) checks
    /// it (a directory another user could write is refused). The file is private and written
    /// atomically: to a temporary file created exclusively
    /// (never through a symbolic link) under a random name in the same directory, mode `0600`
    /// (or the existing file's owner bits if stricter), flushed to disk, renamed over `path`,
    /// and the directory flushed, so a crash at any moment leaves the previous snapshot or
    /// this one, never a mix. The format is versioned, checksummed (CRC-32) or, with a
    /// [`snapshot_key`](MemoryStoreBuilder::snapshot_key), sealed. Sessions written while the
    /// snapshot is taken may or may not be in it (each shard of the engine is read at one
    /// moment). A snapshot longer than
    /// [`MAX_SNAPSHOT_LEN`](super::MAX_SNAPSHOT_LEN) is not written
    /// ([`SnapshotError::Oversized`]).
    pub fn save_snapshot(&self, path: impl AsRef<Path>) -> Result<usize, Error> {
        self.inner
            .save_snapshot(path.as_ref())
            .map_err(Error::Snapshot)
    }

    /// Saves the snapshot to the store's [`snapshot_file`](MemoryStoreBuilder::snapshot_file)
    /// now, and says whether it could (the number of sessions saved, or why not). Saving
    /// on drop goes on.
    pub fn save_now(&self) -> Result<usize, Error> {
        let path = self.snapshot_path()?;
        self.save_snapshot(path)
    }

    /// Ends the store's persistence, for a graceful shutdown: stops the background saver
    /// ([`snapshot_every`](MemoryStoreBuilder::snapshot_every)), waits for a save in progress
    /// to finish, saves the snapshot to the [`snapshot_file`](MemoryStoreBuilder::snapshot_file)
    /// one last time (no background save starts after it, so what `close` wrote is what stays
    /// on disk), and turns off the save on drop; returns the number of sessions saved, or why
    /// the save failed (then nothing was written: the file holds the previous snapshot). The
    /// store goes on working, but what changes after `close` is not saved unless asked for
    /// ([`save_now`](Self::save_now)). Call it once the server has stopped taking requests.
    ///
    /// Saves of one store happen one at a time (`save_snapshot`, `save_now`, the background
    /// saver, `close` and the save on drop wait for each other). Two stores (or processes)
    /// saving to the same file are not coordinated: give each its own file.
    pub fn close(&self) -> Result<usize, Error> {
        let path = self.snapshot_path()?;
        // Stops the background saver, waiting for a save it has under way (dropped once the
        // task's lock is released).
        let task = lock(&self.inner.snapshot_task).take();
        drop(task);
        let _saving = lock(&self.inner.save_lock);
        // Relaxed: read under `save_lock` (background saves) or by the drop of the last
        // handle, after every other use.
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.save_on_drop.store(false, Ordering::Relaxed);
        self.inner
            .save_snapshot_locked(path)
            .map_err(Error::Snapshot)
    }

    fn snapshot_path(&self) -> Result<&Path, Error> {
        self.inner
            .options
            .snapshot_file
            .as_deref()
            .ok_or_else(|| Error::Config("the store has no snapshot_file to save to".into()))
    }

    /// The snapshot [`save_snapshot`](Self::save_snapshot) would write, as bytes (sealed if
    /// the store has a [`snapshot_key`](MemoryStoreBuilder::snapshot_key)).
    pub fn snapshot_to_vec(&self) -> Result<Vec<u8>, Error> {
        self.inner
            .snapshot_bytes()
            .map(|(bytes, _)| bytes)
            .map_err(Error::Snapshot)
    }

    /// Loads the sessions saved in `path` that have not expired meanwhile (by
    /// [`now`](Self::now)), each with its remaining lifetime, replacing sessions with the same
    /// ids (the dispose hook hears about those as `Replaced`); returns how many were loaded.
    ///
    /// The file must be one nobody else could have written. Its directory and every directory
    /// above it must belong to this user or root and not be writable by group or others
    /// without the sticky bit ([`SnapshotError::DirectoryWritableByOthers`],
    /// [`SnapshotError::DirectoryForeignOwner`]; [`save_snapshot`](Self::save_snapshot) checks
    /// the same). The file is opened without following
    /// a symbolic link and without blocking, and refused unless it is a regular file
    /// ([`SnapshotError::NotAFile`]), not writable by group or others
    /// ([`SnapshotError::WritableByOthers`]), and owned by this process's effective user
    /// ([`SnapshotError::ForeignOwner`]). Its header (magic, version, declared length) is
    /// checked before the rest is read, and no more than the declared length is read (at
    /// most [`MAX_SNAPSHOT_LEN`](super::MAX_SNAPSHOT_LEN) and the file's size). An empty file
    /// is "no sessions yet" (0 loaded). With a
    /// [`snapshot_key`](MemoryStoreBuilder::snapshot_key), only a sealed file that opens with
    /// the key loads (see there for the rule).
    ///
    /// A refused, truncated, corrupted or future-version file, or one holding a session this
    /// store's serializer cannot decode or `max_bytes` cannot hold, gives [`Error::Snapshot`]
    /// and changes nothing: the whole file is checked before the first session is stored.
    pub fn load_snapshot(&self, path: impl AsRef<Path>) -> Result<usize, Error> {
        let bytes = snapshot::read_file(path.as_ref()).map_err(Error::Snapshot)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        self.load_snapshot_from_slice(&bytes)
    }

    /// Like [`load_snapshot`](Self::load_snapshot), from the bytes of a snapshot (which are
    /// all there is to check: an empty slice is [`SnapshotError::Truncated`]).
    pub fn load_snapshot_from_slice(&self, bytes: &[u8]) -> Result<usize, Error> {
        let inner = &*self.inner;
        let records = snapshot::decode(bytes, inner.key.as_ref()).map_err(Error::Snapshot)?;
        for record in &records {
            if let Err(source) = inner.serializer.decode(&record.bytes) {
                return Err(Error::Snapshot(SnapshotError::Decode {
                    id: record.id.clone(),
                    source,
                }));
            }
            if let Err(Error::TooLarge { size, max }) = self.check_weight(&record.id, &record.bytes)
            {
                return Err(Error::Snapshot(SnapshotError::TooLarge {
                    id: record.id.clone(),
                    size,
                    max,
                }));
            }
        }
        let now = self.now();
        let mut loaded = 0;
        for record in records {
            let ttl = match record.expires {
                None => Duration::MAX,
                Some(expires) => match expires.duration_since(now) {
                    Ok(left) if !left.is_zero() => left,
                    // Expired meanwhile.
                    _ => continue,
                },
            };
            let _writer = self.writer(&record.id);
            inner
                .cache
                .insert_with_ttl(Key::new(&record.id), Stored::new(&record.bytes), ttl);
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The error of the last background save ([`snapshot_every`](MemoryStoreBuilder::snapshot_every))
    /// that failed, if any since the last call.
    pub fn take_snapshot_error(&self) -> Option<SnapshotError> {
        lock(&self.inner.snapshot_error).take()
    }

    /// The remaining lifetime of the live session `id`.
    pub fn expires_in(&self, id: &str) -> Option<Duration> {
        self.inner.cache.ttl(id)
    }

    /// Encodes `session`, checks its weight, and works out its lifetime.
    fn prepare(&self, id: &str, session: &Z::Session) -> Result<(Stored, Duration), Error> {
        let stored = with_scratch(|buf| {
            self.inner
                .serializer
                .encode_into(session, buf)
                .map_err(Error::Encode)?;
            self.check_weight(id, buf)?;
            Ok(Stored::new(buf))
        })?;
        Ok((stored, self.ttl_of(session, id)))
    }

    fn check_weight(&self, id: &str, bytes: &[u8]) -> Result<(), Error> {
        match self.inner.max_weight {
            Some(max) if weight_of(id, bytes) > max => Err(Error::TooLarge {
                size: weight_of(id, bytes),
                max,
            }),
            _ => Ok(()),
        }
    }

    fn ttl_of(&self, session: &Z::Session, id: &str) -> Duration {
        let inner = &*self.inner;
        super::lifetime(
            inner.options.ttl,
            inner.ttl_fn.as_deref(),
            session,
            id,
            self.now(),
        )
    }

    /// The writer lock of `id`'s stripe.
    fn writer(&self, id: &str) -> MutexGuard<'_, ()> {
        let i = self.inner.stripe_hasher.hash_one(id) as usize & (STRIPES - 1);
        lock(&self.inner.stripes[i])
    }

    /// Removes `stored` (bytes that did not decode) if it is still `id`'s value; returns
    /// whether this call removed it.
    fn discard(&self, id: &str, stored: &Stored) -> bool {
        let _writer = self.writer(id);
        self.discard_locked(id, stored)
    }

    fn discard_locked(&self, id: &str, stored: &Stored) -> bool {
        let cache = &self.inner.cache;
        let current = cache.get_with(id, Stored::clone);
        current.is_some_and(|current| current.same(stored)) && cache.remove(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored session is one pointer in the engine's node, as before it became one
    /// allocation (a fat pointer to the header and slice took 16 bytes, and made the node of
    /// a session 72 bytes: across two cache lines).
    #[test]
    fn a_stored_session_is_one_pointer() {
        assert_eq!(size_of::<Stored>(), size_of::<usize>());
        // With the engine's 16 bytes of node header, an id held inline and its session fill
        // one 64-byte cache line (a fat pointer here made them 72).
        assert_eq!(size_of::<(Key, Stored)>(), 48);
        let bytes = b"{\"cookie\":{}}";
        let stored = Stored::new(bytes);
        assert_eq!(stored.bytes(), bytes);
        assert!(!stored.touched().load(Ordering::Relaxed));
        assert!(stored.same(&stored.clone()));
        assert!(!stored.same(&Stored::new(bytes)));
    }
}
