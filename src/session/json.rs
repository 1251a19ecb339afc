//! A JSON writer for `serde_json::Value` trees that writes exactly what `serde_json::to_writer`
//! writes, in about a quarter fewer instructions.
//!
//! Encoding a session is most of a [`set`](super::MemoryStore::set): through serde's
//! `Serializer` an express-session session of about 300 bytes took some 4,100 instructions
//! (callgrind), 2,500 of them in `serialize_str` (each string a chain of generic calls and
//! checked writes); written here, about 3,150. A string is one scan for bytes that need
//! escaping (none, almost always) and one copy into a buffer reserved once per string.
//!
//! The output is byte for byte serde_json's (the unit tests and a proptest compare the two on
//! arbitrary values): strings escape `"`, `\`, and control characters as serde_json does
//! (`\b \t \n \f \r`, else `\u00xx` with lowercase hex digits) and nothing else; integers are
//! written by `itoa` as serde_json does, and floats are handed to serde_json itself.

use serde_json::{Number, Value};

/// `ESCAPE[b]`: what follows the backslash for byte `b` (`u` for `\u00xx`), or 0 if `b` is
/// written as it is.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `value` as serde_json would write it.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            let mut first = true;
            for item in items {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Appends the `entries` as a JSON object, in their order, as serde_json would write a map
/// that iterates so (a `Map`, or a `HashMap<String, Value>`).
pub(crate) fn write_object<'a>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'a String, &'a Value)>,
) {
    out.push(b'{');
    let mut first = true;
    for (key, value) in entries {
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    } else {
        // A float: rare in a session; serde_json's own formatting, exactly. Writing to a
        // `Vec` cannot fail, and a `Number` is always finite.
        let _ = serde_json::to_writer(&mut *out, n);
    }
}

/// The high bit of each byte of `w` (read little-endian) that must be escaped: below 0x20,
/// `"` or `\`. The "has a zero byte" and "has a byte less than n" word tests flag every such
/// byte, and may flag a byte above one of them (a borrow runs upwards) but never one below:
/// so the mask is zero exactly when no byte needs escaping, and its lowest bit marks the first
/// byte that does.
#[inline]
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGH
}

/// The index of the first byte of `bytes` that must be escaped in a JSON string (below 0x20,
/// `"` or `\`), if any: 8 bytes at a time, the last few in one more word, so no byte is
/// looked at on its own.
#[inline]
pub(crate) fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let mask = escape_mask(u64::from_le_bytes([
            w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
        ]));
        if mask != 0 {
            return Some(at + (mask.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    if tail.is_empty() {
        return None;
    }
    // The last 8 bytes, overlapping words already found plain (nothing plain is flagged
    // below the first byte to escape), or, in a string shorter than that, the tail padded
    // with a plain byte.
    let (start, word) = match bytes.split_last_chunk::<8>() {
        Some((before, last)) => (before.len(), *last),
        None => {
            let mut word = [b'a'; 8];
            for (w, &b) in word.iter_mut().zip(tail) {
                *w = b;
            }
            (at, word)
        }
    };
    let mask = escape_mask(u64::from_le_bytes(word));
    (mask != 0).then(|| start + (mask.trailing_zeros() / 8) as usize)
}

/// Appends `s` as a JSON string, escaped as serde_json escapes.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // A session's strings almost never need escaping: one scan, one reservation, one copy.
    if first_to_escape(bytes).is_none() {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        write_escaped(out, bytes);
    }
}

#[cold]
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ours(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let samples = [
            json!(null),
            json!(true),
            json!({"cookie": {"originalMaxAge": 3_600_000, "expires": "2026-11-22T10:00:00.000Z",
                   "httpOnly": true, "path": "/"}, "views": 3, "flash": [], "user": {"id": -7,
                   "ratio": 0.1, "big": 1e300, "tiny": -5e-324, "max": u64::MAX, "min": i64::MIN}}),
            json!(
                "quote \" backslash \\ slash / nul \u{0} bell \u{7} bs \u{8} tab \t nl \n ff \u{c} cr \r us \u{1f} del \u{7f} é ☃ 𝄞"
            ),
            json!([1.5, -0.0, 0.0, 123_456_789.123_456_78, [], {}, [[{}]]]),
            json!({"": "", "\u{1}": {"\"": ["\\"]}}),
        ];
        for value in &samples {
            assert_eq!(
                String::from_utf8(ours(value)).unwrap(),
                serde_json::to_string(value).unwrap()
            );
        }
    }

    /// Arbitrary JSON values (also the splice's test input).
    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from), // NaN and infinities become null
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x7f]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// The reference for [`first_to_escape`]: byte by byte, by the table.
    fn first_by_table(bytes: &[u8]) -> Option<usize> {
        bytes.iter().position(|&b| ESCAPE[usize::from(b)] != 0)
    }

    #[test]
    fn the_word_test_finds_exactly_the_bytes_to_escape() {
        for b in 0..=255u8 {
            for len in 1..=17 {
                for at in 0..len {
                    let mut bytes = b"abcdefghijklmnopq"[..len].to_vec();
                    bytes[at] = b;
                    assert_eq!(
                        first_to_escape(&bytes),
                        first_by_table(&bytes),
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // Two bytes of interest anywhere: the first to escape is found whatever the word tests
        // flag above it (a borrow from a byte below 0x20 flags a 0x20 next to it, from a
        // quote a `#`).
        let edges = [
            0x00, 0x01, 0x1f, 0x20, 0x21, b'"', b'#', b'\\', b']', 0x7f, 0x80, 0xff,
        ];
        for len in 2..=17 {
            for i in 0..len {
                for j in i + 1..len {
                    for &a in &edges {
                        for &b in &edges {
                            let mut bytes = b"abcdefghijklmnopq"[..len].to_vec();
                            bytes[i] = a;
                            bytes[j] = b;
                            assert_eq!(
                                first_to_escape(&bytes),
                                first_by_table(&bytes),
                                "{a:#x} at {i}, {b:#x} at {j}, of {len}"
                            );
                        }
                    }
                }
            }
        }
        // Bytes above 0x80 (UTF-8) around one that needs escaping, and not; two to escape in
        // one word (the first is found, whatever a borrow flags above it).
        assert_eq!(first_to_escape(b"\xff\xfe\"\xfd\xfc\xfb\xfa\xf9"), Some(2));
        assert_eq!(first_to_escape(b"\xff\xfe!\xfd\xfc\xfb\xfa\x7f"), None);
        assert_eq!(first_to_escape(b"ab\x00\x01\"\\cd"), Some(2));
        assert_eq!(first_to_escape(b""), None);
    }

    proptest! {
        #[test]
        fn the_first_byte_to_escape_is_found_in_any_bytes(
            bytes in prop::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x21, any::<u8>(), Just(b'a')],
                0..40,
            )
        ) {
            prop_assert_eq!(first_to_escape(&bytes), first_by_table(&bytes));
        }

        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in value()) {
            prop_assert_eq!(ours(&v), serde_json::to_vec(&v).unwrap());
        }
    }
}
