//! The snapshot loader against arbitrary bytes: never a panic, never an allocation the
//! input did not pay for, and either every session is loaded or nothing changes.
//!
//! Inputs are prefixed with a valid header half of the time (so the fuzzer reaches the
//! records instead of failing on the magic bytes), and with a valid checksum appended when
//! asked (so that record parsing is reached with arbitrary contents).

#![no_main]

use std::time::Duration;

use evanesce::session::{Cookie, MemoryStore, Session};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    with_header: bool,
    with_checksum: bool,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let mut file = Vec::new();
    if input.with_header {
        file.extend_from_slice(b"EVSNAP\r\n");
        file.extend_from_slice(&1u32.to_le_bytes());
    }
    file.extend_from_slice(input.body);
    if input.with_checksum {
        let crc = crc32fast::hash(&file);
        file.extend_from_slice(&crc.to_le_bytes());
    }

    let (clock, _mock) = quanta::Clock::mock();
    let store = MemoryStore::builder()
        .clock(clock)
        .build()
        .expect("valid options");
    let mine = Session::with_cookie(Cookie::expiring_in(Duration::from_secs(60), store.now()));
    store.set("mine", &mine).expect("no bound");
    match store.load_snapshot_from_slice(&file) {
        Err(_) => {
            assert_eq!(
                store.ids(),
                vec!["mine".to_string()],
                "a failed load changed the store"
            );
            assert_eq!(store.get("mine").expect("decodes"), Some(mine));
        }
        Ok(loaded) => {
            assert!(store.length() <= loaded + 1);
            // Whatever loaded decodes, and saves and loads again to the same sessions.
            let all = store.all().expect("checked at load");
            let (clock, _mock) = quanta::Clock::mock();
            let again = MemoryStore::builder()
                .clock(clock)
                .build()
                .expect("valid options");
            again
                .load_snapshot_from_slice(&store.snapshot_to_vec())
                .expect("a snapshot of a store loads");
            assert_eq!(again.all().expect("decodes"), all);
        }
    }
});
