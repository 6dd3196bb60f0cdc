//! The client's side of the spool (feature `spool`): opens the store of
//! [`crate::spool`] for a client, hands the records an earlier process left to the pool
//! ([`Pool::open_spool`]), and carries out the pool's keeps and releases
//! ([`Output::Keep`](usageflow_socket_core::Output::Keep),
//! [`Output::Release`](usageflow_socket_core::Output::Release)) in the driver's drain. The core
//! decides what is kept and released; this file converts between the pool's `Instant`s and
//! the store's wall-clock times. A record's store key is its message id: a restored record
//! keeps its key as its id, and the pool numbers new messages above every restored one, so
//! no map between the two is needed (a key released earlier may be used again: the later
//! write wins on recovery).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{error, info, warn};
use usageflow_socket_core::{Delivery, MessageId, Pool, Restored, SpoolOpened, SpoolRecord as CoreRecord};

use crate::logs::LogLine;
use crate::spool::{DurableMark, Spool, SpoolError, SpoolKey, SpoolOptions, SpoolRecord, SyncPolicy};
use crate::ClientError;

/// How long a `send` under [`SyncPolicy::EverySend`] waits for its record to be durable.
pub(crate) const EVERY_SEND_WAIT: Duration = Duration::from_secs(5);

/// An open spool, whose records are keyed by message id.
pub(crate) struct SpoolLink {
    spool: Arc<Spool>,
    sync: SyncPolicy,
    /// Whether a send writes its record to the OS before it returns
    /// ([`SpoolOptions::write_through`]).
    write_through: bool,
    /// The mark of the latest keep: what a send writes through (or waits for) once the
    /// client's lock is released.
    last_keep: DurableMark,
    /// Keeps the store refused or failed (the message is still sent from memory).
    failures: u64,
}

impl std::fmt::Debug for SpoolLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolLink")
            .field("dir", &self.spool.dir())
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SpoolLink {
    /// Opens the spool of `options` (reading what an earlier process left, and taking the
    /// directory's lock) and hands its records to `pool`, which replays them first.
    pub(crate) fn open(
        options: &SpoolOptions,
        pool: &mut Pool,
        now: Instant,
    ) -> Result<SpoolLink, ClientError> {
        // The pool enforces `max_bytes` on its own count of live records (a typed, counted
        // refusal); the store's own bound, on its encoding, is a backstop above it.
        let store_options = options.clone().max_bytes(options.max_bytes.saturating_mul(2));
        let (spool, recovery) = Spool::open(store_options).map_err(ClientError::Spool)?;
        if !recovery.damage.is_clean() {
            warn!(
                dir = %options.dir.display(),
                damage = ?recovery.damage,
                "usageflow-socket: the spool had damaged records; they were skipped and counted, the good ones are replayed"
            );
        }
        let wall_now = unix_ms(SystemTime::now());
        let mut restored = Vec::with_capacity(recovery.records.len());
        // Recovered records come in append order, and keys grow with it: as ids, they keep
        // that order.
        for r in recovery.records {
            let id = r.key.0;
            let age = match r.record.first_sent_unix_ms {
                0 => Duration::ZERO,
                t => Duration::from_millis(wall_now.saturating_sub(t)),
            };
            restored.push(Restored {
                record: CoreRecord {
                    id: MessageId(id),
                    kind: r.record.kind,
                    frame: r.record.frame,
                    delivery: if r.record.at_least_once {
                        Delivery::AtLeastOnce
                    } else {
                        Delivery::AtMostOnce
                    },
                    writes: r.record.rewrites,
                },
                age,
            });
        }
        let opened: SpoolOpened = pool
            .open_spool(now, options.max_bytes, restored)
            .map_err(|e| ClientError::InvalidOptions(e.to_string()))?;
        if opened.replayed > 0 {
            info!(
                dir = %options.dir.display(),
                replayed = opened.replayed,
                expired = opened.expired,
                "usageflow-socket: replaying the messages an earlier process left in the spool"
            );
        }
        Ok(SpoolLink {
            spool: Arc::new(spool),
            sync: options.sync,
            write_through: options.write_through,
            last_keep: DurableMark::default(),
            failures: 0,
        })
    }

    /// Keeps a record the pool accepted (or kept again with a grown write count). A failure
    /// returns the line to log (the first, then one per thousand), for the caller to write
    /// once it holds no lock.
    pub(crate) fn keep(&mut self, record: CoreRecord, first_sent: Instant, now: Instant) -> Option<LogLine> {
        let first_sent = SystemTime::now()
            .checked_sub(now.saturating_duration_since(first_sent))
            .unwrap_or(UNIX_EPOCH);
        let stored = SpoolRecord {
            message_id: record.id.0,
            kind: record.kind,
            frame: record.frame,
            at_least_once: record.delivery == Delivery::AtLeastOnce,
            first_sent_unix_ms: unix_ms(first_sent),
            rewrites: record.writes,
        };
        // Staged under the client's lock (one short lock of the store's), written by the
        // send once the client's lock is released ([`SpoolLink::send_mark`]). A keep of an
        // id already kept (a grown write count) replaces its record.
        match self.spool.stage(SpoolKey(record.id.0), &stored) {
            Ok(appended) => {
                self.last_keep = appended.mark;
                None
            }
            Err(e) => self.failed(record.id, &e),
        }
    }

    /// Releases the record of a message that ended (nothing if it was never kept: the
    /// store refused it).
    pub(crate) fn release(&mut self, id: MessageId) {
        self.spool.release(SpoolKey(id.0));
    }

    fn failed(&mut self, id: MessageId, e: &SpoolError) -> Option<LogLine> {
        self.failures += 1;
        // The first failure, then one line per thousand: a failed disk fails every keep.
        (self.failures == 1 || self.failures % 1000 == 0).then(|| LogLine::SpoolFailed {
            id,
            error: e.to_string(),
            failures: self.failures,
        })
    }

    /// What a `send` that was just kept does before it returns: write its record through to
    /// the OS, or, under [`SyncPolicy::EverySend`], wait until it is durable.
    pub(crate) fn send_mark(&self) -> SendMark {
        SendMark {
            spool: Arc::clone(&self.spool),
            mark: self.last_keep,
            wait: self.sync == SyncPolicy::EverySend,
            write_through: self.write_through,
        }
    }

    /// The store handle.
    pub(crate) fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }
}

