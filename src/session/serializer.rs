//! How sessions become bytes: the [`Serializer`] trait and the default [`JsonSerializer`].

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{BoxError, Session, SessionData};

/// Turns sessions into the bytes the store keeps, and back (memorystore's `serializer`
/// option, `{stringify, parse}`).
///
/// The store only ever decodes bytes its serializer encoded, so `decode(encode(s))` should
/// give `s` back; a `decode` that fails anyway (a serializer changed between versions,
/// bytes loaded from elsewhere) is reported once as [`Error::Decode`](super::Error::Decode)
/// and the session is removed.
pub trait Serializer: Send + Sync + 'static {
    /// The session type stored.
    type Session: SessionData + Send + 'static;

    /// Encodes a session.
    fn encode(&self, session: &Self::Session) -> Result<Vec<u8>, BoxError>;

    /// Decodes what [`encode`](Self::encode) produced.
    fn decode(&self, bytes: &[u8]) -> Result<Self::Session, BoxError>;

    /// `stored` (bytes this serializer encoded) with [`touch_from`](SessionData::touch_from)
    /// of `newer` applied, without decoding them, if the serializer knows how; an error if
    /// `stored` is not something it encoded. The default, `None`, makes
    /// [`touch`](super::MemoryStore::touch) decode, call `touch_from` and encode.
    fn touch(&self, stored: &[u8], newer: &Self::Session) -> Option<Result<Vec<u8>, BoxError>> {
        let _ = (stored, newer);
        None
    }

    /// [`encode`](Self::encode), appended to `out`. The store calls this one, with a buffer it
    /// reuses from one session to the next, and copies the bytes from there into the stored
    /// session: a serializer that writes straight into `out` saves the allocation of its own
    /// buffer. The default appends what `encode` returns (so an `encode` written in terms of
    /// `encode_into` must override this one too, or the two call each other). On an error the
    /// store discards whatever was appended.
    fn encode_into(&self, session: &Self::Session, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(&self.encode(session)?);
        Ok(())
    }

    /// [`touch`](Self::touch), appended to `out` (as [`encode_into`](Self::encode_into)); the
    /// default appends what `touch` returns. `None` (this serializer cannot splice) should
    /// leave `out` as it was; the store clears it before it decodes and encodes instead.
    fn touch_into(
        &self,
        stored: &[u8],
        newer: &Self::Session,
        out: &mut Vec<u8>,
    ) -> Option<Result<(), BoxError>> {
        Some(
            self.touch(stored, newer)?
                .map(|bytes| out.extend_from_slice(&bytes)),
        )
    }
}

/// JSON with serde_json: the default, for the express-session-shaped [`Session`] or any
/// serde type that implements [`SessionData`].
pub struct JsonSerializer<T = Session>(PhantomData<fn() -> T>);

impl<T> JsonSerializer<T> {
    /// The serializer for `T`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for JsonSerializer<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for JsonSerializer<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for JsonSerializer<T> {}

impl<T> fmt::Debug for JsonSerializer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonSerializer<{}>", std::any::type_name::<T>())
    }
}

