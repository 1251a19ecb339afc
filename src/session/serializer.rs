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

    fn encode(&self, session: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(session)?)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}
