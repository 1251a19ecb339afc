//! Replacing one top-level field of a stored JSON object without decoding it: what a `touch`
//! does to a stored session (its cookie, or a tower-sessions record's expiry date).
//!
//! [`splice_into`] gives the bytes that parsing the object into its entries (keys decoded, values
//! kept as their raw JSON) and writing them back with the one field changed gives: that is
//! [`parsed`], the reference and the fallback. For the bytes the store itself writes (one
//! compact object, keys without escapes, the field at most once), a single pass over the bytes
//! ([`fields`]) checks that they are JSON, as the parse would, and finds the field's value;
//! the output is then the stored bytes with that one range replaced. Anything else (a key with
//! an escape, whitespace between the object's own tokens, the field twice, nesting deeper than
//! the parser allows, an escaped surrogate, bytes that are not JSON) makes the pass give up,
//! and [`parsed`] decides (a proptest checks that the two agree wherever the pass does not
//! give up). For an express-session session of about 300 bytes a splice takes under half the
//! instructions of a parse and write-back (callgrind: about 3,200, where the parse and
//! write-back took some 7,500 when last measured; most of the pass is per string and per value,
//! not per byte: a string's end is found 8 bytes at a time, [`super::json::first_to_escape`]).

use std::ops::Range;

use super::BoxError;

/// [`splice_into`] a buffer of its own (for the tests).
#[cfg(test)]
pub(crate) fn splice(
    stored: &[u8],
    field: &str,
    value: Option<&[u8]>,
) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::new();
    splice_into(stored, field, value, &mut out)?;
    Ok(out)
}

/// Appends to `out` the JSON object `stored` with its top-level `field` set to `value` (removed
/// if `None`; added at the end if it was missing), its other fields copied byte for byte, in
/// order, and no whitespace between the object's own tokens. An error if `stored` is not a
/// JSON object (`out` may then hold part of the output).
pub(crate) fn splice_into(
    stored: &[u8],
    field: &str,
    value: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    out.reserve(stored.len() + value.map_or(0, <[u8]>::len) + 16);
    match fields(stored, field) {
        Some(found) => {
            spliced(stored, field, value, &found, out);
            Ok(())
        }
        None => parsed(stored, field, value, out),
    }
}

/// What one pass over a compact object found (see [`fields`]).
#[derive(Debug, PartialEq, Eq)]
struct Found {
    /// The field's entry (from its key's opening quote to the end of its value) and the
    /// value's range, if the object has the field.
    field: Option<(Range<usize>, Range<usize>)>,
    /// The index of the object's closing brace.
    close: usize,
}

/// The output of [`splice_into`] from what [`fields`] found.
fn spliced(stored: &[u8], field: &str, value: Option<&[u8]>, found: &Found, out: &mut Vec<u8>) {
    match (&found.field, value) {
        (Some((_, at)), Some(value)) => {
            out.extend_from_slice(&stored[..at.start]);
            out.extend_from_slice(value);
            out.extend_from_slice(&stored[at.end..]);
        }
        (Some((entry, _)), None) => {
            // The entry goes with the comma that separates it from its neighbour: the one
            // before it, or after it if it is the first.
            let (from, to) = if stored[entry.start - 1] == b',' {
                (entry.start - 1, entry.end)
            } else if stored[entry.end] == b',' {
                (entry.start, entry.end + 1)
            } else {
                (entry.start, entry.end)
            };
            out.extend_from_slice(&stored[..from]);
            out.extend_from_slice(&stored[to..]);
        }
        (None, Some(value)) => {
            out.extend_from_slice(&stored[..found.close]);
            if found.close > 1 {
                out.push(b',');
            }
            super::json::write_str(out, field);
            out.push(b':');
            out.extend_from_slice(value);
            out.push(b'}');
        }
        (None, None) => out.extend_from_slice(stored),
    }
}

/// The reference: parses the object's entries (serde_json; keys decoded, values as raw JSON)
/// and writes them back with `field` replaced.
fn parsed(
    stored: &[u8],
    field: &str,
    value: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<(), BoxError> {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    /// The top-level entries of a JSON object, keys decoded, values as their raw JSON.
    struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

    impl<'de> Deserialize<'de> for Entries<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Entries<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries<'de>, A::Error> {
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                    while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                        entries.push(entry);
                    }
                    Ok(Entries(entries))
                }
            }
            d.deserialize_map(V)
        }
    }

    let Entries(entries) = serde_json::from_slice(stored)?;
    out.push(b'{');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, raw: &[u8]| -> Result<(), BoxError> {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        out.extend_from_slice(raw);
        Ok(())
    };
    let mut placed = false;
    for (key, raw) in &entries {
        if key == field {
            if let Some(value) = value
                && !placed
            {
                put(out, key, value)?;
            }
            placed = true;
        } else {
            put(out, key, raw.get().as_bytes())?;
        }
    }
    if let Some(value) = value
        && !placed
    {
        put(out, field, value)?;
    }
    out.push(b'}');
    Ok(())
}

