//! The on-disk format of a spool segment, and its reader. Pure: bytes in, records out, no I/O,
//! so the fuzz target and `ufsock spool inspect` run the very code that recovery runs.
//!
//! A segment is a header followed by records:
//!
//! ```text
//! header  = "UFSPOOL\0" (8) | format version u32 | base key u64 | crc32 of the 20 bytes before (4)
//! record  = RECORD_MAGIC (4) | body length u32 | crc32 of (length ++ body) (4) | body
//! body    = 1 | key u64 | message id u64 | first send unix ms u64 | rewrites u32 | flags u8
//!             | kind length u16 | kind (UTF-8) | frame (UTF-8, the rest)            an append
//!         | 2 | key u64                                                              a release
//! ```
//!
//! Integers are little-endian. The record magic starts with `0xF5`, a byte that never occurs
//! in UTF-8, so after damage the reader finds the next record by its magic and keeps every
//! record whose checksum holds.

use super::{SpoolKey, SpoolRecord};
use thiserror::Error;

/// The format version this build writes and reads. A segment with another version is not
/// read (and not touched): opening the spool fails with
/// [`SpoolError::IncompatibleVersion`](super::SpoolError::IncompatibleVersion).
pub const FORMAT_VERSION: u32 = 1;

const SEGMENT_MAGIC: [u8; 8] = *b"UFSPOOL\0";
pub(crate) const HEADER_LEN: usize = 24;
const RECORD_MAGIC: [u8; 4] = [0xF5, 0x5F, 0xC3, 0x0A];
const RECORD_HEADER_LEN: usize = 12;
/// Larger bodies are never written, so a length above it marks damage (and bounds what a
/// damaged length can make the reader look at).
pub(crate) const MAX_BODY_LEN: usize = 64 << 20;
const TYPE_APPEND: u8 = 1;
const TYPE_RELEASE: u8 = 2;
const APPEND_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 4 + 1 + 2;
const FLAG_AT_LEAST_ONCE: u8 = 1;

/// The encoded size of an append record for `record` (what counts against `max_bytes`).
pub(crate) fn append_len(record: &SpoolRecord) -> usize {
    RECORD_HEADER_LEN + APPEND_FIXED_LEN + record.kind.len() + record.frame.len()
}

/// Appends a segment header to `out`.
pub(crate) fn encode_header(out: &mut Vec<u8>, base_key: u64) {
    let start = out.len();
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&base_key.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Why a record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum EncodeError {
    #[error("message type longer than 65535 bytes")]
    KindTooLong,
    #[error("record longer than {MAX_BODY_LEN} bytes")]
    TooLarge,
}

/// Whether `record` can be encoded (its type name and size fit the format).
pub(crate) fn check_append(record: &SpoolRecord) -> Result<(), EncodeError> {
    if record.kind.len() > usize::from(u16::MAX) {
        return Err(EncodeError::KindTooLong);
    }
    if APPEND_FIXED_LEN + record.kind.len() + record.frame.len() > MAX_BODY_LEN {
        return Err(EncodeError::TooLarge);
    }
    Ok(())
}

/// Appends an append record to `out` (`record` passed [`check_append`]).
pub(crate) fn encode_append(out: &mut Vec<u8>, key: SpoolKey, record: &SpoolRecord) {
    let body_len = APPEND_FIXED_LEN + record.kind.len() + record.frame.len();
    let kind_len = record.kind.len() as u16;
    let start = begin_record(out, body_len);
    out.push(TYPE_APPEND);
    out.extend_from_slice(&key.0.to_le_bytes());
    out.extend_from_slice(&record.message_id.to_le_bytes());
    out.extend_from_slice(&record.first_sent_unix_ms.to_le_bytes());
    out.extend_from_slice(&record.rewrites.to_le_bytes());
    out.push(if record.at_least_once {
        FLAG_AT_LEAST_ONCE
    } else {
        0
    });
    out.extend_from_slice(&kind_len.to_le_bytes());
    out.extend_from_slice(record.kind.as_bytes());
    out.extend_from_slice(record.frame.as_bytes());
    finish_record(out, start);
}

/// Appends a release record (the key is confirmed, expired or dropped) to `out`.
pub(crate) fn encode_release(out: &mut Vec<u8>, key: SpoolKey) {
    let start = begin_record(out, 9);
    out.push(TYPE_RELEASE);
    out.extend_from_slice(&key.0.to_le_bytes());
    finish_record(out, start);
}

/// The encoded size of a release record.
pub(crate) const RELEASE_LEN: usize = RECORD_HEADER_LEN + 9;

fn begin_record(out: &mut Vec<u8>, body_len: usize) -> usize {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    // body_len <= MAX_BODY_LEN < u32::MAX, checked by the callers.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    start
}

fn finish_record(out: &mut [u8], start: usize) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start + 4..start + 8]);
    hasher.update(&out[start + RECORD_HEADER_LEN..]);
    let crc = hasher.finalize();
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEntry {
    /// A message was spooled under this key.
    Append(SpoolKey, SpoolRecord),
    /// The message under this key left the spool (confirmed, expired or dropped).
    Release(SpoolKey),
}

