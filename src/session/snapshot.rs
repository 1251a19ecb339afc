//! Snapshots: every live session with its absolute expiry, in one versioned file, checked
//! (CRC-32) or sealed (XChaCha20-Poly1305), written atomically and privately, and loaded
//! only from a file nobody else could have planted.
//!
//! # Format (version 2; all integers little-endian)
//!
//! ```text
//! header    24 bytes, read and checked before anything else:
//!   magic     8 bytes   b"EVSNAP\r\n"
//!   version   u32       2
//!   flags     u32       bit 0: sealed; every other bit must be 0
//!   len       u64       bytes after the header (at most MAX_SNAPSHOT_LEN, and the file's size)
//! then, unsealed:
//!   payload             see below
//!   crc32     u32       CRC-32 (IEEE) of the header and the payload
//! or, sealed:
//!   nonce     24 bytes  random, from the operating system
//!   sealed    payload encrypted with XChaCha20-Poly1305, then its 16-byte tag;
//!                       the associated data is the 24-byte header
//! payload:
//!   count     u64       number of records
//!   record    count times:
//!     id_len    u32     then id_len bytes: the id (UTF-8)
//!     expires   u64     absolute expiry, milliseconds since the Unix epoch (u64::MAX: never)
//!     len       u32     then len bytes: the session as the store's serializer wrote it
//! ```
//!
//! Version 1 (the same payload after magic and version, then a CRC-32, no flags, no length)
//! is still read, unsealed only, so that a snapshot written before the upgrade loads once.
//!
//! The file is parsed and checked completely (length, checksum or tag, UTF-8 ids, every
//! session decodable by the store's serializer, every session within `max_bytes`) before
//! anything is stored, so a bad file changes nothing.
//!
//! # Trust
//!
//! - **The directory** of the snapshot, and every directory above it, is checked at build,
//!   at every load and at every save, as OpenSSH's `StrictModes` checks the directories of a
//!   key: each must belong to the effective user or to root, and must not be writable by
//!   group or others unless it has the sticky bit (as `/tmp` does: there, others can add
//!   names but cannot remove or replace ours). Otherwise another user could rename a file
//!   over the snapshot, or the directory itself, between two of our operations
//!   ([`SnapshotError::DirectoryWritableByOthers`], [`SnapshotError::DirectoryForeignOwner`]).
//!   The path is resolved first (symbolic links and all), and the resolved path is what is
//!   checked and then used, so a link on the way cannot be changed after the check.
//! - **Loading** opens the path without following a symbolic link and without blocking (a
//!   FIFO cannot stall it), then checks through the opened file: it must be a regular file,
//!   not writable by group or others, and owned by the effective user (as OpenSSH's
//!   `StrictModes` checks keys). Then the magic and the version are checked, then the
//!   declared length (against [`MAX_SNAPSHOT_LEN`] and the file's size), and only that many
//!   bytes are read. An empty file is a valid "no sessions yet".
//! - **Sealing**: with a key ([`snapshot_key`](super::MemoryStoreBuilder::snapshot_key)),
//!   snapshots are sealed, and only sealed snapshots load: an unsealed file is refused
//!   ([`SnapshotError::NotSealed`]) rather than trusted, since whoever can plant a file can
//!   plant an unsealed one. Without a key, a sealed file is refused
//!   ([`SnapshotError::KeyRequired`]). A sealed file that was changed, cut, or sealed with
//!   another key is [`SnapshotError::Unauthenticated`].
//! - **Writing** goes to a temporary file created exclusively (`O_EXCL`, so never through a
//!   symbolic link) under a random name in the target's directory, mode `0600` (or the
//!   existing file's owner bits if they are stricter), flushed to disk (`fsync`), renamed over
//!   the target (which replaces a symbolic link there rather than writing through it), and
//!   the directory is flushed too: a crash at any moment leaves either the previous snapshot
//!   or the new one, never a mix. A crash mid-save (SIGKILL, a power cut) can leave that
//!   temporary file behind (private, but as large as a snapshot and, unsealed, in clear
//!   text): every build and every save removes the temporary files of the snapshot's name
//!   (`.NAME.XXXXXX.tmp`, regular files of this user) that have not changed for
//!   [`STALE_TEMP_AGE`] (a save in progress, of this store or another process, is left
//!   alone).
//! - **No rollback protection.** A seal (or a checksum) says who wrote a snapshot, not when:
//!   an older snapshot of the same store, sealed with the same key, loads as well as the
//!   latest. Whoever can write the snapshot's directory (after the checks above: this user
//!   and root), or restores a backup, can put an older snapshot back, and the sessions it
//!   holds come back too, those that logged out since included, each until the expiry it
//!   had then. Keep the directory private to the server's user, and change the key
//!   ([`snapshot_key`](super::MemoryStoreBuilder::snapshot_key)) to make every earlier
//!   snapshot unloadable (a snapshot sealed with another key is refused, the sessions it
//!   holds are lost).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::seal::{NONCE_LEN, SealingKey, TAG_LEN};
use super::{BoxError, id_tag};