/// Deepest nesting the pass follows (a bound on its recursion). Deeper bytes go to the
/// parser, which skips a raw value iteratively, at any depth.
const MAX_DEPTH: u32 = 100;

/// One pass over `stored`: `Some` if it is one JSON object with no whitespace between its own
/// tokens (before, after or inside nested values is fine), whose keys have no escapes, with
/// `field` at most once, nesting at most [`MAX_DEPTH`] deep and no `\u` escape of a surrogate;
/// `None` for anything else, JSON or not.
fn fields(stored: &[u8], field: &str) -> Option<Found> {
    // The parser checks that strings are UTF-8; everything outside strings is ASCII in JSON.
    std::str::from_utf8(stored).ok()?;
    let mut scan = Scan { b: stored, i: 0 };
    scan.eat(b'{')?;
    let mut found = Found {
        field: None,
        close: 0,
    };
    if scan.peek()? == b'}' {
        found.close = scan.i;
        return (scan.i + 1 == stored.len()).then_some(found);
    }
    loop {
        let key_start = scan.i;
        if scan.string()? {
            return None;
        }
        let key = &stored[key_start + 1..scan.i - 1];
        scan.eat(b':')?;
        let value_start = scan.i;
        scan.value(1)?;
        if key == field.as_bytes() {
            if found.field.is_some() {
                return None;
            }
            found.field = Some((key_start..scan.i, value_start..scan.i));
        }
        match scan.next()? {
            b',' => continue,
            b'}' => {
                found.close = scan.i - 1;
                return (scan.i == stored.len()).then_some(found);
            }
            _ => return None,
        }
    }
}

