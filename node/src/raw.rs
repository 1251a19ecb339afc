//! Sessions as the addon stores them: what the JS `serializer` produced, opaque to Rust.
//!
//! The engine's session store ([`evanesce::session::MemoryStore`]) is generic over a
//! [`Serializer`] and its session type. The JS layer serializes sessions itself (memorystore's
//! `serializer` option runs on the JS thread) and computes their lifetime itself (memorystore's
//! `getTTL`, also JS), so the session type here is the serialized value plus the lifetime JS
//! gave it, and the serializer frames it with a small header:
//!
//! ```text
//! kind   u8        0: the serializer returned a string (UTF-8 follows), 1: bytes (a Buffer)
//! seq    u64 LE    write sequence number: ids() and all() list the latest written first
//! value  the rest  what the JS serializer returned
//! ```
//!
//! The sequence number gives `ids()` memorystore's order (its LRU lists the most recently
//! set first) without a per-session timestamp elsewhere, and lets `touch` check that the
//! session it read is still the stored one (see [`Raw::touch_from`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use evanesce::session::{BoxError, Serializer, SessionData};

/// Bytes before the value: the kind and the sequence number.
pub const HEADER: usize = 9;

/// What the JS serializer returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string, kept as UTF-8.
    Text = 0,
    /// A Buffer (or Uint8Array), kept as is.
    Bytes = 1,
}

/// One session: the serialized value, its kind, and (on the way in) its lifetime.
#[derive(Clone, Debug)]
pub struct Raw {
    pub kind: Kind,
    pub value: Vec<u8>,
    /// The write sequence number it was stored with (0 on the way in: the serializer gives it
    /// one when it encodes).
    pub seq: u64,
    /// The lifetime JS computed, for `set` and `touch` (`None` once decoded: the store reads
    /// remaining lifetimes from the engine, not from sessions).
    pub ttl: Option<Duration>,
    /// For `touch`: the sequence number of the session JS read and merged the new cookie
    /// into. The merge is taken only if the stored session is still that one.
    pub based_on: Option<u64>,
}

impl Raw {
    /// A session on its way in.
    pub fn incoming(kind: Kind, value: Vec<u8>, ttl: Duration) -> Self {
        Self {
            kind,
            value,
            seq: 0,
            ttl: Some(ttl),
            based_on: None,
        }
    }
}

impl SessionData for Raw {
    /// The lifetime JS computed (memorystore's `getTTL`): the store's own precedence rules
    /// never see a cookie here, because the `ttl` options live in JS.
    fn cookie_ttl(&self, _now: SystemTime) -> Option<Duration> {
        self.ttl
    }

    /// `touch`: JS has read the stored session, replaced its cookie and serialized it again;
    /// that value replaces the stored one only if nobody wrote the session in between
    /// (`based_on` is still the stored sequence number). If somebody did, their value stays
    /// as it is and the touch only restarts its lifetime, so a touch never undoes a write.
    fn touch_from(&mut self, newer: &Self) {
        if newer.based_on == Some(self.seq) {
            self.kind = newer.kind;
            self.value.clone_from(&newer.value);
        }
    }
}

thread_local! {
    /// Set while `ids()` lists sessions: decoding then reads the header only.
    static HEADER_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with decoding reduced to the header (the value comes back empty): for listings
/// that need only ids and sequence numbers.
pub fn header_only<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            HEADER_ONLY.with(|h| h.set(self.0));
        }
    }
    let _reset = Reset(HEADER_ONLY.with(|h| h.replace(true)));
    f()
}

/// Frames values with the header above and hands out sequence numbers.
#[derive(Debug, Default)]
pub struct RawSerializer {
    next_seq: AtomicU64,
}