const MAGIC: &[u8; 8] = b"EVSNAP\r\n";
/// The format version this build writes (it also reads version 1).
pub const SNAPSHOT_VERSION: u32 = 2;
/// The first format, still read (unsealed only).
const VERSION_1: u32 = 1;
/// Bytes of a version-2 header: magic, version, flags, length.
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
/// Flag bit: the payload is sealed.
const SEALED: u32 = 1;
const NEVER_MS: u64 = u64::MAX;

/// The largest snapshot read or written (2 GiB past the header): a declared length above it
/// is refused before anything is read, and a store too large for it is not saved.
pub const MAX_SNAPSHOT_LEN: u64 = 2 << 30;

/// Why a snapshot could not be saved or loaded.
///
/// `Display` and `Debug` never show a session id (see [`id_tag`]).
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
        /// The version this build writes (it reads this one and version 1).
        supported: u32,
    },
    /// The file ends before its last record and checksum (or before the length its header
    /// declares).
    Truncated,
    /// The checksum does not match the contents.
    Checksum,
    /// The contents are inconsistent: trailing bytes, an id that is not UTF-8, a length
    /// that does not fit, unknown flags.
    Malformed(&'static str),
    /// A session in the file does not decode with the store's serializer.
    Decode {
        /// The session's id (shown as its [`id_tag`] by `Display` and `Debug`).
        id: String,
        /// The serializer's error.
        source: BoxError,
    },
    /// A session in the file is larger than the store's `max_bytes`.
    TooLarge {
        /// The session's id (shown as its [`id_tag`] by `Display` and `Debug`).
        id: String,
        /// Its weight (id plus serialized bytes).
        size: u64,
        /// The store's `max_bytes`.
        max: u64,
    },
    /// The snapshot (declared in a header, or about to be written) is longer than
    /// [`MAX_SNAPSHOT_LEN`]; nothing was read past the header (or written).
    Oversized {
        /// The length past the header.
        len: u64,
        /// [`MAX_SNAPSHOT_LEN`].
        max: u64,
    },
    /// The path is not a regular file (a directory, FIFO, device, socket, or a symbolic
    /// link, which loading does not follow); nothing was read from it.
    NotAFile {
        /// What it is.
        kind: &'static str,
    },
    /// The file is writable by its group or by others (`mode`, its permission bits): someone
    /// else could have written it, so it is not trusted. `chmod 600` it if it is yours.
    WritableByOthers {
        /// The file's permission bits.
        mode: u32,
    },
    /// The file belongs to another user than the one running the store (the effective uid):
    /// someone else wrote it, so it is not trusted.
    ForeignOwner {
        /// The file's owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// The file is sealed, and the store has no key
    /// ([`snapshot_key`](super::MemoryStoreBuilder::snapshot_key)) to open it.
    KeyRequired,
    /// The store has a key, and the file is not sealed: refused rather than trusted (a file
    /// anyone could have written). Load it with a store without a key, once, to move it over.
    NotSealed,
    /// The sealed file does not open with the store's key: it was changed or cut, or sealed
    /// with another key.
    Unauthenticated,
    /// A directory on the snapshot's path (its own, or one above it) is writable by group or
    /// others and has no sticky bit: another user could replace the snapshot there, or put
    /// back an older one (rename a planted file over it, or the directory itself); refused
    /// when the store is built, and at every load and save. (`chmod go-w` it; a
    /// world-writable directory with the sticky bit, such as `/tmp`, is accepted: others
    /// cannot remove or replace what is not theirs there.)
    DirectoryWritableByOthers {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory on the snapshot's path (its own, or one above it) belongs to another user
    /// than the one running the store, or root: that user could replace the snapshot or put
    /// back an older one; refused like [`DirectoryWritableByOthers`](Self::DirectoryWritableByOthers).
    DirectoryForeignOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// The snapshot's directory does not take a new file (missing, not a directory, or not
    /// writable): found by [`build`](super::MemoryStoreBuilder::build), which creates and
    /// removes a temporary file there, so that a store that could never save does not start.
    DirectoryNotWritable {
        /// The directory.
        dir: PathBuf,
        /// Why the temporary file could not be created.
        source: io::Error,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "snapshot file: {e}"),
            SnapshotError::NotASnapshot => write!(f, "not a session snapshot"),
            SnapshotError::UnsupportedVersion { found, supported } => write!(
                f,
                "snapshot format version {found} is not supported (this build reads 1 to {supported})"
            ),
            SnapshotError::Truncated => write!(f, "the snapshot is truncated"),
            SnapshotError::Checksum => write!(f, "the snapshot's checksum does not match"),
            SnapshotError::Malformed(why) => write!(f, "malformed snapshot: {why}"),
            SnapshotError::Decode { id, source } => write!(
                f,
                "session {} in the snapshot does not decode: {source}",
                id_tag(id)
            ),
            SnapshotError::TooLarge { id, size, max } => write!(
                f,
                "session {} in the snapshot weighs {size} bytes, more than max_bytes {max}",
                id_tag(id)
            ),
            SnapshotError::Oversized { len, max } => write!(
                f,
                "the snapshot is {len} bytes long, more than the {max} bytes a snapshot may have"
            ),
            SnapshotError::NotAFile { kind } => write!(
                f,
                "the snapshot path is a {kind}, not a regular file: refused"
            ),
            SnapshotError::WritableByOthers { mode } => write!(
                f,
                "the snapshot file (mode {mode:04o}) is writable by group or others: refused \
                 (chmod 600 it if you wrote it)"
            ),
            SnapshotError::ForeignOwner { owner, euid } => write!(
                f,
                "the snapshot file belongs to uid {owner}, not to this process's uid {euid}: refused"
            ),
            SnapshotError::KeyRequired => write!(
                f,
                "the snapshot is sealed and the store has no snapshot_key to open it"
            ),
            SnapshotError::NotSealed => write!(
                f,
                "the store has a snapshot_key and the snapshot is not sealed: refused"
            ),
            SnapshotError::Unauthenticated => write!(
                f,
                "the sealed snapshot does not open with the store's key (changed, cut, or sealed with another key)"
            ),
            SnapshotError::DirectoryWritableByOthers { dir, mode } => write!(
                f,
                "the snapshot directory {} (mode {mode:04o}) is writable by group or others \
                 without the sticky bit, so another user could replace the snapshot or put back \
                 an older one: refused (chmod go-w it)",
                dir.display()
            ),
            SnapshotError::DirectoryForeignOwner { dir, owner, euid } => write!(
                f,
                "the snapshot directory {} belongs to uid {owner}, neither this process's uid \
                 {euid} nor root, so that user could replace the snapshot or put back an older \
                 one: refused",
                dir.display()
            ),
            SnapshotError::DirectoryNotWritable { dir, source } => write!(
                f,
                "snapshots cannot be written in {}: {source}",
                dir.display()
            ),
        }
    }
}

