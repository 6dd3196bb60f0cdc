//! The disk side of the spool (feature `spool`): an append-only log of checksummed records in
//! segment files, made durable in groups by a dedicated syncer thread.
//!
//! A message accepted by the client is [`Spool::append`]ed (or [`Spool::put`] under the
//! client's own id) and [`Spool::release`]d when a pong confirms it, it expires, or it is
//! dropped with a reason. [`Spool::open`] hands back, in their original order, the records
//! that an earlier process appended and never released ([`Recovery`]).
//!
//! An append is written to the OS (one `write`, no sync) before it returns, so killing the
//! process loses nothing appended, under every [`SyncPolicy`]. No caller waits for a sync:
//! the syncer thread does every `fdatasync` (at most once per interval under group commit),
//! and [`Spool::wait_durable`] awaits its progress with any runtime's timer.
//!
//! What survives what (see [`SyncPolicy`]): every appended record survives a process crash;
//! a record whose [`DurableMark`] was reported durable also survives a power cut or a kernel
//! crash, unless the policy is [`SyncPolicy::Never`]. A lost or destroyed disk loses the
//! spool.
//!
//! Space: a segment file is deleted once it and every older segment hold no live record;
//! when the dead bytes on disk outgrow the live ones, the syncer copies the live remainder
//! of the oldest segment forward and deletes it. Once the syncer caught up, the spool on disk
//! stays below `2 x live bytes + 4 x segment_bytes`; the live bytes never exceed `max_bytes`.

mod format;
mod store;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

pub use format::{
    check_reader, scan_segment, Damage, SegmentEntry, SegmentScan, UnsupportedVersion, FORMAT_VERSION,
};
pub use store::{inspect, Inspection, KindSummary};
pub use writer::{Appended, DurableMark, Spool, SpoolStats};

/// The default group-commit interval: records are made durable together at most this often.
/// 2 ms bounds the syncer to 500 `fdatasync`s a second (about 10 % of a disk whose sync takes
/// 200 µs) while a `flush` waits for at most one interval plus one sync. Longer intervals
/// bought no consistent throughput (10 and 50 ms against 2 ms, 3 rounds at concurrency 1 and
/// 64 with `ufsock bench --mode send --spool DIR --spool-sync-ms MS`: within the noise at 64,
/// about 8 % at 1), so the default keeps the power-cut window small.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(2);
/// The default bound on the spool's live bytes (256 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// The default size at which a segment file is sealed and the next one begun (8 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

/// A record's key in the spool: unique and increasing across every process that ever opened
/// the directory (a later append has a larger key), so sorting by key is append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolKey(pub u64);

/// One spooled message: what must survive the process for the message to be sent again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolRecord {
    /// The client's id of the message (not unique across processes; the key is).
    pub message_id: u64,
    /// The message type, e.g. `"use_allocation"` (for counts per type).
    pub kind: String,
    /// The encoded text frame, verbatim.
    pub frame: String,
    /// The delivery guarantee the caller asked for.
    pub at_least_once: bool,
    /// When the message was first sent (Unix milliseconds; 0 if never sent): its TTL runs
    /// from here.
    pub first_sent_unix_ms: u64,
    /// How many times it was rewritten (sent again).
    pub rewrites: u32,
}

/// When the syncer thread makes written records durable (`fdatasync`). Under every policy a
/// record is written to the OS before [`Spool::append`] returns, so it survives a process
/// crash at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Group commit: records are made durable together at most once per interval. A record
    /// survives a power cut from the moment [`Spool::wait_durable`] reports its mark (at most
    /// one interval plus one sync after the append).
    Group(Duration),
    /// The syncer syncs as soon as anything was written (concurrent appends still share one
    /// sync). With a wait on [`Spool::wait_durable`] before `send` returns, every accepted
    /// message survives a power cut; slow (one `fdatasync` per group).
    EverySend,
    /// Never `fdatasync` (except before deleting a segment): "durable" means "written to
    /// the OS". Survives a process crash (kill -9, OOM), not a power cut or a kernel crash.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Group(DEFAULT_SYNC_INTERVAL)
    }
}

/// How to open a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolOptions {
    /// The directory (created if missing); one process owns it at a time.
    pub dir: PathBuf,
    /// The bound on live record bytes (encoded size of every appended, unreleased record):
    /// an append beyond it is refused with [`SpoolError::Full`].
    pub max_bytes: u64,
    /// When records are made durable.
    pub sync: SyncPolicy,
    /// The size at which a segment file is sealed (space comes back in whole segments).
    pub segment_bytes: u64,
    /// How long [`Spool::close`] and `Drop` wait for the syncer's last write and sync.
    pub close_timeout: Duration,
    /// Whether a client's `send` writes its record to the OS before it returns (default
    /// `true`): then killing the process (kill -9, an OOM kill) loses no accepted message,
    /// under every [`SyncPolicy`]. `false` leaves the write to the syncer, once per sync
    /// interval (2 ms by default; under [`SyncPolicy::Never`] the same 2 ms): about 1.6x the
    /// throughput of spooled sends, but a kill can lose the sends of the last interval. A
    /// record's durability against a power cut is the same either way. With `true`, a send
    /// waits for its `write`: a disk that stops taking writes (a hung network filesystem,
    /// writeback throttled) holds up the sending thread until it does; with `false`, sends
    /// write no records (the send that fills a segment creates the next file), and past
    /// 8 MiB of unwritten records keeps are refused
    /// ([`SpoolError::Backlogged`]; the message is still sent from memory).
    pub write_through: bool,
}

