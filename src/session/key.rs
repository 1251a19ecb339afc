//! The session id as the store's engine keeps it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use arrayvec::ArrayString;

/// Ids up to this many bytes are held in the entry's node.
const INLINE: usize = 32;

/// A session id as the store's engine keeps it: in the entry's node up to 32 bytes
/// (express-session's ids are 32 characters, tower-sessions' 22), on the heap beyond. An id in
/// the node costs no allocation when a session is stored, no free when it is replaced, and no
/// second cache line when a lookup compares it. It hashes, compares and borrows as the `str`
/// it holds, so the engine is asked with `&str`.
#[derive(Clone)]
pub(crate) enum Key {
    Inline(ArrayString<INLINE>),
    Heap(Box<str>),
}

impl Key {
    pub(crate) fn new(id: &str) -> Self {
        match ArrayString::from(id) {
            Ok(inline) => Key::Inline(inline),
            Err(_) => Key::Heap(id.into()),
        }
    }

    pub(crate) fn into_string(self) -> String {
        match self {
            Key::Inline(id) => id.to_string(),
            Key::Heap(id) => id.into_string(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Key::Inline(id) => id,
            Key::Heap(id) => id,
        }
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Ids of every length around the inline limit, ASCII and not, are found by their `&str`
    /// (equal hashes, equal keys) and come back as they went in.
    #[test]
    fn a_key_is_its_str_inline_or_not() {
        let ids: Vec<String> = (0..=40)
            .map(|n| "s".repeat(n))
            .chain([
                "é".repeat(16),
                "é".repeat(17),
                "aé".repeat(11),
                "☃".repeat(11),
            ])
            .collect();
        let hasher = ahash::RandomState::new();
        let mut map = HashMap::new();
        for id in &ids {
            let key = Key::new(id);
            assert_eq!(key.as_str(), id);
            assert_eq!(matches!(key, Key::Inline(_)), id.len() <= INLINE, "{id}");
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(id.as_str()));
            assert_eq!(format!("{key:?}"), format!("{id:?}"));
            map.insert(key, id.len());
        }
        for id in &ids {
            assert_eq!(map.get(id.as_str()), Some(&id.len()));
            assert_eq!(map.get(&Key::new(id)), Some(&id.len()));
        }
        assert_eq!(map.get("t"), None);
        // A node holds the key and the stored value's pointer in 48 bytes.
        assert!(std::mem::size_of::<Key>() <= 40);
    }
}
