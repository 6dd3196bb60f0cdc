//! Selection: which open connection takes the next write.

use super::slot::{Conn, Slot};
use crate::config::Config;

/// What the selected connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// A request: the connection must be under its in-flight cap.
    Request,
    /// A fire-and-forget message of this many bytes: the connection's window must have room.
    Send(usize),
}

/// The open connection that takes the next write, with its slot: fewest pending requests,
/// ties going to the preferred slot (`affinity`) or else rotating from the slot chosen last
/// (`cursor`, updated here); `None` when no open connection has room (a connection with
/// `max_unflushed_writes` unflushed writes has none; for a request, nor has one at
/// `max_in_flight`; for a message, nor has one whose unconfirmed window is full).
pub(super) fn select<'a>(
    slots: &'a mut [Slot],
    cursor: &mut usize,
    config: &Config,
    want: Want,
    affinity: Option<u32>,
) -> Option<(usize, &'a mut Conn)> {
    let n = slots.len();
    // Scanning from the preferred slot makes it the winner of any tie it is part of: a
    // later slot replaces the best only with strictly fewer pending.
    let start = match affinity {
        Some(slot) => slot as usize % n,
        None => cursor.wrapping_add(1) % n,
    };
    let (before, from) = slots.split_at_mut(start);
    let order = (start..n).zip(from).chain((0..start).zip(before));
    let mut best: Option<(usize, &'a mut Conn)> = None;
    for (i, slot) in order {
        let Some(conn) = slot.open_conn_mut() else {
            continue;
        };
        if conn.unflushed() >= u64::from(config.max_unflushed_writes) {
            continue;
        }
        match want {
            Want::Request if conn.pending >= config.max_in_flight => continue,
            Want::Send(len) if conn.window_full(config, len) => continue,
            _ => {}
        }
        if best.as_ref().is_none_or(|(_, b)| conn.pending < b.pending) {
            let idle = conn.pending == 0;
            best = Some((i, conn));
            if idle {
                break;
            }
        }
    }
    let (i, conn) = best?;
    // The rotation is for requests without a preference; a preferred pick leaves it.
    if affinity.is_none() {
        *cursor = i;
    }
    Some((i, conn))
}
