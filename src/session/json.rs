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

/// Whether any of the 8 bytes of `w` must be escaped: below 0x20, `"` or `\`. (Exact: the
/// "has a byte less than n" and "has a zero byte" word tests are exact about whether there is
/// one, which is all this asks.)
#[inline]
pub(crate) fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGH != 0
}

/// Whether `bytes` can be written as they are (nothing to escape): 8 bytes at a time, then
/// the last few by the table.
#[inline]
fn is_plain(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        if word_needs_escape(word) {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| ESCAPE[usize::from(b)] == 0)
}

/// Appends `s` as a JSON string, escaped as serde_json escapes.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // A session's strings almost never need escaping: one scan, one reservation, one copy.
    if is_plain(bytes) {
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

    #[test]
    fn the_word_test_finds_exactly_the_bytes_to_escape() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    ESCAPE[usize::from(b)] != 0,
                    "byte {b:#x} at {at}"
                );
            }
        }
        // Bytes above 0x80 (UTF-8) around one that needs escaping, and not.
        assert!(word_needs_escape(u64::from_le_bytes(
            *b"\xff\xfe\"\xfd\xfc\xfb\xfa\xf9"
        )));
        assert!(!word_needs_escape(u64::from_le_bytes(
            *b"\xff\xfe!\xfd\xfc\xfb\xfa\x7f"
        )));
    }

    proptest! {
        #[test]
        fn any_value_is_written_as_serde_json_writes_it(v in value()) {
            prop_assert_eq!(ours(&v), serde_json::to_vec(&v).unwrap());
        }
    }
}
