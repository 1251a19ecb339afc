//! The snapshot loader against arbitrary bytes: never a panic, never an allocation the
//! input did not pay for, and either every session is loaded or nothing changes.
//!
//! Inputs are framed in one of the ways a file can be (so that the fuzzer reaches the
//! records instead of failing on the magic bytes): raw bytes; a version-2 header with the
//! right length and a valid checksum appended (record parsing with arbitrary contents); a
//! version-1 header and checksum (the format still read); or a sealed version-2 header over
//! arbitrary bytes, loaded by a store with a key (which must refuse anything it did not seal,
//! and change nothing). Whatever loads is saved again, sealed and unsealed, and must load
//! back to the same sessions.

#![no_main]

use std::time::Duration;

use evanesce::session::{Cookie, MemoryStore, SealingKey, Session};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Framing {
    Raw,
    Version2 { with_checksum: bool, length_off_by: i8 },
    Version1 { with_checksum: bool },
    Sealed,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    framing: Framing,
    body: &'a [u8],
}

fn key() -> SealingKey {
    SealingKey::from_bytes([7; 32])
}

fn store(key: Option<SealingKey>) -> MemoryStore {
    let (clock, _mock) = quanta::Clock::mock();
    let mut builder = MemoryStore::builder().clock(clock);
    if let Some(key) = key {
        builder = builder.snapshot_key(key);
    }
    builder.build().expect("valid options")
}

fn header(flags: u32, len: u64) -> Vec<u8> {
    let mut file = b"EVSNAP\r\n".to_vec();
    file.extend_from_slice(&2u32.to_le_bytes());
    file.extend_from_slice(&flags.to_le_bytes());
    file.extend_from_slice(&len.to_le_bytes());
    file
}

fuzz_target!(|input: Input<'_>| {
    let body = input.body;
    let (file, keyed) = match input.framing {
        Framing::Raw => (body.to_vec(), false),
        Framing::Version2 {
            with_checksum,
            length_off_by,
        } => {
            let len = (body.len() as u64 + 4).wrapping_add_signed(i64::from(length_off_by));
            let mut file = header(0, len);
            file.extend_from_slice(body);
            if with_checksum {
                let crc = crc32fast::hash(&file);
                file.extend_from_slice(&crc.to_le_bytes());
            }
            (file, false)
        }
        Framing::Version1 { with_checksum } => {
            let mut file = b"EVSNAP\r\n".to_vec();
            file.extend_from_slice(&1u32.to_le_bytes());
            file.extend_from_slice(body);
            if with_checksum {
                let crc = crc32fast::hash(&file);
                file.extend_from_slice(&crc.to_le_bytes());
            }
            (file, false)
        }
        Framing::Sealed => {
            let mut file = header(1, body.len() as u64);
            file.extend_from_slice(body);
            (file, true)
        }
    };

    let store = store(keyed.then(key));
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
            // Nothing the fuzzer wrote opens with the key.
            assert!(!keyed, "a sealed snapshot nobody sealed was loaded");
            assert!(store.length() <= loaded + 1);
            // Whatever loaded decodes, and saves and loads again to the same sessions,
            // unsealed and sealed.
            let all = store.all().expect("checked at load");
            let again = self::store(None);
            again
                .load_snapshot_from_slice(&store.snapshot_to_vec().expect("saves"))
                .expect("a snapshot of a store loads");
            assert_eq!(again.all().expect("decodes"), all);
            let sealed = self::store(Some(key()));
            sealed
                .load_snapshot_from_slice(&again.snapshot_to_vec().expect("saves"))
                .expect_err("an unsealed snapshot is refused with a key");
            // A fixed lifetime, so that `set` keeps every session whatever its cookie says.
            let (clock, _mock) = quanta::Clock::mock();
            let sealing = MemoryStore::builder()
                .clock(clock)
                .ttl(Duration::from_secs(3600))
                .snapshot_key(key())
                .build()
                .expect("valid options");
            for (id, session) in &all {
                sealing.set(id, session).expect("fits");
            }
            let back = self::store(Some(key()));
            back.load_snapshot_from_slice(&sealing.snapshot_to_vec().expect("saves"))
                .expect("a sealed snapshot loads with its key");
            assert_eq!(back.all().expect("decodes"), all);
        }
    }
});
