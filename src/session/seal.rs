//! Sealing: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) with a 32-byte
//! [`SealingKey`], for snapshots ([`snapshot_key`](super::MemoryStoreBuilder::snapshot_key))
//! and for stored values ([`Sealed`], a [`Serializer`] wrapper).
//!
//! Every sealed message carries its own random 24-byte nonce, drawn from the operating
//! system's generator (24 bytes: random nonces never collide in practice, unlike the 12 of
//! AES-GCM or ChaCha20-Poly1305), followed by the ciphertext and its 16-byte tag. What the
//! tag authenticates besides the ciphertext (the "associated data") is given by the caller: a
//! snapshot's header, a value's format tag.

use std::fmt;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::{BoxError, Serializer};

/// Bytes of the nonce that starts every sealed message.
pub(crate) const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag that ends every sealed message.
pub(crate) const TAG_LEN: usize = 16;

/// A 32-byte XChaCha20-Poly1305 key, for sealed snapshots
/// ([`snapshot_key`](super::MemoryStoreBuilder::snapshot_key)) and sealed values
/// ([`Sealed`]).
///
/// Its `Debug` never shows the key (it prints `SealingKey(..)`), it has no `Display`, and
/// its bytes are overwritten with zeros when it is dropped (`zeroize`). Keep the key out of
/// the snapshot's directory: whoever can read both can read the sessions.
#[derive(Clone)]
pub struct SealingKey(Zeroizing<[u8; 32]>);

impl SealingKey {
    /// The key made of these 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        Self(bytes)
    }

    /// The key written as 64 hexadecimal digits (for an environment variable or a secrets
    /// file; surrounding whitespace is ignored). The error says what is wrong without
    /// repeating the input.
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(KeyError::Length(hex.len()));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
                _ => return Err(KeyError::NotHex),
            }
        }
        Ok(Self(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }

    /// `nonce || ciphertext || tag` of `plain`, authenticating `aad` too.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of what [`seal`](Self::seal) wrote with this key and `aad`; an error if
    /// anything was changed, cut, or sealed with another key or other associated data.
    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: rest, aad })
            .map_err(|_| SealError)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// Why [`SealingKey::from_hex`] refused its input (which it never repeats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The input (trimmed) is this many characters long, not 64.
    Length(usize),
    /// The input has a character that is not a hexadecimal digit.
    NotHex,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Length(n) => write!(
                f,
                "a sealing key is 64 hexadecimal digits (32 bytes), not {n} characters"
            ),
            KeyError::NotHex => write!(f, "a sealing key is written in hexadecimal digits only"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Sealed bytes that do not open with the key: tampered with, cut short, or sealed with
/// another key. (Sealing itself only fails for messages longer than the cipher allows, about
/// 256 GiB.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealError;

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the sealed bytes do not open with this key (tampered with, cut, or sealed with another key)",
        )
    }
}

impl std::error::Error for SealError {}

/// What a sealed value starts with (and authenticates): the format's name and version.
const VALUE_TAG: &[u8; 4] = b"EVS1";

/// A [`Serializer`] that seals what another one writes: `Sealed::new(JsonSerializer::new(),
/// key)` stores `"EVS1" || nonce || ciphertext || tag` instead of JSON, so that whoever reads
/// the store's backend (a Redis dump, a `MONITOR`, a replica) sees no session data, and
/// bytes changed there do not decode (they give the store's one `Decode` error and are
/// removed, as for any undecodable value).
///
/// What it does not do: the serializer is not told the session id, so a sealed value is not
/// bound to its key. Someone who can write to the backend can still copy one sealed session
/// over another id, or put back an older sealed value of the same id; they cannot read or
/// forge one.
///
/// ```
/// use evanesce::session::{JsonSerializer, MemoryStore, Sealed, SealingKey, Session};
///
/// let key = SealingKey::generate();
/// let store = MemoryStore::with_serializer(Sealed::new(JsonSerializer::<Session>::new(), key))
///     .build()?;
/// let mut session = Session::new();
/// session.insert("user", "ada");
/// store.set("sid", &session)?;
/// assert_eq!(store.get("sid")?, Some(session));
/// # Ok::<(), evanesce::session::Error>(())
/// ```
#[derive(Clone)]
pub struct Sealed<Z> {
    inner: Z,
    key: SealingKey,
}

impl<Z> Sealed<Z> {
    /// `inner`'s bytes, sealed with `key`.
    pub fn new(inner: Z, key: SealingKey) -> Self {
        Self { inner, key }
    }

    /// The wrapped serializer.
    pub fn inner(&self) -> &Z {
        &self.inner
    }
}

impl<Z: fmt::Debug> fmt::Debug for Sealed<Z> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .finish()
    }
}

impl<Z: Serializer> Serializer for Sealed<Z> {
    type Session = Z::Session;

    fn encode(&self, session: &Z::Session) -> Result<Vec<u8>, BoxError> {
        let plain = Zeroizing::new(self.inner.encode(session)?);
        let sealed = self.key.seal(&plain, VALUE_TAG)?;
        let mut out = Vec::with_capacity(VALUE_TAG.len() + sealed.len());
        out.extend_from_slice(VALUE_TAG);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Z::Session, BoxError> {
        let Some(sealed) = bytes.strip_prefix(VALUE_TAG) else {
            return Err("not a sealed value (it does not start with the EVS1 tag)".into());
        };
        let plain = Zeroizing::new(self.key.open(sealed, VALUE_TAG)?);
        self.inner.decode(&plain)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn seal_opens_only_unchanged_with_the_same_key_and_aad() {
        let key = SealingKey::generate();
        let sealed = key.seal(b"hello", b"aad").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(key.open(&sealed, b"aad").unwrap(), b"hello");
        assert_eq!(key.open(&sealed, b"aaD"), Err(SealError));
        assert_eq!(SealingKey::generate().open(&sealed, b"aad"), Err(SealError));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(key.open(&bad, b"aad"), Err(SealError), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(
                key.open(&sealed[..len], b"aad"),
                Err(SealError),
                "len {len}"
            );
        }
        // A fresh nonce every time.
        assert_ne!(key.seal(b"hello", b"aad").unwrap(), sealed);
    }

    #[test]
    fn hex_keys_parse_and_never_echo() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let key = SealingKey::from_hex(&format!(" {hex}\n")).unwrap();
        assert_eq!(key.0[1], 0x11);
        assert_eq!(key.0[31], 0xff);
        assert_eq!(format!("{key:?}"), "SealingKey(..)");
        assert_eq!(
            SealingKey::from_hex("abc").unwrap_err(),
            KeyError::Length(3)
        );
        let bad = format!("{}zz", &hex[..62]);
        let err = SealingKey::from_hex(&bad).unwrap_err();
        assert_eq!(err, KeyError::NotHex);
        assert!(!err.to_string().contains("zz"));
    }
}
