//! Selection: fewest pending with round-robin ties, and affinity.

use super::*;

#[test]
fn selection_fewest_pending_with_round_robin_ties() {
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    let mut slots = Vec::new();
    for _ in 0..6 {
        let (_, c, _) = h.req("x");
        slots.push(c.slot);
    }
    assert_eq!(slots, vec![0, 1, 2, 0, 1, 2]);
    // Complete two on slot 1: it becomes the least busy.
    let ids: Vec<(RequestId, ConnId)> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { conn, frame } => {
                let v: serde_json::Value = serde_json::from_str(frame).ok()?;
                Some((RequestId(v["id"].as_str()?.parse().ok()?), *conn))
            }
            _ => None,
        })
        .collect();
    for (id, c) in ids.iter().filter(|(_, c)| c.slot == 1) {
        h.reply(*c, &format!(r#"{{"type":"success","replyTo":"{id}"}}"#));
    }
    let (_, c, _) = h.req("x");
    assert_eq!(c.slot, 1);
    assert_eq!(h.pool.stats().pending_per_slot, vec![2, 1, 2]);
}

#[test]
fn affinity_breaks_ties_only() {
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    let lean = |slot| RequestOptions {
        affinity: Some(slot),
        ..RequestOptions::default()
    };
    // All idle: the preferred slot wins the tie, again and again while it stays tied.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 2);
    // Slot 2 now has one pending, the others none: fewest pending wins over the preference.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 0);
    assert_eq!(h.req_with("x", lean(2)).1.slot, 1);
    // One each: tied again, slot 2 wins; a slot beyond the pool is taken modulo its size.
    assert_eq!(h.req_with("x", lean(2)).1.slot, 2);
    assert_eq!(h.req_with("x", lean(3)).1.slot, 0);
    assert_eq!(h.pool.stats().pending_per_slot, vec![2, 1, 2]);
    // Preferred picks leave the round-robin alone: it goes on from its own last pick.
    let mut h = H::new(|b| b.pool_size(3));
    h.up();
    assert_eq!(h.req("x").1.slot, 0);
    assert_eq!(h.req_with("x", lean(1)).1.slot, 1);
    assert_eq!(h.req_with("x", lean(1)).1.slot, 2);
    assert_eq!(h.req("x").1.slot, 1);
    // A preferred slot that is down is skipped.
    let mut h = H::new(|b| b.pool_size(2));
    let conns = h.up();
    h.input(Input::Closed {
        conn: conns[1],
        reason: CloseReason::Eof,
    });
    assert_eq!(h.req_with("x", lean(1)).1.slot, 0);
}
