//! A middleware author's question, answered in virtual time: "what happens to my metering
//! traffic when the server closes my connection, and then the new connection's writes
//! stall?" The public simulation harness plays the server and the network; the pool is the
//! real one; every invariant is checked at every step; the whole scenario takes
//! milliseconds of real time and replays exactly for the same seed.
//!
//! ```sh
//! cargo run -p usageflow-socket-core --example simulate
//! ```

use std::time::{Duration, Instant};

use usageflow_socket_core::sim::{Fault, Knobs, Sim};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A calm run (no random faults) with two connections and a steady workload of
    // requests and fire-and-forget sends; the faults below are ours.
    let knobs = Knobs {
        pool_size: 2,
        ops: 400,
        ..Knobs::calm()
    };
    let seed = 2026;
    let mut sim = Sim::new(seed, knobs, Instant::now());
    sim.start()?;

    sim.run_until(Duration::from_secs(2))?;
    report("steady", &sim);

    // The server closes slot 0's connection: its pending requests fail at once with
    // "connection lost" (or are re-sent once when idempotent), and the slot reconnects
    // after its backoff.
    assert!(sim.inject(Fault::CloseConn { slot: 0 }));
    sim.run_until(Duration::from_secs(5))?;
    report("after the server closed slot 0", &sim);

    // The new connection stops completing writes: the write deadline declares it dead.
    if sim.inject(Fault::StallWrites { slot: 0 }) {
        sim.run_until(Duration::from_secs(20))?;
        report("after slot 0's writes stalled", &sim);
    }

    // Faults off: every slot must come back, all work must complete, then close.
    let done = sim.heal_and_close()?;
    let st = &done.stats;
    println!(
        "\nhealed and closed: {} steps, trace hash {:#x} (the same seed gives the same hash)",
        done.steps, done.trace_hash
    );
    println!(
        "requests {} = replies {} + denials {} + timeouts {} + lost {} + cancelled {} + closed {} + pending {}",
        st.requests,
        st.replies,
        st.denials,
        st.timeouts,
        st.connection_lost,
        st.cancelled,
        st.closed,
        st.pending
    );
    let s = &st.sends;
    println!(
        "sends {} = confirmed {} + unconfirmed {} + dropped {} + expired {} + closed {} + written {} (server counted {})",
        s.sends, s.confirmed, s.unconfirmed, s.dropped, s.expired, s.closed, s.written, done.server_sends
    );
    assert!(st.requests_conserved() && s.conserved());
    Ok(())
}

fn report(phase: &str, sim: &Sim) {
    let st = sim.pool().stats();
    println!(
        "t={:>6.2?}  {phase:<32} open {}  disconnects {}  reconnects {}  replies {}  lost {}  confirmed {}",
        sim.elapsed(),
        st.open_connections,
        st.disconnects,
        st.reconnects,
        st.replies,
        st.connection_lost,
        st.sends.confirmed
    );
}