impl<T> Serializer for JsonSerializer<T>
where
    T: Serialize + DeserializeOwned + SessionData + Send + 'static,
{
    type Session = T;

    /// The store itself calls [`encode_into`](Serializer::encode_into), into a buffer it
    /// reuses; this is for everyone else (the sealing serializer, the Redis store).
    fn encode(&self, session: &T) -> Result<Vec<u8>, BoxError> {
        // Sized for a typical session at once (serde_json's own `to_vec` starts at 128 bytes
        // and grows, a reallocation or three per session).
        let mut out = Vec::with_capacity(512);
        self.encode_into(session, &mut out)?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// With a session type that names its touched field ([`SessionData::touch_json`]): the
    /// stored object's top-level fields are copied as they are (their JSON is checked, never
    /// decoded into values), with that one field replaced (or removed, or added at the end).
    /// A `touch` then costs a scan of the stored bytes instead of a decode and an encode of
    /// the whole session (about a fifth of the instructions for an express-session session).
    fn touch(&self, stored: &[u8], newer: &T) -> Option<Result<Vec<u8>, BoxError>> {
        let mut out = Vec::new();
        Some(self.touch_into(stored, newer, &mut out)?.map(|()| out))
    }

    fn encode_into(&self, session: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let start = out.len();
        if session.write_json(out) {
            return Ok(());
        }
        out.truncate(start);
        serde_json::to_writer(&mut *out, session)?;
        Ok(())
    }

    fn touch_into(
        &self,
        stored: &[u8],
        newer: &T,
        out: &mut Vec<u8>,
    ) -> Option<Result<(), BoxError>> {
        let (field, value) = newer.touch_json()?;
        Some(super::splice::splice_into(
            stored,
            field,
            value.as_deref(),
            out,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::session::Cookie;

    /// What `touch` produces the slow way: decode, `touch_from`, encode.
    fn slow<T>(stored: &[u8], newer: &T) -> T
    where
        T: Serialize + DeserializeOwned + SessionData + Send + 'static,
    {
        let z = JsonSerializer::<T>::new();
        let mut session = z.decode(stored).unwrap();
        session.touch_from(newer);
        session
    }

    fn fast<T>(stored: &[u8], newer: &T) -> T
    where
        T: Serialize + DeserializeOwned + SessionData + Send + 'static,
    {
        let z = JsonSerializer::<T>::new();
        let spliced = z.touch(stored, newer).expect("a touched field").unwrap();
        z.decode(&spliced).unwrap()
    }

    fn session(value: serde_json::Value) -> Session {
        serde_json::from_value(value).unwrap()
    }

    /// The splice gives what decode, `touch_from` and encode give, whatever the fields around
    /// the cookie (nested data, escaped keys and strings, numbers that must keep every bit),
    /// with a cookie replaced, removed, or added where the stored session had none.
    #[test]
    fn a_spliced_touch_equals_a_decoded_one() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let new_cookie = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(7200), now));
        let no_cookie = Session::new();
        let stored_sessions = [
            json!({"cookie": {"originalMaxAge": 3600000, "expires": "2027-01-15T08:00:00.000Z"}, "views": 3}),
            json!({"a\"b\\c": "x\ny", "cookie": {"path": "/"}, "user": {"id": 7, "roles": ["r", "w"]}, "n": 0.1}),
            json!({"views": 1, "flash": [], "nested": {"cookie": "not the top-level one"}}),
            json!({}),
            json!({"cookie": null, "big": 12345678901234567890u64, "f": 1.0000000000000002}),
        ];
        for stored in &stored_sessions {
            let bytes = serde_json::to_vec(&session(stored.clone())).unwrap();
            for newer in [&new_cookie, &no_cookie] {
                assert_eq!(fast(&bytes, newer), slow(&bytes, newer), "{stored}");
            }
            // Bytes written by another encoder (whitespace, another key order) splice too.
            let pretty = serde_json::to_vec_pretty(stored).unwrap();
            assert_eq!(
                fast(&pretty, &new_cookie),
                slow(&pretty, &new_cookie),
                "{stored}"
            );
        }
    }

    /// A touch that changes nothing gives the stored bytes back, byte for byte (the store then
    /// only moves the lifetime, rewriting nothing).
    #[test]
    fn an_unchanged_cookie_splices_to_the_same_bytes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(3600), now));
        s.insert("views", 9);
        s.insert("user", json!({"name": "ada"}));
        let z = JsonSerializer::<Session>::new();
        let bytes = z.encode(&s).unwrap();
        assert_eq!(z.touch(&bytes, &s).unwrap().unwrap(), bytes);
    }

    /// Bytes that are not a JSON object are an error, as a decode would be.
    #[test]
    fn a_corrupt_stored_value_is_an_error() {
        let z = JsonSerializer::<Session>::new();
        let newer = Session::new();
        for bad in [&b"[1,2]"[..], b"{\"a\":", b"not json", b"{\"a\":1}trailing"] {
            assert!(z.touch(bad, &newer).unwrap().is_err(), "{bad:?}");
        }
    }
}