/// A cursor over the bytes (see [`fields`]).
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// One value, at nesting `depth` (the top-level object's values are at 1), with no
    /// whitespace around it.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.container(depth, b'}'),
            b'[' => self.container(depth, b']'),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// An object or an array, from its opening bracket; whitespace is allowed inside.
    fn container(&mut self, depth: u32, close: u8) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.i += 1;
        self.whitespace();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            if close == b'}' {
                self.string()?;
                self.whitespace();
                self.eat(b':')?;
                self.whitespace();
            }
            self.value(depth + 1)?;
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// A string, from its opening quote to past its closing one; returns whether it has
    /// escapes. Control characters and escapes of surrogates give up.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..)?;
            // The next quote, backslash or control character, 8 bytes at a time.
            let stop = super::json::first_to_escape(rest)?;
            self.i += stop + 1;
            match rest[stop] {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let end = self.i.checked_add(4)?;
                            let hex = std::str::from_utf8(self.b.get(self.i..end)?).ok()?;
                            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                                return None;
                            }
                            let unit = u16::from_str_radix(hex, 16).ok()?;
                            if (0xD800..=0xDFFF).contains(&unit) {
                                return None;
                            }
                            self.i = end;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::session::json::tests::value;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// The reference, into a buffer of its own.
    fn parsed(stored: &[u8], field: &str, value: Option<&[u8]>) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        super::parsed(stored, field, value, &mut out)?;
        Ok(out)
    }

    /// An express-session session, with its cookie.
    fn session() -> Value {
        json!({
            "cookie": {"originalMaxAge": 3_600_000, "expires": "2027-01-15T08:00:00.000Z",
                       "httpOnly": true, "path": "/"},
            "views": 3, "user": {"id": 7, "name": "ada", "roles": ["r", "w"]},
            "csrf": "0123456789abcdef", "flash": []
        })
    }

    const NEW: &[u8] = br#"{"originalMaxAge":7200000,"expires":"2027-01-15T09:00:00.000Z"}"#;

    #[test]
    fn the_pass_finds_the_field_in_what_the_store_writes() {
        let bytes = serde_json::to_vec(&session()).unwrap();
        let found = fields(&bytes, "cookie").expect("a compact object");
        let (entry, value) = found.field.clone().unwrap();
        assert_eq!(&bytes[entry.start..value.start], br#""cookie":"#);
        assert_eq!(entry.end, value.end);
        assert_eq!(
            bytes[value],
            serde_json::to_vec(&session()["cookie"]).unwrap()
        );
        assert_eq!(found.close, bytes.len() - 1);
        for value in [Some(NEW), None] {
            for field in ["cookie", "views", "flash", "missing"] {
                assert_eq!(
                    splice(&bytes, field, value).unwrap(),
                    parsed(&bytes, field, value).unwrap(),
                    "{field} {value:?}"
                );
            }
        }
    }

    /// Bytes the pass leaves to the parser: every one is still spliced (or refused) as the
    /// parser does it.
    #[test]
    fn the_pass_gives_up_where_a_byte_splice_could_differ_from_a_parse() {
        let cases: [&[u8]; 16] = [
            br#"{"cookie":1,"cookie":2}"#, // the field twice
            br#"{"cooki\u0065":1}"#,       // an escaped key
            br#"{ "cookie":1}"#,           // whitespace in the object itself
            br#"{"cookie":1 }"#,
            br#" {"cookie":1}"#,
            br#"{"cookie":1}  "#,
            br#"{"a":"\ud800"}"#, // an escaped surrogate
            br#"{"a":"x"#,        // cut short
            br#"{"a":01}"#,       // not JSON
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            b"{\"a\":\"\x01\"}", // a control character
            b"{\"a\":\"\xff\"}", // not UTF-8
            br#"[1,2]"#,         // not an object
            br#"{"a":tru}"#,
            br#"{}x"#,
        ];
        for bytes in cases {
            assert_eq!(
                fields(bytes, "cookie"),
                None,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            for value in [Some(NEW), None] {
                let (ours, reference) = (
                    splice(bytes, "cookie", value),
                    parsed(bytes, "cookie", value),
                );
                assert_eq!(ours.as_ref().ok(), reference.as_ref().ok());
            }
        }
        // Nesting: the pass follows 99 levels below the object; the parser skips any depth.
        let deep = |levels: usize| {
            let mut s = String::from(r#"{"a":"#);
            s.push_str(&"[".repeat(levels));
            s.push_str(&"]".repeat(levels));
            s.push('}');
            s.into_bytes()
        };
        assert!(fields(&deep(99), "cookie").is_some());
        assert!(fields(&deep(100), "cookie").is_none());
        assert_eq!(
            splice(&deep(120), "cookie", Some(NEW)).unwrap(),
            parsed(&deep(120), "cookie", Some(NEW)).unwrap()
        );
        assert_eq!(
            splice(&deep(200), "cookie", Some(NEW)).ok(),
            parsed(&deep(200), "cookie", Some(NEW)).ok()
        );
    }

    /// Removing the field takes its comma with it, wherever it is.
    #[test]
    fn a_removed_field_takes_its_comma() {
        for (bytes, out) in [
            (&br#"{"cookie":1}"#[..], &br#"{}"#[..]),
            (br#"{"cookie":1,"a":2}"#, br#"{"a":2}"#),
            (br#"{"a":2,"cookie":{"b":[3]}}"#, br#"{"a":2}"#),
            (br#"{"a":2,"cookie":1,"b":3}"#, br#"{"a":2,"b":3}"#),
        ] {
            assert!(fields(bytes, "cookie").is_some());
            assert_eq!(splice(bytes, "cookie", None).unwrap(), out);
            assert_eq!(parsed(bytes, "cookie", None).unwrap(), out);
        }
    }

    /// Stored bytes: a session's JSON (compact, or pretty one time in five), often with the
    /// field, and half the time damaged: a byte changed, removed or inserted, or cut short.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        let object = prop::collection::vec(
            (
                prop_oneof![
                    3 => "[a-z]{0,6}",
                    1 => "[a-z\"\\\\]{0,6}",
                    2 => Just("cookie".to_string())
                ],
                value(),
            ),
            0..6,
        )
        .prop_map(|fields| Value::Object(fields.into_iter().collect()));
        (
            object,
            prop::bool::weighted(0.2),
            0..8u8,
            any::<prop::sample::Index>(),
            any::<u8>(),
        )
            .prop_map(|(object, pretty, damage, at, byte)| {
                let mut bytes = if pretty {
                    serde_json::to_vec_pretty(&object).unwrap()
                } else {
                    serde_json::to_vec(&object).unwrap()
                };
                let i = at.index(bytes.len());
                match damage {
                    0 => bytes[i] = byte,
                    1 => {
                        bytes.remove(i);
                    }
                    2 => bytes.insert(i, byte),
                    3 => bytes.truncate(i),
                    _ => {}
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Wherever the pass does not give up, the splice is the parser's, byte for byte,
        /// for a replaced, added or removed field; where it gives up, the parser decides.
        #[test]
        fn the_pass_splices_as_the_parser_does(
            stored in bytes(),
            replace in any::<bool>(),
            new in value(),
        ) {
            let new = serde_json::to_vec(&new).unwrap();
            let value = replace.then_some(&new[..]);
            let reference = parsed(&stored, "cookie", value);
            if fields(&stored, "cookie").is_some() {
                prop_assert!(reference.is_ok(), "the pass accepted what the parser refuses");
            }
            let ours = splice(&stored, "cookie", value);
            prop_assert_eq!(ours.ok(), reference.ok());
        }
    }
}
