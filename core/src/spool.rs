//! The spool's sans-IO side: what the pool asks the client to keep on disk and to release,
//! and what a new process hands back to the pool when it opens a spool an earlier one wrote.
//!
//! With the spool open ([`Pool::open_spool`](crate::Pool::open_spool)), every message that
//! `send` accepts comes out as [`Output::Keep`](crate::Output::Keep) before anything else
//! about it, and every message that ends in this process — confirmed by a pong, expired,
//! unconfirmed with a reason the caller chose (at most once), written with confirmation off —
//! comes out as [`Output::Release`](crate::Output::Release). What a close could not deliver
//! is neither released nor handed back: it stays in the spool ([`MessageFate::Spooled`]) and
//! the next process replays it. A crash (nothing runs after the last output carried out)
//! leaves exactly the records kept and not released, which is the same thing.
//!
//! Ids are the pool's [`MessageId`]s. A restored record keeps its id, and the new pool gives
//! new messages ids above every restored one, so a store keyed by id, where the latest keep
//! or release of an id wins, stays consistent across any number of processes.

use std::time::Duration;

#[cfg(doc)]
use crate::delivery::MessageFate;
use crate::delivery::{Delivery, MessageId};

/// A message the spool keeps: everything a later process needs to send it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Its id: the key of the record (see the module docs).
    pub id: MessageId,
    /// Its message type (the counters' name for it).
    pub kind: String,
    /// Its encoded frame, as written.
    pub frame: String,
    /// The guarantee it was sent with (a replayed record is sent at least once whatever it
    /// was: whether it reached the server before the crash is unknown).
    pub delivery: Delivery,
    /// Times it was written so far (a lower bound: the pool keeps the record again when the
    /// message goes back to the outbox after its connection died, not on every write).
    pub writes: u32,
}

impl SpoolRecord {
    /// The bytes this record counts for against the spool's limit: its frame plus a fixed
    /// overhead for the id, type, guarantee, counts and the store's framing.
    pub fn size(&self) -> u64 {
        record_size(self.frame.len())
    }
}

/// The fixed part of a record's size (see [`SpoolRecord::size`]).
pub const RECORD_OVERHEAD: u64 = 64;

/// The size a record of a frame of `frame_len` bytes counts for.
pub(crate) fn record_size(frame_len: usize) -> u64 {
    frame_len as u64 + RECORD_OVERHEAD
}

/// A record an earlier process left in the spool, for [`Pool::open_spool`](crate::Pool::open_spool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The record.
    pub record: SpoolRecord,
    /// How long ago the message was first sent (the client turns the wall-clock time stored
    /// with the record into this; the core has no wall clock). Its TTL runs from then.
    pub age: Duration,
}

/// What opening the spool did with the restored records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolOpened {
    /// Records queued to be sent again, ahead of any new message (counted `replayed`).
    pub replayed: u64,
    /// Records already past their TTL (counted `replayed` and `expired`, and released).
    pub expired: u64,
}

/// Why [`Pool::open_spool`](crate::Pool::open_spool) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolOpenError {
    /// The spool is already open.
    #[error("the spool is already open")]
    AlreadyOpen,
    /// Messages were sent before the spool was opened: restored records must go first, and
    /// the new messages would have gone unrecorded.
    #[error("the spool must be opened before the first send")]
    AfterSends,
    /// The pool is closing.
    #[error("the pool is closing")]
    Closing,
}
