//! The runs of the bare clients, raw and minimal, on Tokio: connect their sockets, split the
//! window over them, run the client against the run's time limit, and take the readings.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use crate::bench::measure::{within, Measured, RunCtx, Usage};
use crate::bench::minimal;
use crate::bench::raw::{self, RawRun};
use crate::bench::report::Errors;

/// Which bare client a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareClient {
    /// The pipelined client of `--mode raw` / `raw-send` ([`raw`]).
    Raw,
    /// The minimal correlating client of `--mode minimal` ([`minimal`]).
    Minimal,
}

/// Splits `concurrency` over `pool` connections: the windows of the connections used.
fn windows(pool: u16, concurrency: u64) -> Vec<usize> {
    let n = u64::from(pool).min(concurrency).max(1);
    (0..n)
        .map(|i| (concurrency / n + u64::from(i < concurrency % n)) as usize)
        .collect()
}

/// The run of the raw or the minimal client (on Tokio).
pub(crate) async fn measure_bare(
    kind: BareClient,
    ctx: &RunCtx<'_>,
) -> Result<Measured, Box<dyn std::error::Error>> {
    ctx.target.check_direct()?;
    let windows = windows(ctx.pool, ctx.concurrency);
    let sockets = raw::connect(&ctx.target.url, &ctx.target.key, windows.len()).await?;
    let run = Arc::new(RawRun {
        total: ctx.requests,
        issued: AtomicU64::new(0),
        completed: Arc::clone(&ctx.done),
        errors: Errors::default(),
    });
    let progress = ctx.progress();
    let before = Usage::now();
    let t0 = Instant::now();
    let mut work = match kind {
        BareClient::Minimal => tokio::spawn(minimal::run(sockets, ctx.concurrency, Arc::clone(&run))),
        BareClient::Raw => tokio::spawn(raw::run(sockets, windows, ctx.workload, Arc::clone(&run))),
    };
    let finished = within(tokio::time::sleep(ctx.limit), async {
        let _ = (&mut work).await;
    })
    .await;
    // Past the limit: stop the client (dropping its sockets) rather than leave it running.
    work.abort();
    let elapsed = t0.elapsed();
    let after = Usage::now();
    progress.finish();
    if !finished {
        ctx.errors.add("run_time_limit", 1);
    }
    ctx.errors.add_all(&run.errors);
    Ok(Measured {
        before,
        after,
        elapsed,
        stats: None,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_the_concurrency() {
        assert_eq!(windows(10, 1), vec![1]);
        assert_eq!(windows(10, 16), vec![2, 2, 2, 2, 2, 2, 1, 1, 1, 1]);
        assert_eq!(windows(10, 256).iter().sum::<usize>(), 256);
        assert_eq!(windows(4, 3), vec![1, 1, 1]);
    }
}