/// A send's spool record: where it was staged, and whether the send waits for durability.
#[derive(Debug)]
pub(crate) struct SendMark {
    spool: Arc<Spool>,
    mark: DurableMark,
    wait: bool,
    write_through: bool,
}

impl SendMark {
    /// Writes the send's record through to the OS (so a process crash from now on loses
    /// nothing), outside the client's lock; under [`SyncPolicy::EverySend`], waits (blocking
    /// the calling thread, bounded by [`EVERY_SEND_WAIT`]) until it is durable. A failed
    /// write is the spool's failure, logged there; the message itself was accepted and is
    /// sent from memory, so only a send that waits for durability reports it.
    pub(crate) fn settle(self) -> Result<(), ClientError> {
        if self.wait {
            return wait_every_send(&self.spool, self.mark, Instant::now() + EVERY_SEND_WAIT);
        }
        if self.write_through {
            let _ = self.spool.write_through(self.mark);
        }
        Ok(())
    }

    /// [`SendMark::settle`] for async callers: waits on `deadline` (the runtime's timer)
    /// instead of blocking the thread.
    pub(crate) async fn settle_async(self, deadline: impl std::future::Future) -> Result<(), ClientError> {
        if !self.wait {
            if self.write_through {
                let _ = self.spool.write_through(self.mark);
            }
            return Ok(());
        }
        match self.spool.wait_durable(self.mark, deadline).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ClientError::SpoolNotDurable {
                waited: EVERY_SEND_WAIT,
            }),
            Err(e) => Err(ClientError::Spool(e)),
        }
    }
}

/// Waits (blocking the calling thread, until `deadline`) until a send's record is durable.
fn wait_every_send(spool: &Spool, mark: DurableMark, deadline: Instant) -> Result<(), ClientError> {
    match spool.wait_durable_blocking(mark, deadline) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ClientError::SpoolNotDurable {
            waited: EVERY_SEND_WAIT,
        }),
        Err(e) => Err(ClientError::Spool(e)),
    }
}

/// Closes the spool of a stopped client: waits (bounded by the store's close timeout) for
/// its writer to write and sync everything, and lets the directory's lock go. A flush still
/// holding the store keeps it open; the last handle's drop closes it then.
pub(crate) async fn close<R: crate::Runtime>(link: SpoolLink, runtime: &R) {
    let Ok(spool) = Arc::try_unwrap(link.spool) else {
        return;
    };
    let deadline = Instant::now() + spool_close_timeout();
    if let Err(e) = spool.close(runtime.sleep_until(deadline)).await {
        error!(error = %e, "usageflow-socket: closing the spool failed; the next process recovers what reached the disk");
    }
}