/// Why stored bytes are not a session of this addon.
#[derive(Debug)]
struct Malformed(&'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

impl Serializer for RawSerializer {
    type Session = Raw;

    fn encode(&self, session: &Raw) -> Result<Vec<u8>, BoxError> {
        let mut bytes = Vec::with_capacity(HEADER + session.value.len());
        self.encode_into(session, &mut bytes)?;
        Ok(bytes)
    }

    /// Straight into the store's reused buffer (the store copies it once into the stored
    /// session), without a buffer of its own per session.
    fn encode_into(&self, session: &Raw, out: &mut Vec<u8>) -> Result<(), BoxError> {
        // Relaxed: the number only orders writes for listings; no memory is published by it.
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        out.reserve(HEADER + session.value.len());
        out.push(session.kind as u8);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&session.value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Raw, BoxError> {
        if bytes.len() < HEADER {
            return Err(Box::new(Malformed("shorter than the session header")));
        }
        let kind = match bytes[0] {
            0 => Kind::Text,
            1 => Kind::Bytes,
            _ => return Err(Box::new(Malformed("unknown session kind"))),
        };
        let mut seq = [0; 8];
        seq.copy_from_slice(&bytes[1..HEADER]);
        let seq = u64::from_le_bytes(seq);
        // Sessions loaded from a snapshot keep their order: later writes number after them.
        // Relaxed: as in `encode`.
        self.next_seq.fetch_max(seq, Ordering::Relaxed);
        let value = if HEADER_ONLY.with(Cell::get) {
            Vec::new()
        } else {
            let value = &bytes[HEADER..];
            if kind == Kind::Text && std::str::from_utf8(value).is_err() {
                return Err(Box::new(Malformed("a text session that is not UTF-8")));
            }
            value.to_vec()
        };
        Ok(Raw {
            kind,
            value,
            seq,
            ttl: None,
            based_on: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_numbers_writes_in_order() {
        let z = RawSerializer::default();
        let a = z
            .encode(&Raw::incoming(
                Kind::Text,
                b"{}".to_vec(),
                Duration::from_secs(1),
            ))
            .unwrap();
        let b = z
            .encode(&Raw::incoming(
                Kind::Bytes,
                vec![0xff, 0],
                Duration::from_secs(1),
            ))
            .unwrap();
        let (a, b) = (z.decode(&a).unwrap(), z.decode(&b).unwrap());
        assert_eq!((a.kind, a.value.as_slice()), (Kind::Text, &b"{}"[..]));
        assert_eq!((b.kind, b.value.as_slice()), (Kind::Bytes, &[0xff, 0][..]));
        assert!(b.seq > a.seq);
        let only = header_only(|| z.decode(&z.encode(&a).unwrap()).unwrap());
        assert!(only.value.is_empty() && only.seq > b.seq);
        assert_eq!(z.decode(&z.encode(&a).unwrap()).unwrap().value, b"{}");
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let z = RawSerializer::default();
        assert!(z.decode(b"").is_err());
        assert!(z.decode(&[7; 12]).is_err());
        let mut bad_text = vec![0; HEADER];
        bad_text.push(0xff);
        assert!(z.decode(&bad_text).is_err());
    }

    #[test]
    fn loaded_sequence_numbers_move_the_counter_on() {
        let z = RawSerializer::default();
        let mut old = vec![0];
        old.extend_from_slice(&1000u64.to_le_bytes());
        z.decode(&old).unwrap();
        let next = z
            .decode(
                &z.encode(&Raw::incoming(Kind::Text, vec![], Duration::MAX))
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(next.seq, 1001);
    }

    #[test]
    fn touch_merges_only_onto_the_session_it_read() {
        let mut stored = Raw {
            seq: 5,
            ..Raw::incoming(Kind::Text, b"old".to_vec(), Duration::MAX)
        };
        let mut newer = Raw::incoming(Kind::Text, b"new".to_vec(), Duration::MAX);
        newer.based_on = Some(4);
        stored.touch_from(&newer);
        assert_eq!(stored.value, b"old");
        newer.based_on = Some(5);
        stored.touch_from(&newer);
        assert_eq!(stored.value, b"new");
    }
}
