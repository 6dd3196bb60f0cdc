//! Counters: stale inputs about connections that are gone.

use super::*;

#[test]
fn stale_generation_is_ignored() {
    let mut h = H::new(|b| b.pool_size(1).backoff_base(Duration::ZERO));
    let c = h.up()[0];
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    // Base 0: the reconnect dials at once, generation 1.
    let new = ConnId {
        slot: 0,
        generation: 1,
    };
    assert!(h.out.contains(&Output::Dial { conn: new }));
    h.input(Input::Connected { conn: new });
    let before = h.pool.stats().stale_inputs;
    h.input(Input::Closed {
        conn: c,
        reason: CloseReason::Eof,
    });
    h.input(Input::Text { conn: c, text: "{}" });
    assert_eq!(h.pool.stats().stale_inputs, before + 2);
    // Every other input about the dead generation counts too (a mutant left these uncounted).
    h.input(Input::Flushed { conn: c, writes: 1 });
    h.pong(c);
    h.input(Input::Ping { conn: c });
    h.input(Input::Binary { conn: c, len: 3 });
    assert_eq!(h.pool.stats().stale_inputs, before + 6);
    let before = before + 4;
    assert_eq!(h.pool.slot_state(0), Some(SlotState::Open));
    // A generation never dialed is stale too.
    h.input(Input::Connected {
        conn: ConnId {
            slot: 0,
            generation: 9,
        },
    });
    assert_eq!(h.pool.stats().stale_inputs, before + 3);
}