/// What the reader skipped, by reason. Every damaged stretch of bytes is counted once; the
/// records around it are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// Segment headers that were truncated or failed their checksum (the records after them
    /// are still read: each carries its own checksum).
    pub damaged_headers: u64,
    /// Incomplete records at the end of a segment: the expected trace of a crash or a power
    /// cut in the middle of a write. Such a record was never reported durable.
    pub torn_tails: u64,
    /// Stretches of bytes inside a segment that hold no valid record (a flipped byte, a
    /// zeroed or overwritten block): each lost at least one record.
    pub corrupt_regions: u64,
    /// Records whose checksum held but whose content did not decode.
    pub malformed_records: u64,
    /// Bytes skipped in torn tails, corrupt regions and malformed records.
    pub skipped_bytes: u64,
}

impl Damage {
    /// Whether nothing was skipped.
    pub fn is_clean(&self) -> bool {
        *self == Damage::default()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Damage) {
        self.damaged_headers += other.damaged_headers;
        self.torn_tails += other.torn_tails;
        self.corrupt_regions += other.corrupt_regions;
        self.malformed_records += other.malformed_records;
        self.skipped_bytes += other.skipped_bytes;
    }
}

/// A segment written by another format version (its header is intact and says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("spool segment has format version {found}, this build reads version {FORMAT_VERSION}")]
pub struct UnsupportedVersion {
    /// The version in the segment's header.
    pub found: u32,
}

/// A segment read back: its records in file order and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentScan {
    /// The first key the writer of this segment handed out (from an intact header).
    pub base_key: Option<u64>,
    /// The records whose checksum held, in file order.
    pub entries: Vec<SegmentEntry>,
    /// What was skipped.
    pub damage: Damage,
}

/// Reads a segment's bytes: every record whose checksum holds, in file order, and counts of
/// what was skipped. Never panics, whatever the bytes; the only error is an intact header
/// of another format version.
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, UnsupportedVersion> {
    let mut scan = SegmentScan::default();
    if bytes.is_empty() {
        // Created, then the process died before the header reached the disk.
        return Ok(scan);
    }
    if bytes.len() < HEADER_LEN {
        scan.damage.damaged_headers = 1;
        return Ok(scan);
    }
    let header = &bytes[..HEADER_LEN];
    let crc_ok = crc32fast::hash(&header[..20]) == le_u32(&header[20..24]);
    if crc_ok && header[..8] == SEGMENT_MAGIC {
        let version = le_u32(&header[8..12]);
        if version != FORMAT_VERSION {
            return Err(UnsupportedVersion { found: version });
        }
        scan.base_key = Some(le_u64(&header[12..20]));
    } else {
        scan.damage.damaged_headers = 1;
    }
    let mut pos = HEADER_LEN;
    while pos < bytes.len() {
        if let Some(len) = valid_record_at(bytes, pos) {
            let body = &bytes[pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + len];
            match decode_body(body) {
                Some(entry) => scan.entries.push(entry),
                None => {
                    scan.damage.malformed_records += 1;
                    scan.damage.skipped_bytes += (RECORD_HEADER_LEN + len) as u64;
                }
            }
            pos += RECORD_HEADER_LEN + len;
            continue;
        }
        let next = next_valid_record(bytes, pos + 1);
        if next == bytes.len() && is_torn_start(&bytes[pos..]) {
            scan.damage.torn_tails += 1;
        } else {
            scan.damage.corrupt_regions += 1;
        }
        scan.damage.skipped_bytes += (next - pos) as u64;
        pos = next;
    }
    Ok(scan)
}

/// The body length of the valid record at `pos`, if one starts there.
fn valid_record_at(bytes: &[u8], pos: usize) -> Option<usize> {
    let header = bytes.get(pos..pos + RECORD_HEADER_LEN)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let len = le_u32(&header[4..8]) as usize;
    if len > MAX_BODY_LEN {
        return None;
    }
    let body = bytes.get(pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + len)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..8]);
    hasher.update(body);
    (hasher.finalize() == le_u32(&header[8..12])).then_some(len)
}

