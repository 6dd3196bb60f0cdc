//! The spool's invariant, across processes: the ledger of what the pool asked to keep and
//! release, carried from a crashed (or closed) process to the next one.
//!
//! - every message a process accepts comes out as a keep in the same drain, before it is
//!   written; a keep of a known record keeps its frame and never loses writes; a keep of an
//!   id that is neither accepted nor live is a violation, and a record keeps the instant it
//!   was first sent (its TTL runs from then);
//! - a release names a live record, once, with a final fate (never `Spooled` or `Closed`);
//! - after every step the ledger holds exactly the pool's live messages plus what its close
//!   left in the spool (`spooled`), and its bytes are the pool's `spool_bytes`; each release
//!   names the end the counters moved to in its step;
//! - a send is refused as `SpoolFull` exactly when its record would pass the limit;
//! - a new process opens the spool with exactly the ledger's records: each is replayed
//!   (counted `sends` and `replayed`), or released as expired when its TTL ran out.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Checker, Step, Violation};
use crate::pool::Pool;
use crate::spool::{record_size, Restored, SpoolOpenError, SpoolOpened, SpoolRecord};
use crate::stats::Stats;
use crate::{MessageFate, MessageId, Output};

/// What the spool holds, as the keeps and releases tell it (the cross-process ledger), and
/// this process's bookkeeping of it.
#[derive(Debug, Clone, Default)]
pub(super) struct Ledger {
    /// Records kept and not released, by id, with the instant first sent.
    pub(super) live: BTreeMap<u64, (SpoolRecord, Instant)>,
    /// The spool is open in this process, with this byte limit.
    pub(super) open: Option<u64>,
    /// The bytes of the live records (what the pool must report as `spool_bytes`).
    pub(super) bytes: u64,
    /// A message accepted in this step whose keep has not come yet.
    pub(super) keep_owed: Option<u64>,
    /// Releases over every process.
    pub(super) released: u64,
    /// Keeps over every process (first keeps of accepted messages).
    pub(super) kept: u64,
    /// This step's releases by fate: confirmed, expired, unconfirmed, written.
    pub(super) step_releases: [u64; 4],
}

impl Ledger {
    /// The ledger a new process starts with: the records, nothing open.
    pub(super) fn carried(&self) -> Ledger {
        Ledger {
            live: self.live.clone(),
            open: None,
            bytes: 0,
            keep_owed: None,
            released: self.released,
            kept: self.kept,
            step_releases: [0; 4],
        }
    }
}

impl Checker {
    /// A checker for the next process of the same client (after a crash, or after a close
    /// for a deploy): a fresh shadow of a new pool built with the same config at `now`, with
    /// the spool's ledger carried over.
    pub fn restarted(&self, now: Instant) -> Checker {
        let mut next = Checker::new(&self.config, now);
        next.ledger = self.ledger.carried();
        next.now = next.now.max(self.now);
        next
    }

