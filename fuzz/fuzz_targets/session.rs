//! The session store against arbitrary bytes.
//!
//! 1. Stored bytes it cannot read back (a serializer that changed, bytes from elsewhere):
//!    a serializer that "encodes" every session as the fuzzer's bytes puts them in the store;
//!    `get` must then give exactly what serde_json makes of them: the session, or one
//!    `Decode` error after which the session is gone. Never a panic, never a second report.
//! 2. Arbitrary session JSON (cookies with any `maxAge`, any `expires` string, any types):
//!    a session that parses is stored by the default store; whatever lifetime its cookie
//!    gives, `get` returns it unchanged exactly while `expires_in` says it lives, and
//!    `touch`, `all`, `ids` and `length` agree with each other, at any mock time.
//! 3. The default serializer's `touch` (a one-pass splice of the stored bytes, or a parse) on
//!    arbitrary stored bytes: never a panic; where the bytes decode, the spliced bytes decode
//!    to what decoding, `touch_from` and nothing else give.

#![no_main]

use std::time::Duration;

use evanesce::session::{
    BoxError, Error, JsonSerializer, MemoryStore, Serializer, Session, SessionData,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: &'a str,
    bytes: &'a [u8],
    /// Mock time passed before the second look, in ms.
    advance_ms: u32,
    /// A cookie built from parts, so that odd lifetimes are reached without valid JSON.
    max_age: Option<f64>,
    max_age_int: Option<i64>,
    expires: Option<&'a str>,
}

/// Encodes any session as the same fixed bytes; decodes with serde_json.
struct Replay(Vec<u8>);

impl Serializer for Replay {
    type Session = Session;

    fn encode(&self, _: &Session) -> Result<Vec<u8>, BoxError> {
        Ok(self.0.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Session, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

fuzz_target!(|input: Input<'_>| {
    let parsed: Option<Session> = serde_json::from_slice(input.bytes).ok();

    // 1. Whatever bytes are stored, one answer, then consistency.
    let (clock, _mock) = quanta::Clock::mock();
    let store = MemoryStore::with_serializer(Replay(input.bytes.to_vec()))
        .clock(clock)
        .build()
        .expect("valid options");
    // No cookie in the session handed to `set`: the default lifetime of one day.
    store
        .set(input.id, &Session::new())
        .expect("no bound, no error");
    match (store.get(input.id), &parsed) {
        (Ok(Some(got)), Some(want)) => {
            assert_eq!(&got, want);
            assert_eq!(store.length(), 1);
        }
        (Err(Error::Decode { id, .. }), None) => {
            assert_eq!(id, input.id);
            assert!(matches!(store.get(input.id), Ok(None)), "reported twice");
            assert_eq!(store.length(), 0);
        }
        (got, want) => panic!("got {got:?} for bytes that parse to {want:?}"),
    }

    // 2. A session that parses, with whatever cookie it carries; and one whose cookie is
    // built from the fuzzer's parts.
    if let Some(session) = parsed {
        lifetimes_agree(input.id, &session, input.advance_ms);
    }
    let mut cookie = serde_json::Map::new();
    if let Some(ms) = input.max_age {
        // NaN and infinities are not JSON numbers: serde_json makes them null.
        cookie.insert("maxAge".into(), serde_json::json!(ms));
    }
    if let Some(ms) = input.max_age_int {
        cookie.insert("originalMaxAge".into(), serde_json::json!(ms));
        cookie.entry("maxAge").or_insert(serde_json::json!(ms));
    }
    if let Some(expires) = input.expires {
        cookie.insert("expires".into(), serde_json::json!(expires));
    }
    let session: Session = serde_json::from_value(serde_json::json!({"cookie": cookie, "n": 1}))
        .expect("an object is a session");
    lifetimes_agree(input.id, &session, input.advance_ms);

    // 3. A touch of the stored bytes, with that cookie and with none (which removes it).
    let z = JsonSerializer::<Session>::new();
    for newer in [&session, &Session::new()] {
        let spliced = z
            .touch(input.bytes, newer)
            .expect("sessions name their cookie");
        if let (Ok(mut slow), Ok(spliced)) = (z.decode(input.bytes), spliced) {
            slow.touch_from(newer);
            assert_eq!(
                z.decode(&spliced).expect("a splice of a session decodes"),
                slow
            );
        }
    }
});

fn lifetimes_agree(id: &str, session: &Session, advance_ms: u32) {
    let (clock, mock) = quanta::Clock::mock();
    let store = MemoryStore::builder()
        .clock(clock)
        .build()
        .expect("valid options");
    store.set(id, session).expect("no bound, no error");
    for round in 0..2 {
        let lives = store.expires_in(id).is_some();
        let got = store.get(id).expect("stored by this serializer");
        assert_eq!(got.is_some(), lives, "round {round}");
        if let Some(got) = got {
            assert_eq!(&got, session);
        }
        let all = store.all().expect("stored by this serializer");
        assert_eq!(all.len(), store.length());
        assert_eq!(store.ids().len(), store.length());
        assert_eq!(all.contains_key(id), lives);
        mock.increment(Duration::from_millis(u64::from(advance_ms)));
        // Touch never brings back a session that is gone.
        let touched = store.touch(id, session).expect("no bound, no error");
        if !lives {
            assert!(!touched);
            assert!(matches!(store.get(id), Ok(None)));
        }
    }
}