impl fmt::Debug for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => f.debug_tuple("Io").field(e).finish(),
            SnapshotError::NotASnapshot => f.write_str("NotASnapshot"),
            SnapshotError::UnsupportedVersion { found, supported } => f
                .debug_struct("UnsupportedVersion")
                .field("found", found)
                .field("supported", supported)
                .finish(),
            SnapshotError::Truncated => f.write_str("Truncated"),
            SnapshotError::Checksum => f.write_str("Checksum"),
            SnapshotError::Malformed(why) => f.debug_tuple("Malformed").field(why).finish(),
            SnapshotError::Decode { id, source } => f
                .debug_struct("Decode")
                .field("id", &id_tag(id))
                .field("source", source)
                .finish(),
            SnapshotError::TooLarge { id, size, max } => f
                .debug_struct("TooLarge")
                .field("id", &id_tag(id))
                .field("size", size)
                .field("max", max)
                .finish(),
            SnapshotError::Oversized { len, max } => f
                .debug_struct("Oversized")
                .field("len", len)
                .field("max", max)
                .finish(),
            SnapshotError::NotAFile { kind } => {
                f.debug_struct("NotAFile").field("kind", kind).finish()
            }
            SnapshotError::WritableByOthers { mode } => f
                .debug_struct("WritableByOthers")
                .field("mode", &format_args!("{mode:#o}"))
                .finish(),
            SnapshotError::ForeignOwner { owner, euid } => f
                .debug_struct("ForeignOwner")
                .field("owner", owner)
                .field("euid", euid)
                .finish(),
            SnapshotError::KeyRequired => f.write_str("KeyRequired"),
            SnapshotError::NotSealed => f.write_str("NotSealed"),
            SnapshotError::Unauthenticated => f.write_str("Unauthenticated"),
            SnapshotError::DirectoryWritableByOthers { dir, mode } => f
                .debug_struct("DirectoryWritableByOthers")
                .field("dir", dir)
                .field("mode", &format_args!("{mode:#o}"))
                .finish(),
            SnapshotError::DirectoryForeignOwner { dir, owner, euid } => f
                .debug_struct("DirectoryForeignOwner")
                .field("dir", dir)
                .field("owner", owner)
                .field("euid", euid)
                .finish(),
            SnapshotError::DirectoryNotWritable { dir, source } => f
                .debug_struct("DirectoryNotWritable")
                .field("dir", dir)
                .field("source", source)
                .finish(),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SnapshotError::Io(e) | SnapshotError::DirectoryNotWritable { source: e, .. } => Some(e),
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

