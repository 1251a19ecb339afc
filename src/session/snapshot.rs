//! Snapshots: every live session with its absolute expiry, in one versioned, checksummed
//! file, written atomically.
//!
//! # Format (version 1; all integers little-endian)
//!
//! ```text
//! magic     8 bytes   b"EVSNAP\r\n"
//! version   u32       1
//! count     u64       number of records
//! record    count times:
//!   id_len    u32     then id_len bytes: the id (UTF-8)
//!   expires   u64     absolute expiry, milliseconds since the Unix epoch (u64::MAX: never)
//!   len       u32     then len bytes: the session as the store's serializer wrote it
//! crc32     u32       CRC-32 (IEEE) of every byte before it
//! ```
//!
//! The file is parsed and checked completely (length, checksum, UTF-8 ids, every session
//! decodable by the store's serializer, every session within `max_bytes`) before anything
//! is stored, so a bad file changes nothing.
//!
//! Writing goes to a temporary file in the same directory, which is flushed to disk
//! (`fsync`), renamed over the target, and the directory is flushed too: a crash at any
//! moment leaves either the previous snapshot or the new one, never a mix.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::BoxError;

const MAGIC: &[u8; 8] = b"EVSNAP\r\n";
/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
const NEVER_MS: u64 = u64::MAX;

/// Why a snapshot could not be saved or loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// The file does not start with the snapshot magic bytes.
    NotASnapshot,
    /// The file was written by a newer (or unknown) format version.
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file ends before its last record and checksum.
    Truncated,
    /// The checksum does not match the contents.
    Checksum,
    /// The contents are inconsistent: trailing bytes, an id that is not UTF-8, a length
    /// that does not fit.
    Malformed(&'static str),
    /// A session in the file does not decode with the store's serializer.
    Decode {
        /// The session's id.
        id: String,
        /// The serializer's error.
        source: BoxError,
    },
    /// A session in the file is larger than the store's `max_bytes`.
    TooLarge {
        /// The session's id.
        id: String,
        /// Its weight (id plus serialized bytes).
        size: u64,
        /// The store's `max_bytes`.
        max: u64,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "snapshot file: {e}"),
            SnapshotError::NotASnapshot => write!(f, "not a session snapshot"),
            SnapshotError::UnsupportedVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads {supported})"
            ),
            SnapshotError::Truncated => write!(f, "the snapshot is truncated"),
            SnapshotError::Checksum => write!(f, "the snapshot's checksum does not match"),
            SnapshotError::Malformed(why) => write!(f, "malformed snapshot: {why}"),
            SnapshotError::Decode { id, source } => {
                write!(
                    f,
                    "session {id:?} in the snapshot does not decode: {source}"
                )
            }
            SnapshotError::TooLarge { id, size, max } => write!(
                f,
                "session {id:?} in the snapshot weighs {size} bytes, more than max_bytes {max}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io(e) => Some(e),
            SnapshotError::Decode { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        SnapshotError::Io(e)
    }
}

/// One session in a snapshot.
pub(crate) struct Record {
    pub(crate) id: String,
    /// `None`: never expires.
    pub(crate) expires: Option<SystemTime>,
    pub(crate) bytes: Vec<u8>,
}

fn to_ms(t: Option<SystemTime>) -> u64 {
    match t {
        None => NEVER_MS,
        Some(t) => t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(NEVER_MS - 1))
            .min(NEVER_MS - 1),
    }
}

fn from_ms(ms: u64) -> Option<SystemTime> {
    if ms == NEVER_MS {
        return None;
    }
    // A date past what SystemTime holds is as good as never.
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Serializes `records` into the format above.
pub(crate) fn encode<'a>(
    records: impl IntoIterator<Item = (&'a str, Option<SystemTime>, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for (id, expires, bytes) in records {
        // A session longer than 4 GiB cannot be described by the format; such a session
        // cannot exist in a store (weights are u32) but is skipped rather than mis-written.
        let (Ok(id_len), Ok(len)) = (u32::try_from(id.len()), u32::try_from(bytes.len())) else {
            continue;
        };
        out.extend_from_slice(&id_len.to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&to_ms(expires).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        count += 1;
    }
    out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A cursor over the file's bytes that never reads past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parses and checks a snapshot (everything but the sessions' contents).
pub(crate) fn decode(file: &[u8]) -> Result<Vec<Record>, SnapshotError> {
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(file) {
            SnapshotError::Truncated
        } else {
            SnapshotError::NotASnapshot
        });
    }
    let mut header = Reader {
        rest: &file[MAGIC.len()..],
    };
    let version = header.u32()?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let min_len = MAGIC.len() + 4 + 8 + 4;
    if file.len() < min_len {
        return Err(SnapshotError::Truncated);
    }
    let (body, crc) = file.split_at(file.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        // A file cut short almost always lands here: its last four bytes are not the
        // checksum. Either way the contents cannot be trusted.
        return Err(SnapshotError::Checksum);
    }
    let mut r = Reader {
        rest: &body[MAGIC.len() + 4..],
    };
    let count = r.u64()?;
    // Each record takes at least 16 bytes: never reserve more than the file can hold.
    let mut records =
        Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(r.rest.len() / 16));
    for _ in 0..count {
        let id_len = r.u32()? as usize;
        let id = std::str::from_utf8(r.take(id_len)?)
            .map_err(|_| SnapshotError::Malformed("an id is not UTF-8"))?
            .to_string();
        let expires = from_ms(r.u64()?);
        let len = r.u32()? as usize;
        let bytes = r.take(len)?.to_vec();
        records.push(Record { id, expires, bytes });
    }
    if !r.rest.is_empty() {
        return Err(SnapshotError::Malformed("bytes after the last record"));
    }
    Ok(records)
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, flushed,
/// renamed over `path`, and the directory flushed.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SnapshotError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the snapshot path names no file",
        )
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is (on Unix; elsewhere opening a directory
        // fails and the rename is as durable as the platform makes it).
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(SnapshotError::Io)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        encode([
            ("a", Some(t), &b"{}"[..]),
            ("", None, &b"[1,2]"[..]),
            ("ü\u{0}id", Some(t), &b""[..]),
        ])
    }

    #[test]
    fn records_round_trip() {
        let records = decode(&sample()).unwrap();
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.id.as_str(), to_ms(r.expires), r.bytes.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 1_700_000_000_123, &b"{}"[..]),
                ("", NEVER_MS, &b"[1,2]"[..]),
                ("ü\u{0}id", 1_700_000_000_123, &b""[..]),
            ]
        );
        assert!(decode(&encode([])).unwrap().is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = sample();
        for len in 0..file.len() {
            let err = decode(&file[..len])
                .err()
                .unwrap_or_else(|| panic!("len {len}"));
            assert!(
                matches!(err, SnapshotError::Truncated | SnapshotError::Checksum),
                "len {len}: {err:?}"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_an_error() {
        let file = sample();
        for i in 0..file.len() {
            for bit in [0x01, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn a_future_version_is_named() {
        let mut file = sample();
        file[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            decode(&file),
            Err(SnapshotError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        assert!(matches!(
            decode(b"{\"not\": 1}"),
            Err(SnapshotError::NotASnapshot)
        ));
    }

    #[test]
    fn a_huge_count_does_not_allocate_it() {
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&body), Err(SnapshotError::Truncated)));
    }
}
