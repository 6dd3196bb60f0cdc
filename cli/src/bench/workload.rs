//! What a bench run sends: requests or fire-and-forget messages, the one message of each, and
//! how the tasks of a run share out the operations.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::json;
use usageflow_socket_tokio::Outgoing;

/// Requests, or fire-and-forget messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Requests with replies.
    Request,
    /// Fire-and-forget messages.
    Send,
}

/// The request every bench operation sends (built afresh per operation, like a host would).
pub(crate) fn request_message() -> Outgoing {
    Outgoing::new("request_for_allocation", json!({"alias": "bench", "amount": 1.0}))
}

/// The fire-and-forget message of the send modes.
pub(crate) fn send_message() -> Outgoing {
    Outgoing::new(
        "use_allocation",
        json!({"alias": "bench", "amount": 1.0, "allocationId": "bench-allocation"}),
    )
}

/// Operations a send task draws at once. A send costs about a microsecond, so one shared
/// counter bumped per send (by tasks on every core) would be a measurable part of what the
/// bench measures; a chunk leaves a tail of at most this many sends per task.
pub(crate) const SEND_CHUNK: u64 = 16;

/// A task's share of the tickets, drawn [`SEND_CHUNK`] at a time from a shared counter.
pub(crate) struct Chunks<'a> {
    issued: &'a AtomicU64,
    total: u64,
    left: u64,
}

impl<'a> Chunks<'a> {
    /// Draws from `issued` until `total` were drawn.
    pub(crate) fn new(issued: &'a AtomicU64, total: u64) -> Self {
        Self {
            issued,
            total,
            left: 0,
        }
    }

    /// Takes the next operation; false once every operation was drawn.
    pub(crate) fn draw(&mut self) -> bool {
        if self.left == 0 {
            let first = self.issued.fetch_add(SEND_CHUNK, Relaxed);
            self.left = self.total.saturating_sub(first).min(SEND_CHUNK);
            if self.left == 0 {
                return false;
            }
        }
        self.left -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hand_out_every_operation_exactly_once() {
        let issued = AtomicU64::new(0);
        let total = 3 * SEND_CHUNK + 5;
        let mut a = Chunks::new(&issued, total);
        let mut b = Chunks::new(&issued, total);
        let (mut got_a, mut got_b) = (0, 0);
        // Interleaved like two tasks, until both are told there is no more.
        loop {
            let (more_a, more_b) = (a.draw(), b.draw());
            got_a += u64::from(more_a);
            got_b += u64::from(more_b);
            if !more_a && !more_b {
                break;
            }
        }
        assert_eq!(got_a + got_b, total);
        assert!(!a.draw() && !b.draw(), "drawn out stays drawn out");
    }
}