/// The payload: the count, then the records.
fn encode_payload<'a>(
    records: impl IntoIterator<Item = (&'a str, Option<SystemTime>, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
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
    out[..8].copy_from_slice(&count.to_le_bytes());
    out
}

fn header(flags: u32, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h
}

/// Serializes `records` into the format above, sealed with `key` if there is one.
pub(crate) fn encode<'a>(
    records: impl IntoIterator<Item = (&'a str, Option<SystemTime>, &'a [u8])>,
    key: Option<&SealingKey>,
) -> Result<Vec<u8>, SnapshotError> {
    let payload = zeroize::Zeroizing::new(encode_payload(records));
    let oversized = |len: u64| SnapshotError::Oversized {
        len,
        max: MAX_SNAPSHOT_LEN,
    };
    match key {
        None => {
            let len = payload.len() as u64 + 4;
            if len > MAX_SNAPSHOT_LEN {
                return Err(oversized(len));
            }
            let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 4);
            out.extend_from_slice(&header(0, len));
            out.extend_from_slice(&payload);
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            Ok(out)
        }
        Some(key) => {
            let len = (payload.len() + NONCE_LEN + TAG_LEN) as u64;
            if len > MAX_SNAPSHOT_LEN {
                return Err(oversized(len));
            }
            let header = header(SEALED, len);
            let sealed = key.seal(&payload, &header).map_err(|_| oversized(len))?;
            let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
            out.extend_from_slice(&header);
            out.extend_from_slice(&sealed);
            Ok(out)
        }
    }
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

/// What a header says: the version, the flags (0 for version 1), and the length of what
/// follows (for version 1, `None`: the rest of the file).
struct Header {
    version: u32,
    flags: u32,
    len: Option<u64>,
}

