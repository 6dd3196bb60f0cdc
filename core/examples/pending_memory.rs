//! Memory per pending request: opens a 64-connection pool, issues 100,000 requests that stay
//! pending, and reports the growth of the resident set (from `/proc/self/statm`, so no
//! allocator hooks and no `unsafe` are needed).
//!
//! Run: `cargo run --release -p usageflow-socket-core --example pending_memory [-- N]`

use std::time::{Duration, Instant};

use serde_json::json;
use usageflow_socket_core::{Config, Outgoing, Output, Pool, RequestOptions};

const POOL_SIZE: u16 = 64;
const TARGET_MIB: f64 = 32.0;

/// Resident set size in bytes, or `None` off Linux.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let per_conn = n.div_ceil(usize::from(POOL_SIZE)) as u32;
    let hour = Duration::from_secs(3600);
    let cfg = Config::builder("ws://127.0.0.1:9000/ws", "key")
        .pool_size(POOL_SIZE)
        .max_in_flight(per_conn.max(1))
        .max_unflushed_writes(per_conn.max(1))
        .request_timeout(hour)
        .build()
        .expect("valid config");
    let now = Instant::now();
    let mut pool = Pool::new(cfg, 1, now);
    usageflow_socket_core::sim::connect_all(&mut pool, now);
    // One message, cloned per request, as a caller would build one per request.
    let message = Outgoing::new(
        "request_for_allocation",
        json!({"alias": "ledger-1", "amount": 1.0, "metadata": {"route": "/v1/items"}}),
    );
    let before = rss();
    let mut frame_bytes = 0usize;
    for _ in 0..n {
        pool.request(now, message.clone(), RequestOptions::default())
            .expect("room for every request");
        while let Some(o) = pool.poll_output() {
            if let Output::Transmit { frame, .. } = o {
                frame_bytes = frame.len();
            }
        }
    }
    let after = rss();
    assert_eq!(pool.pending_len(), n);
    println!("pending requests: {n} over {POOL_SIZE} connections ({frame_bytes}-byte frames, not kept)");
    match (before, after) {
        (Some(b), Some(a)) => {
            let grown = a.saturating_sub(b);
            let mib = grown as f64 / (1024.0 * 1024.0);
            let scaled = mib * 100_000.0 / n as f64;
            println!(
                "resident set growth: {mib:.2} MiB ({:.0} bytes per pending request); \
                 {scaled:.2} MiB per 100,000; target <= {TARGET_MIB} MiB per 100,000: {}",
                grown as f64 / n as f64,
                if scaled <= TARGET_MIB { "met" } else { "MISSED" }
            );
        }
        _ => println!("/proc/self/statm unavailable: cannot measure the resident set"),
    }
    // Keep the pool alive until after the measurement.
    drop(pool);
}