/// How long a client's close waits for the spool's writer.
fn spool_close_timeout() -> Duration {
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::inspect;
    use usageflow_socket_core::Config;

    fn tmp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ufsock-spooling-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn link(options: &SpoolOptions, now: Instant) -> SpoolLink {
        let config = Config::builder("ws://localhost:9000/ws", "k").build().unwrap();
        let mut pool = Pool::new(config, 1, now);
        SpoolLink::open(options, &mut pool, now).unwrap()
    }

    fn message(id: u64, delivery: Delivery, writes: u32) -> CoreRecord {
        CoreRecord {
            id: MessageId(id),
            kind: "use_allocation".into(),
            frame: format!(r#"{{"type":"use_allocation","id":"{id}"}}"#),
            delivery,
            writes,
        }
    }

    fn close_link(link: SpoolLink) {
        Arc::try_unwrap(link.spool).unwrap().close_blocking().unwrap();
    }

    #[test]
    fn a_kept_message_is_stored_under_its_id_with_its_guarantee_writes_and_send_time() {
        let dir = tmp_dir("keep");
        let now = Instant::now();
        let mut link = link(&SpoolOptions::new(&dir), now);
        assert!(format!("{link:?}").contains("SpoolLink"), "{link:?}");
        let wall = unix_ms(SystemTime::now());
        let a_minute_ago = now.checked_sub(Duration::from_secs(60)).unwrap();
        assert!(link
            .keep(message(7, Delivery::AtLeastOnce, 2), a_minute_ago, now)
            .is_none());
        assert!(link.keep(message(8, Delivery::AtMostOnce, 0), now, now).is_none());
        assert!(link
            .keep(message(9, Delivery::AtLeastOnce, 1), now, now)
            .is_none());
        link.release(MessageId(9));
        link.send_mark().settle().unwrap();
        close_link(link);
        let (spool, recovery) = Spool::open(SpoolOptions::new(&dir)).unwrap();
        let got: Vec<_> = recovery
            .records
            .iter()
            .map(|r| {
                (
                    r.key.0,
                    r.record.message_id,
                    r.record.at_least_once,
                    r.record.rewrites,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(7, 7, true, 2), (8, 8, false, 0)],
            "the released one is gone"
        );
        let sent = |i: usize| recovery.records[i].record.first_sent_unix_ms;
        assert!(sent(0).abs_diff(wall - 60_000) < 5_000, "{} vs {wall}", sent(0));
        assert!(sent(1).abs_diff(wall) < 5_000, "{} vs {wall}", sent(1));
        spool.close_blocking().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refused_keeps_are_logged_the_first_time_then_once_per_thousand() {
        let dir = tmp_dir("refused");
        let now = Instant::now();
        // The store's bound is twice the pool's: a record of 16 KiB never fits in 2 × 4 KiB.
        let mut link = link(&SpoolOptions::new(&dir).max_bytes(4096), now);
        let mut big = message(1, Delivery::AtLeastOnce, 0);
        big.frame = "x".repeat(16 << 10);
        let mut logged = Vec::new();
        for n in 1..=2000u64 {
            if let Some(LogLine::SpoolFailed { id, failures, .. }) = link.keep(big.clone(), now, now) {
                assert_eq!(id, MessageId(1));
                logged.push(failures);
            }
            assert_eq!(link.failures, n);
        }
        assert_eq!(logged, vec![1, 1000, 2000]);
        close_link(link);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_send_writes_its_record_through_before_it_settles_on_both_paths() {
        let dir = tmp_dir("through");
        let now = Instant::now();
        // A syncer that never runs: only the send's own write puts the record in the OS.
        let options = SpoolOptions::new(&dir).sync(SyncPolicy::Group(Duration::from_secs(3600)));
        let mut link = link(&options, now);
        link.spool().pause_syncer(true);
        link.keep(message(1, Delivery::AtLeastOnce, 0), now, now);
        assert_eq!(inspect(&dir).unwrap().records, 0, "staged, not written yet");
        link.send_mark().settle().unwrap();
        assert_eq!(inspect(&dir).unwrap().records, 1);
        link.keep(message(2, Delivery::AtLeastOnce, 0), now, now);
        let mark = link.send_mark();
        assert!(!mark.wait);
        // Not waiting: the deadline is never looked at.
        smol::block_on(mark.settle_async(std::future::ready(()))).unwrap();
        assert_eq!(inspect(&dir).unwrap().records, 2);
        link.spool().pause_syncer(false);
        close_link(link);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn under_every_send_a_send_settles_once_its_record_is_durable_or_reports_it_is_not() {
        let dir = tmp_dir("every-send");
        let now = Instant::now();
        let mut link = link(&SpoolOptions::new(&dir).sync(SyncPolicy::EverySend), now);
        link.keep(message(1, Delivery::AtLeastOnce, 0), now, now);
        let kept = link.last_keep;
        let mark = link.send_mark();
        assert!(mark.wait);
        mark.settle().unwrap();
        assert!(link.spool().is_durable(kept), "settled means durable");

        link.spool().pause_syncer(true);
        link.keep(message(2, Delivery::AtLeastOnce, 0), now, now);
        let kept = link.last_keep;
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            wait_every_send(link.spool(), kept, soon),
            Err(ClientError::SpoolNotDurable { .. })
        ));
        let expired = smol::block_on(link.send_mark().settle_async(std::future::ready(())));
        assert!(
            matches!(expired, Err(ClientError::SpoolNotDurable { .. })),
            "{expired:?}"
        );
        link.spool().pause_syncer(false);
        smol::block_on(link.send_mark().settle_async(std::future::pending::<()>())).unwrap();
        assert!(link.spool().is_durable(kept));
        close_link(link);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