/// Checks the start of a snapshot: magic, version, then (version 2) flags and length. `start`
/// may be cut anywhere; what is missing is [`SnapshotError::Truncated`].
fn parse_header(start: &[u8]) -> Result<Header, SnapshotError> {
    if start.len() < MAGIC.len() || &start[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(start) {
            SnapshotError::Truncated
        } else {
            SnapshotError::NotASnapshot
        });
    }
    let mut r = Reader {
        rest: &start[MAGIC.len()..],
    };
    let version = r.u32()?;
    match version {
        VERSION_1 => Ok(Header {
            version,
            flags: 0,
            len: None,
        }),
        SNAPSHOT_VERSION => {
            let flags = r.u32()?;
            if flags & !SEALED != 0 {
                return Err(SnapshotError::Malformed("unknown flags in the header"));
            }
            let len = r.u64()?;
            if len > MAX_SNAPSHOT_LEN {
                return Err(SnapshotError::Oversized {
                    len,
                    max: MAX_SNAPSHOT_LEN,
                });
            }
            Ok(Header {
                version,
                flags,
                len: Some(len),
            })
        }
        found => Err(SnapshotError::UnsupportedVersion {
            found,
            supported: SNAPSHOT_VERSION,
        }),
    }
}

/// Parses and checks a snapshot (everything but the sessions' contents), opening it with
/// `key` if the store has one (see the module documentation for the rule).
pub(crate) fn decode(file: &[u8], key: Option<&SealingKey>) -> Result<Vec<Record>, SnapshotError> {
    let header = parse_header(file)?;
    if header.version == VERSION_1 {
        if key.is_some() {
            return Err(SnapshotError::NotSealed);
        }
        return decode_v1(file);
    }
    let len = header.len.unwrap_or(0);
    let body = &file[HEADER_LEN..];
    if (body.len() as u64) < len {
        return Err(SnapshotError::Truncated);
    }
    if body.len() as u64 > len {
        return Err(SnapshotError::Malformed("bytes after the declared length"));
    }
    let sealed = header.flags & SEALED != 0;
    match (sealed, key) {
        (true, None) => Err(SnapshotError::KeyRequired),
        (false, Some(_)) => Err(SnapshotError::NotSealed),
        (true, Some(key)) => {
            let payload = zeroize::Zeroizing::new(
                key.open(body, &file[..HEADER_LEN])
                    .map_err(|_| SnapshotError::Unauthenticated)?,
            );
            decode_payload(&payload)
        }
        (false, None) => {
            if body.len() < 4 {
                return Err(SnapshotError::Truncated);
            }
            let (checked, crc) = file.split_at(file.len() - 4);
            if crc32fast::hash(checked) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
                return Err(SnapshotError::Checksum);
            }
            decode_payload(&checked[HEADER_LEN..])
        }
    }
}

/// Version 1: magic, version, payload, CRC-32 of everything before it.
fn decode_v1(file: &[u8]) -> Result<Vec<Record>, SnapshotError> {
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
    decode_payload(&body[MAGIC.len() + 4..])
}

/// The count and the records, which must fill `payload` exactly.
fn decode_payload(payload: &[u8]) -> Result<Vec<Record>, SnapshotError> {
    let mut r = Reader { rest: payload };
    let count = r.u64()?;
    // Each record takes at least 16 bytes: never reserve more than the payload can hold.
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

/// The effective uid of this process.
#[cfg(unix)]
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// What a file type is called in [`SnapshotError::NotAFile`].
fn kind_of(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "device";
        }
    }
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for loading and checks it through the opened file: a regular file, not
/// writable by group or others, owned by the effective user. Returns it with its size.
fn open_trusted(path: &Path) -> Result<(File, u64), SnapshotError> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOFOLLOW: a symbolic link at the path fails to open (ELOOP) instead of being
        // followed; O_NONBLOCK: opening a FIFO returns at once instead of waiting for a
        // writer (regular files ignore the flag).
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) => {
            // ELOOP from O_NOFOLLOW: say what it is rather than "too many levels of links".
            #[cfg(unix)]
            if e.raw_os_error() == Some(libc::ELOOP)
                && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(SnapshotError::NotAFile {
                    kind: "symbolic link",
                });
            }
            return Err(SnapshotError::Io(e));
        }
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(SnapshotError::NotAFile {
            kind: kind_of(meta.file_type()),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(SnapshotError::WritableByOthers { mode });
        }
        let euid = euid();
        if meta.uid() != euid {
            return Err(SnapshotError::ForeignOwner {
                owner: meta.uid(),
                euid,
            });
        }
    }
    Ok((file, meta.len()))
}