impl SpoolOptions {
    /// Options with the defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            sync: SyncPolicy::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            close_timeout: Duration::from_secs(5),
            write_through: true,
        }
    }

    /// Sets [`SpoolOptions::max_bytes`].
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets [`SpoolOptions::sync`].
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Sets [`SpoolOptions::segment_bytes`] (at least 4 KiB is used).
    pub fn segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.segment_bytes = segment_bytes;
        self
    }

    /// Sets [`SpoolOptions::write_through`].
    pub fn write_through(mut self, write_through: bool) -> Self {
        self.write_through = write_through;
        self
    }

    /// Sets [`SpoolOptions::close_timeout`].
    pub fn close_timeout(mut self, close_timeout: Duration) -> Self {
        self.close_timeout = close_timeout;
        self
    }
}

/// A record that an earlier process appended and never released, with its key (release it
/// with [`Spool::release`] once it is confirmed, expired or dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRecord {
    /// Its key (still live in the opened spool).
    pub key: SpoolKey,
    /// The record.
    pub record: SpoolRecord,
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Live records of earlier processes, in their original (append) order.
    pub records: Vec<RecoveredRecord>,
    /// What was skipped while reading, by reason.
    pub damage: Damage,
    /// Segment files read.
    pub segments_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

/// Why a spool operation failed. `Clone + PartialEq` (an I/O error is kept as its kind and
/// message), so it can be handed to several waiters and compared in tests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Another process (or another `Spool` in this one) holds the directory's lock.
    #[error("spool {dir} is in use by another process (its lock file is held)")]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
    /// The directory (or a file in it) cannot be written: read-only, permission denied.
    #[error("spool {path} is not writable: {message}")]
    NotWritable {
        /// What could not be written.
        path: PathBuf,
        /// The OS's message.
        message: String,
    },
    /// A segment was written by an incompatible format version; nothing was read or changed.
    #[error("spool segment {path} has format version {found}; this build reads version {supported}")]
    IncompatibleVersion {
        /// The segment file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The append would take the live bytes past `max_bytes`: refused, nothing written.
    #[error("spool full: {live_bytes} live bytes + a record of {record_bytes} > max {max_bytes}")]
    Full {
        /// Live bytes now.
        live_bytes: u64,
        /// The refused record's encoded size.
        record_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// 8 MiB of records are staged and not yet written (the disk does not take writes as
    /// fast as they come, or stalled): refused, nothing staged, so memory stays bounded
    /// (counted in [`SpoolStats::refused_backlogged`]).
    #[error("spool backlogged: {staged_bytes} bytes staged and not yet written (max {max_bytes})")]
    Backlogged {
        /// Bytes staged now.
        staged_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// The record cannot be encoded (a type name over 64 KiB or a frame over 64 MiB).
    #[error("spool record too large: {0}")]
    RecordTooLarge(String),
    /// Writing or syncing failed (disk full, I/O error): the spool takes no more records.
    /// Records appended before stay in the caller's hands (they were not reported durable).
    #[error("spool write failed ({kind:?}) on {path}: {message}")]
    WriteFailed {
        /// The kind of the I/O error (`StorageFull` for a full disk).
        kind: io::ErrorKind,
        /// The file.
        path: PathBuf,
        /// The OS's message.
        message: String,
    },
    /// Another I/O error while opening or reading.
    #[error("spool I/O error ({kind:?}) while {action} {path}: {message}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kind of the I/O error.
        kind: io::ErrorKind,
        /// The OS's message.
        message: String,
    },
    /// The spool is closed (or being closed).
    #[error("spool is closed")]
    Closed,
    /// The syncer did not finish its last write and sync before the close deadline (it
    /// still finishes on its own; the files stay consistent).
    #[error("spool syncer did not stop before the close deadline")]
    CloseTimedOut,
}

impl SpoolError {
    /// An I/O error while `action` on `path`, as `NotWritable` when the OS refused a write.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, err: &io::Error) -> Self {
        let path = path.into();
        match err.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => SpoolError::NotWritable {
                path,
                message: err.to_string(),
            },
            kind => SpoolError::Io {
                action,
                path,
                kind,
                message: err.to_string(),
            },
        }
    }
}