/// The offset of the first valid record at or after `from`, or the end of `bytes`.
fn next_valid_record(bytes: &[u8], from: usize) -> usize {
    let mut pos = from;
    while let Some(found) = memchr::memmem::find(bytes.get(pos..).unwrap_or(&[]), &RECORD_MAGIC) {
        let at = pos + found;
        if valid_record_at(bytes, at).is_some() {
            return at;
        }
        pos = at + 1;
    }
    bytes.len()
}

/// Whether `rest` (which runs to the end of the segment) is the beginning of a record that
/// was cut short: a prefix of the magic, or a magic whose declared length runs past the end.
fn is_torn_start(rest: &[u8]) -> bool {
    if rest.len() < RECORD_MAGIC.len() {
        return RECORD_MAGIC.starts_with(rest);
    }
    if rest[..4] != RECORD_MAGIC {
        return false;
    }
    if rest.len() < RECORD_HEADER_LEN {
        return true;
    }
    let len = le_u32(&rest[4..8]) as usize;
    len <= MAX_BODY_LEN && RECORD_HEADER_LEN + len > rest.len()
}

fn decode_body(body: &[u8]) -> Option<SegmentEntry> {
    match *body.first()? {
        TYPE_APPEND if body.len() >= APPEND_FIXED_LEN => {
            let key = SpoolKey(le_u64(&body[1..9]));
            let message_id = le_u64(&body[9..17]);
            let first_sent_unix_ms = le_u64(&body[17..25]);
            let rewrites = le_u32(&body[25..29]);
            let flags = body[29];
            if flags & !FLAG_AT_LEAST_ONCE != 0 {
                return None;
            }
            let kind_len = u16::from_le_bytes([body[30], body[31]]) as usize;
            let rest = &body[APPEND_FIXED_LEN..];
            let kind = std::str::from_utf8(rest.get(..kind_len)?).ok()?;
            let frame = std::str::from_utf8(&rest[kind_len..]).ok()?;
            Some(SegmentEntry::Append(
                key,
                SpoolRecord {
                    message_id,
                    kind: kind.to_owned(),
                    frame: frame.to_owned(),
                    at_least_once: flags & FLAG_AT_LEAST_ONCE != 0,
                    first_sent_unix_ms,
                    rewrites,
                },
            ))
        }
        TYPE_RELEASE if body.len() == 9 => Some(SegmentEntry::Release(SpoolKey(le_u64(&body[1..9])))),
        _ => None,
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The encoded size of `entry`.
fn entry_len(entry: &SegmentEntry) -> usize {
    match entry {
        SegmentEntry::Append(_, record) => append_len(record),
        SegmentEntry::Release(_) => RELEASE_LEN,
    }
}

/// The reader's invariants on arbitrary bytes, asserted (panics on a violation): the body of
/// the `spool_read` fuzz target and of the seed replay test.
///
/// - [`scan_segment`] never panics;
/// - every byte is accounted for: header + records read + bytes skipped = input length;
/// - what was read re-encodes to a segment that reads back the same, with no damage;
/// - that segment cut short anywhere reads back as a prefix of its records.
pub fn check_reader(bytes: &[u8]) {
    let Ok(scan) = scan_segment(bytes) else { return };
    let header = if bytes.is_empty() {
        0
    } else {
        bytes.len().min(HEADER_LEN)
    };
    let read: usize = scan.entries.iter().map(entry_len).sum();
    assert_eq!(
        header + read + scan.damage.skipped_bytes as usize,
        bytes.len(),
        "bytes unaccounted for: {:?}",
        scan.damage
    );

    let mut clean = Vec::with_capacity(HEADER_LEN + read);
    encode_header(&mut clean, scan.base_key.unwrap_or(0));
    for entry in &scan.entries {
        match entry {
            SegmentEntry::Append(key, record) => encode_append(&mut clean, *key, record),
            SegmentEntry::Release(key) => encode_release(&mut clean, *key),
        }
    }
    let again = scan_segment(&clean).expect("re-encoded with this version");
    assert_eq!(
        again.entries, scan.entries,
        "re-encoded records read back differently"
    );
    assert!(
        again.damage.is_clean(),
        "re-encoded segment reads as damaged: {:?}",
        again.damage
    );

    let cut = HEADER_LEN + bytes.len() % (clean.len() - HEADER_LEN + 1);
    let prefix = scan_segment(&clean[..cut]).expect("re-encoded with this version");
    assert!(
        scan.entries.starts_with(&prefix.entries),
        "a cut segment read records it does not hold"
    );
    assert!(
        prefix.damage.corrupt_regions == 0 && prefix.damage.torn_tails <= 1,
        "{:?}",
        prefix.damage
    );
}