/// Reads the snapshot at `path` after the checks of [`open_trusted`], reading the header
/// first and then only the length it declares. An empty file gives an empty vector.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let (dir, name) = trusted_split(path)?;
    let (file, size) = open_trusted(&dir.join(name))?;
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut file = file;
    // The header first (or as much of it as the file has).
    let mut start = Vec::with_capacity(HEADER_LEN);
    (&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut start)?;
    // A file shorter than its header is `Truncated` (or `NotASnapshot`) here.
    let header = parse_header(&start)?;
    let rest = match header.len {
        Some(len) => {
            if len > size.saturating_sub(HEADER_LEN as u64) {
                return Err(SnapshotError::Truncated);
            }
            if len < size - HEADER_LEN as u64 {
                return Err(SnapshotError::Malformed("bytes after the declared length"));
            }
            len
        }
        // Version 1 declares no length: the rest of the file, within the bound.
        None => {
            let rest = size.saturating_sub(start.len() as u64);
            if rest > MAX_SNAPSHOT_LEN {
                return Err(SnapshotError::Oversized {
                    len: rest,
                    max: MAX_SNAPSHOT_LEN,
                });
            }
            rest
        }
    };
    // `rest` is at most MAX_SNAPSHOT_LEN and the file's size: reserving it is bounded.
    let mut bytes = start;
    bytes.reserve_exact(usize::try_from(rest).unwrap_or(0));
    let read = (&mut file).take(rest).read_to_end(&mut bytes)?;
    if (read as u64) < rest {
        // The file shrank while it was read.
        return Err(SnapshotError::Truncated);
    }
    Ok(bytes)
}

/// What the directory checks found wrong with a directory.
enum Untrusted {
    /// It could not be resolved or is not a directory.
    Unusable(io::Error),
    /// It (or one above it) lets another user replace its entries.
    Refused(SnapshotError),
}

/// Resolves `dir` (symbolic links and all) and checks it and every directory above it, as
/// OpenSSH's `StrictModes` checks the directories of a key: each must belong to this
/// process's effective user or to root, and must not be writable by group or others unless
/// it has the sticky bit (then others can add names but cannot remove or replace ours).
/// Then nobody else can swap the snapshot, or any directory on the way to it, between this
/// check and its use, provided the caller uses the resolved path it returns (a symbolic link
/// on the way, which its owner could change, is not followed again).
fn trusted_dir(dir: &Path) -> Result<PathBuf, Untrusted> {
    let resolved = fs::canonicalize(dir).map_err(Untrusted::Unusable)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let euid = euid();
        let mut at = Some(resolved.as_path());
        while let Some(d) = at {
            let meta = fs::symlink_metadata(d).map_err(Untrusted::Unusable)?;
            if !meta.is_dir() {
                // The resolved path has no links: only a change under our feet (or a file
                // named as the directory) gets here.
                return Err(Untrusted::Unusable(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", d.display()),
                )));
            }
            let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
            if owner != euid && owner != 0 {
                return Err(Untrusted::Refused(SnapshotError::DirectoryForeignOwner {
                    dir: d.to_path_buf(),
                    owner,
                    euid,
                }));
            }
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(Untrusted::Refused(
                    SnapshotError::DirectoryWritableByOthers {
                        dir: d.to_path_buf(),
                        mode,
                    },
                ));
            }
            at = d.parent();
        }
    }
    Ok(resolved)
}

/// The snapshot's directory, resolved and checked ([`trusted_dir`]), and its file name. An
/// unusable directory is an [`SnapshotError::Io`].
fn trusted_split(path: &Path) -> Result<(PathBuf, &std::ffi::OsStr), SnapshotError> {
    let (dir, name) = split(path)?;
    match trusted_dir(&dir) {
        Ok(resolved) => Ok((resolved, name)),
        Err(Untrusted::Unusable(e)) => Err(SnapshotError::Io(e)),
        Err(Untrusted::Refused(e)) => Err(e),
    }
}

