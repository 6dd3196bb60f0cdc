//! The messages the pool holds and the ping state of a connection: plain data, below every
//! file that acts on them (`slot.rs` keeps them in its connections, `delivery.rs` and
//! `outbox.rs` move them).

use std::time::Instant;

/// A fire-and-forget message the pool holds: waiting in the outbox, or written and awaiting
/// confirmation (then inside a [`Flight`]).
#[derive(Debug)]
pub(super) struct Message {
    /// Its place in the send order (from 1).
    pub(super) id: u64,
    /// Its counters' index.
    pub(super) kind: u16,
    pub(super) frame: String,
    /// The TTL, counted from the first send.
    pub(super) expires: Instant,
    pub(super) at_least_once: bool,
    /// Report its end as `Output::Settled`.
    pub(super) notify: bool,
    /// Times written so far.
    pub(super) writes: u32,
}

/// A message written on a connection, awaiting confirmation.
#[derive(Debug)]
pub(super) struct Flight {
    pub(super) message: Message,
    /// The connection's number of the write that carried it.
    pub(super) write: u64,
    pub(super) written_at: Instant,
    /// Its frame's length (the frame of an at-most-once message is let go once flushed).
    pub(super) bytes: u32,
}

/// A connection's ping state: every ping is a barrier.
#[derive(Debug, Default)]
pub(super) struct Barrier {
    /// The connection's random token, the first half of every ping payload: a peer that
    /// did not read the ping cannot guess its pong.
    pub(super) token: [u8; 8],
    /// The sequence number of the last ping written (0: none yet).
    pub(super) seq: u64,
    /// The ping written and not yet answered: (sequence, write number, answer deadline).
    pub(super) unanswered: Option<(u64, u64, Instant)>,
    /// Messages written since the last ping, and their bytes.
    pub(super) since: u32,
    pub(super) since_bytes: usize,
    /// When a barrier is due for the messages written since the last ping.
    pub(super) due_at: Option<Instant>,
    /// Whether any ping of this connection was answered.
    pub(super) ever_answered: bool,
}

impl Barrier {
    /// The payload of this connection's ping `seq`: the token, then the sequence.
    pub(super) fn payload(&self, seq: u64) -> [u8; 16] {
        let mut payload = [0; 16];
        payload[..8].copy_from_slice(&self.token);
        payload[8..].copy_from_slice(&seq.to_be_bytes());
        payload
    }
}