    /// Records kept and not released (what a client's spool must hold), in id order, with
    /// the instant each was first sent.
    pub fn spool_records(&self) -> impl Iterator<Item = (&SpoolRecord, Instant)> + '_ {
        self.ledger.live.values().map(|(r, t)| (r, *t))
    }

    /// Records kept and released, over every process so far.
    pub fn spool_totals(&self) -> (u64, u64) {
        (self.ledger.kept, self.ledger.released)
    }

    /// `Pool::open_spool` with `restored`, and its result.
    pub(super) fn on_open_spool_call(
        &mut self,
        max_bytes: u64,
        restored: &[Restored],
        result: &Result<SpoolOpened, SpoolOpenError>,
    ) -> Result<Step, Violation> {
        if self.ledger.open.is_some() {
            ensure!(
                *result == Err(SpoolOpenError::AlreadyOpen),
                7,
                "open_spool on an open spool returned {result:?}"
            );
            return Ok(Step::Quiet);
        }
        if self.closing || !self.message_ids.is_empty() {
            ensure!(
                result.is_err(),
                7,
                "open_spool after a close or a send returned {result:?}"
            );
            return Ok(Step::Quiet);
        }
        // The client hands back exactly what the ledger holds.
        let handed: Vec<(u64, &str)> = restored
            .iter()
            .map(|r| (r.record.id.0, r.record.frame.as_str()))
            .collect();
        let held: Vec<(u64, &str)> = self
            .ledger
            .live
            .iter()
            .map(|(id, (r, _))| (*id, r.frame.as_str()))
            .collect();
        ensure!(
            handed == held,
            7,
            "the spool hands back {} records, the keeps and releases left {}",
            handed.len(),
            held.len()
        );
        let ttl = self.config.outbox_ttl();
        let expired = restored.iter().filter(|r| r.age >= ttl).count() as u64;
        let expected = SpoolOpened {
            replayed: restored.len() as u64,
            expired,
        };
        ensure!(
            *result == Ok(expected),
            7,
            "open_spool with {} records ({expired} past their TTL) returned {result:?}",
            restored.len()
        );
        self.ledger.open = Some(max_bytes);
        self.ledger.bytes = restored.iter().map(|r| r.record.size()).sum();
        for r in restored {
            let kind = self.intern(&r.record.kind);
            let s = &mut self.sends[usize::from(kind)];
            s.sends += 1;
            s.replayed += 1;
            // Restored ids are taken: new messages get ids above them.
            self.message_ids.insert(r.record.id.0);
        }
        Ok(Step::OpenSpool)
    }

    /// Whether a send of a `frame_len`-byte frame must be refused as `SpoolFull`.
    pub(super) fn spool_refuses(&self, frame_len: usize) -> bool {
        self.ledger
            .open
            .is_some_and(|max| self.ledger.bytes + record_size(frame_len) > max)
    }

    /// A send accepted with the spool open owes its keep in this drain.
    pub(super) fn owe_keep(&mut self, id: MessageId) {
        if self.ledger.open.is_some() {
            self.ledger.keep_owed = Some(id.0);
        }
    }

    /// Nothing is written before its keep.
    pub(super) fn check_kept_before_write(&self, frame: &str) -> Result<(), Violation> {
        ensure!(
            self.ledger.keep_owed.is_none(),
            7,
            "message {:?} accepted but written ({frame}) before its keep",
            self.ledger.keep_owed
        );
        Ok(())
    }

    /// An `Output::Keep` or `Output::Release`.
    pub(super) fn on_spool_output(&mut self, output: &Output) -> Result<(), Violation> {
        ensure!(
            self.ledger.open.is_some(),
            7,
            "{output:?} from a pool without a spool"
        );
        match output {
            Output::Keep { record, first_sent } => {
                let id = record.id.0;
                if self.ledger.keep_owed == Some(id) {
                    ensure!(
                        !self.ledger.live.contains_key(&id),
                        7,
                        "{} accepted, but its id is a live record's",
                        record.id
                    );
                    self.ledger.keep_owed = None;
                    self.ledger.kept += 1;
                    self.ledger.bytes += record.size();
                    self.ledger.live.insert(id, (record.clone(), *first_sent));
                    return Ok(());
                }
                let Some((old, first)) = self.ledger.live.get_mut(&id) else {
                    return Err(Violation {
                        invariant: 7,
                        message: format!(
                            "{} kept, but it is neither accepted in this step nor a live record (released, or never sent)",
                            record.id
                        ),
                    });
                };
                ensure!(
                    old.frame == record.frame && old.kind == record.kind && old.writes <= record.writes,
                    7,
                    "{} kept again with another frame or fewer writes ({} then {})",
                    record.id,
                    old.writes,
                    record.writes
                );
                ensure!(
                    *first == *first_sent,
                    7,
                    "{} kept again as first sent at another instant (its TTL runs from the first)",
                    record.id
                );
                *old = record.clone();
                Ok(())
            }
            Output::Release { id, fate } => {
                ensure!(
                    !matches!(fate, MessageFate::Spooled | MessageFate::Closed),
                    7,
                    "{id} released as {fate:?}, which is no end"
                );
                let Some((record, _)) = self.ledger.live.remove(&id.0) else {
                    return Err(Violation {
                        invariant: 7,
                        message: format!("{id} released ({fate:?}), but it is not in the spool"),
                    });
                };
                self.ledger.bytes -= record.size();
                self.ledger.released += 1;
                let i = match fate {
                    MessageFate::Confirmed => 0,
                    MessageFate::Expired => 1,
                    MessageFate::Unconfirmed(_) => 2,
                    _ => 3,
                };
                self.ledger.step_releases[i] += 1;
                Ok(())
            }
            _ => unreachable!("only keeps and releases"),
        }
    }

    /// After every step: each accepted message was kept; the ledger holds exactly the live
    /// messages and what a close left in the spool; the bytes agree.
    pub(super) fn check_spool(&mut self, pool: &Pool, actual: &Stats) -> Result<(), Violation> {
        // Each release names the end the counters moved to in the same step.
        let releases = std::mem::take(&mut self.ledger.step_releases);
        if self.ledger.open.is_some() {
            let (now, then) = (&actual.sends, &self.last_stats.sends);
            let moved = [
                now.confirmed - then.confirmed,
                now.expired - then.expired,
                now.unconfirmed - then.unconfirmed,
                now.written_final - then.written_final,
            ];
            ensure!(
                releases == moved,
                7,
                "releases (confirmed, expired, unconfirmed, written) {releases:?}, the counters moved {moved:?}"
            );
        }
        ensure!(
            self.ledger.keep_owed.is_none(),
            7,
            "message {:?} accepted but never kept",
            self.ledger.keep_owed
        );
        if self.ledger.open.is_none() {
            ensure!(
                pool.spool_bytes() == 0,
                7,
                "spool bytes {} without a spool",
                pool.spool_bytes()
            );
            return Ok(());
        }
        let held = pool.live_messages() as u64 + actual.sends.spooled;
        ensure!(
            self.ledger.live.len() as u64 == held,
            7,
            "the spool holds {} records, the pool {} live messages and {} spooled",
            self.ledger.live.len(),
            pool.live_messages(),
            actual.sends.spooled
        );
        ensure!(
            pool.spool_bytes() == self.ledger.bytes,
            7,
            "the pool counts {} spool bytes, its records {}",
            pool.spool_bytes(),
            self.ledger.bytes
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use crate::sim::{Call, Checker};
    use crate::spool::Restored;
    use crate::{Config, MessageFate, MessageId, Outgoing, Output, Pool, SendOptions};

    const MAX: u64 = 1 << 20;

    /// A pool with its spool open (handed `restored`), and its checker.
    fn open(checker: Checker, restored: Vec<Restored>, now: Instant) -> (Pool, Checker, Result<(), String>) {
        let config = Config::builder("ws://127.0.0.1:9000/ws", "key")
            .pool_size(1)
            .build()
            .expect("valid");
        let mut pool = Pool::new(config, 1, now);
        let mut checker = checker;
        let result = pool.open_spool(now, MAX, restored.clone());
        let call = Call::OpenSpool {
            max_bytes: MAX,
            restored: &restored,
            result: &result,
        };
        let checked = checker
            .observe_call(now, call)
            .and_then(|()| checker.drain(&mut pool, |_| {}))
            .map_err(|v| v.to_string());
        (pool, checker, checked)
    }

    fn fresh(now: Instant) -> Checker {
        let config = Config::builder("ws://127.0.0.1:9000/ws", "key")
            .pool_size(1)
            .build()
            .expect("valid");
        Checker::new(&config, now)
    }

    /// Sends one message; `drop_output` swallows the outputs it matches before the checker
    /// sees them (a pool that never produced them).
    fn send(
        pool: &mut Pool,
        checker: &mut Checker,
        now: Instant,
        n: u64,
        drop_output: impl Fn(&Output) -> bool,
    ) -> Result<(), String> {
        let message = Outgoing::new("m", json!(n));
        let options = SendOptions::default();
        let result = pool.send_with(now, &message, options);
        let call = Call::Send {
            message: &message,
            options,
            result: &result,
        };
        checker.observe_call(now, call).map_err(|v| v.to_string())?;
        while let Some(o) = pool.poll_output() {
            if !drop_output(&o) {
                checker.observe_output(&o).map_err(|v| v.to_string())?;
            }
        }
        checker.check(pool).map_err(|v| v.to_string())
    }

    #[test]
    fn a_missing_keep_is_caught() {
        let now = Instant::now();
        let (mut pool, mut checker, opened) = open(fresh(now), Vec::new(), now);
        opened.unwrap();
        send(&mut pool, &mut checker, now, 1, |_| false).unwrap();
        let e = send(&mut pool, &mut checker, now, 2, |o| {
            matches!(o, Output::Keep { .. })
        })
        .unwrap_err();
        assert!(e.contains("never kept"), "{e}");
    }

    #[test]
    fn a_release_of_no_record_is_caught() {
        let now = Instant::now();
        let (mut pool, mut checker, opened) = open(fresh(now), Vec::new(), now);
        opened.unwrap();
        send(&mut pool, &mut checker, now, 1, |_| false).unwrap();
        checker.observe_call(now, Call::Timeout).unwrap();
        let bogus = Output::Release {
            id: MessageId(7),
            fate: MessageFate::Confirmed,
        };
        let e = checker.observe_output(&bogus).unwrap_err().to_string();
        assert!(e.contains("not in the spool"), "{e}");
    }

    #[test]
    fn the_next_process_must_get_every_record() {
        let now = Instant::now();
        let (mut pool, mut checker, opened) = open(fresh(now), Vec::new(), now);
        opened.unwrap();
        for n in 0..3 {
            send(&mut pool, &mut checker, now, n, |_| false).unwrap();
        }
        let records: Vec<Restored> = checker
            .spool_records()
            .map(|(record, first)| Restored {
                record: record.clone(),
                age: (now + Duration::from_millis(5)).saturating_duration_since(first),
            })
            .collect();
        assert_eq!(records.len(), 3);
        let later = now + Duration::from_millis(5);
        // A crash: a new process handed every record replays them all.
        let (pool, _, all) = open(checker.restarted(later), records.clone(), later);
        all.unwrap();
        assert_eq!(pool.stats().sends.replayed, 3);
        // One lost on the way is caught.
        let (_, _, lost) = open(checker.restarted(later), records[1..].to_vec(), later);
        assert!(lost.unwrap_err().contains("hands back 2 records"));
    }
}