/// The directory `path` is in, and its file name.
fn split(path: &Path) -> Result<(PathBuf, &std::ffi::OsStr), SnapshotError> {
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
    Ok((dir, name))
}

/// Random characters in a temporary file's name.
const TEMP_RANDOM_LEN: usize = 6;

/// How long a temporary file of ours must have gone unmodified before it counts as left
/// behind by a save that never finished (the process was killed, or the machine stopped):
/// a save in progress writes its file continuously, then flushes and renames it at once.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(5 * 60);

/// A temporary file in `dir`: created exclusively, under a random name `.name.XXXXXX.tmp`
/// (six ASCII letters or digits), with permission bits `mode`.
fn temp_in(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<tempfile::NamedTempFile> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(".tmp")
        .rand_bytes(TEMP_RANDOM_LEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder.tempfile_in(dir)
}

/// Whether `entry` is named as [`temp_in`] names the temporary files of the snapshot `name`.
fn is_temp_name(entry: &std::ffi::OsStr, name: &std::ffi::OsStr) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        is_temp_bytes(entry.as_bytes(), name.as_bytes())
    }
    #[cfg(not(unix))]
    match (entry.to_str(), name.to_str()) {
        (Some(entry), Some(name)) => is_temp_bytes(entry.as_bytes(), name.as_bytes()),
        _ => false,
    }
}

fn is_temp_bytes(entry: &[u8], name: &[u8]) -> bool {
    let Some(rest) = entry
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(b".tmp"))
    else {
        return false;
    };
    rest.len() == TEMP_RANDOM_LEN && rest.iter().all(u8::is_ascii_alphanumeric)
}

/// Removes the temporary files of the snapshot `name` that a save which never finished left
/// in `dir` (a resolved and checked directory): regular files (never a link), named as
/// [`temp_in`] names them, owned by this user, unmodified for [`STALE_TEMP_AGE`] or more.
/// Best effort: what cannot be listed or removed stays. Returns how many were removed.
fn remove_stale_temps(dir: &Path, name: &std::ffi::OsStr) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !is_temp_name(&entry.file_name(), name) {
            continue;
        }
        let path = entry.path();
        // Not following a link: a link named as ours is left alone.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != euid() {
                continue;
            }
        }
        let stale = meta
            .modified()
            .ok()
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|age| age >= STALE_TEMP_AGE);
        if stale && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Checks that a snapshot can be written at `path`: checks its directory, creates a
/// temporary file there, and removes it; and removes stale temporary files of earlier saves
/// ([`remove_stale_temps`]).
pub(crate) fn probe(path: &Path) -> Result<(), SnapshotError> {
    let (dir, name) = split(path)?;
    let dir = match trusted_dir(&dir) {
        Ok(resolved) => resolved,
        Err(Untrusted::Unusable(source)) => {
            return Err(SnapshotError::DirectoryNotWritable { dir, source });
        }
        Err(Untrusted::Refused(e)) => return Err(e),
    };
    match temp_in(&dir, name, 0o600) {
        Ok(tmp) => tmp.close().map_err(SnapshotError::Io)?,
        Err(source) => return Err(SnapshotError::DirectoryNotWritable { dir, source }),
    }
    remove_stale_temps(&dir, name);
    Ok(())
}

/// Writes `contents` to `path` atomically and privately (see the module documentation).
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SnapshotError> {
    let (dir, name) = trusted_split(path)?;
    // The resolved path from here on (see `trusted_dir`).
    let path = &dir.join(name);
    // 0600, or the existing file's owner bits if they are stricter (say 0400).
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::MetadataExt;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_file() => meta.mode() & 0o600,
            _ => 0o600,
        }
    };
    #[cfg(not(unix))]
    let mode = 0o600;
    let mut tmp = temp_in(&dir, name, mode)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    // On failure the temporary file is removed when `PersistError` drops it.
    tmp.persist(path).map_err(|e| SnapshotError::Io(e.error))?;
    // The rename is durable once the directory is (on Unix; elsewhere opening a directory
    // fails and the rename is as durable as the platform makes it).
    #[cfg(unix)]
    File::open(&dir)?.sync_all()?;
    // A crash during an earlier save left its temporary file behind (as large as a
    // snapshot, and in clear text when unsealed, though private): remove such leftovers.
    remove_stale_temps(&dir, name);
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn records() -> Vec<(&'static str, Option<SystemTime>, &'static [u8])> {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        vec![
            ("a", Some(t), &b"{}"[..]),
            ("", None, &b"[1,2]"[..]),
            ("ü\u{0}id", Some(t), &b""[..]),
        ]
    }

    fn sample() -> Vec<u8> {
        encode(records(), None).unwrap()
    }

    fn summary(records: &[Record]) -> Vec<(&str, u64, &[u8])> {
        records
            .iter()
            .map(|r| (r.id.as_str(), to_ms(r.expires), r.bytes.as_slice()))
            .collect()
    }

    const EXPECTED: [(&str, u64, &[u8]); 3] = [
        ("a", 1_700_000_000_123, b"{}"),
        ("", NEVER_MS, b"[1,2]"),
        ("ü\u{0}id", 1_700_000_000_123, b""),
    ];

    #[test]
    fn records_round_trip() {
        assert_eq!(summary(&decode(&sample(), None).unwrap()), EXPECTED);
        assert!(decode(&encode([], None).unwrap(), None).unwrap().is_empty());
    }

    #[test]
    fn sealed_records_round_trip_with_the_key_only() {
        let key = SealingKey::generate();
        let sealed = encode(records(), Some(&key)).unwrap();
        assert_eq!(summary(&decode(&sealed, Some(&key)).unwrap()), EXPECTED);
        // The session bytes are not in the file.
        assert!(!sealed.windows(5).any(|w| w == b"[1,2]"));
        assert!(matches!(
            decode(&sealed, None),
            Err(SnapshotError::KeyRequired)
        ));
        assert!(matches!(
            decode(&sealed, Some(&SealingKey::generate())),
            Err(SnapshotError::Unauthenticated)
        ));
        assert!(matches!(
            decode(&sample(), Some(&key)),
            Err(SnapshotError::NotSealed)
        ));
        // Every flipped bit and every truncation is refused.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad, Some(&key)).is_err(), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert!(decode(&sealed[..len], Some(&key)).is_err(), "len {len}");
        }
        // The header is authenticated: clearing the sealed flag is not a way around the key.
        let mut unflagged = sealed.clone();
        unflagged[12] = 0;
        assert!(decode(&unflagged, None).is_err());
    }

    #[test]
    fn version_1_files_still_load_without_a_key() {
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&encode_payload(records()));
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(summary(&decode(&v1, None).unwrap()), EXPECTED);
        assert!(matches!(
            decode(&v1, Some(&SealingKey::generate())),
            Err(SnapshotError::NotSealed)
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = sample();
        for len in 0..file.len() {
            let err = decode(&file[..len], None)
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
                assert!(decode(&bad, None).is_err(), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn a_future_version_is_named() {
        let mut file = sample();
        file[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            decode(&file, None),
            Err(SnapshotError::UnsupportedVersion {
                found: 3,
                supported: 2
            })
        ));
        assert!(matches!(
            decode(b"{\"not\": 1}", None),
            Err(SnapshotError::NotASnapshot)
        ));
    }

    #[test]
    fn a_declared_length_over_the_bound_is_refused_from_the_header() {
        let mut file = header(0, MAX_SNAPSHOT_LEN + 1).to_vec();
        assert!(matches!(
            decode(&file, None),
            Err(SnapshotError::Oversized { .. })
        ));
        file[16..24].copy_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(decode(&file, None), Err(SnapshotError::Truncated)));
        file[12] = 2;
        assert!(matches!(
            decode(&file, None),
            Err(SnapshotError::Malformed(_))
        ));
    }

    #[test]
    fn a_huge_count_does_not_allocate_it() {
        let payload = u64::MAX.to_le_bytes();
        let mut body = header(0, payload.len() as u64 + 4).to_vec();
        body.extend_from_slice(&payload);
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&body, None), Err(SnapshotError::Truncated)));
    }
}
