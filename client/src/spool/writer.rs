//! The [`Spool`] handle and its syncer thread.
//!
//! A caller encodes its record into the write buffer under one short lock (key, accounting
//! and bytes stay in one order), then writes what is buffered to the active segment file
//! itself ([`Spool::write_through`], one `write` for every record staged by then, outside
//! that lock), so the record is in the OS before [`Spool::append`] returns: killing the
//! process (kill -9, an OOM kill, a panic that aborts) loses nothing appended, whatever the
//! [`SyncPolicy`]. Concurrent callers share writes: whoever writes takes everything staged.
//! Releases are batched and go out with the next write. A syncer thread makes what was
//! written durable (`fdatasync`) at most once per interval, publishes the durable mark,
//! deletes segments that hold nothing live and compacts; a caller never waits for a sync.

use super::format::{self, HEADER_LEN, RELEASE_LEN};
use super::store::{segment_path, sync_dir};
use super::{SpoolError, SpoolKey, SpoolOptions, SpoolRecord, SyncPolicy};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Under [`SyncPolicy::Never`], how often the syncer writes what was staged (batched releases;
/// every record when sends do not write through) and deletes dead segments when nobody asks
/// sooner.
const NEVER_TICK: Duration = super::DEFAULT_SYNC_INTERVAL;
/// How many times a caller polls a busy write before it sleeps on the lock.
const WRITE_SPINS: u32 = 4096;
/// The most bytes staged and not yet written: past it a stage is refused
/// ([`SpoolError::Backlogged`]), so memory stays bounded when writes stall, and no caller
/// ever writes under a lock of its own to make room.
const MAX_STAGED_BYTES: u64 = 8 << 20;

/// A point in the spool's stream of appends and releases: once [`Spool::is_durable`] holds
/// for it, everything appended or released up to it is durable (as the policy defines).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurableMark(pub u64);

/// What [`Spool::append`] hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's key (for [`Spool::release`]).
    pub key: SpoolKey,
    /// The mark that covers this record (for [`Spool::wait_durable`]).
    pub mark: DurableMark,
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpoolStats {
    /// Live records (appended or recovered, not yet released).
    pub records: u64,
    /// Their encoded bytes (what counts against `max_bytes`).
    pub live_bytes: u64,
    /// Bytes in segment files (written or about to be).
    pub disk_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// `first_sent_unix_ms` of the oldest live record (by append order), if any.
    pub oldest_first_sent_unix_ms: Option<u64>,
    /// Records appended by this process.
    pub appended: u64,
    /// Records released by this process.
    pub released: u64,
    /// Appends refused because the spool was full.
    pub refused_full: u64,
    /// Appends refused because 8 MiB were staged and not yet written (writes stall).
    pub refused_backlogged: u64,
    /// `fdatasync` rounds made by the syncer.
    pub syncs: u64,
    /// Live records copied forward out of an old segment (compaction).
    pub compacted: u64,
    /// Segment files deleted.
    pub segments_deleted: u64,
    /// Everything up to this mark is durable.
    pub durable: DurableMark,
    /// The mark of the latest append or release.
    pub written: DurableMark,
}

/// A live record's place in the spool.
struct Live {
    seg: u64,
    bytes: u32,
    first_sent_unix_ms: u64,
}

/// A hasher for the live map's keys (increasing integers, never chosen by an adversary): one
/// multiplication instead of SipHash's rounds.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type LiveMap = HashMap<u64, Live, BuildHasherDefault<KeyHasher>>;

/// A segment file's accounting.
#[derive(Debug, Default)]
pub(crate) struct SegAcct {
    pub(crate) live_records: u64,
    pub(crate) bytes: u64,
}

/// Everything the callers and the syncer share, behind one lock.
pub(crate) struct State {
    dir: PathBuf,
    segment_bytes: u64,
    next_key: u64,
    /// No key below this is live: the search for the oldest live record resumes here (each
    /// key is looked at once, however often [`Spool::stats`] is called).
    oldest_scan: u64,
    /// A segment compaction could not empty (a live record of it did not read back): not
    /// tried again, so a damaged segment is not read over and over.
    compaction_blocked: Option<u64>,
    /// Appends and releases so far (each one advances the mark by one).
    mark: u64,
    /// The mark up to which every append and release reached the OS.
    written: u64,
    live: LiveMap,
    segs: BTreeMap<u64, SegAcct>,
    active_seg: u64,
    active: Arc<File>,
    /// Segment files sealed since the last sync (synced at the next one).
    sealed: Vec<Arc<File>>,
    /// Bytes staged for segments sealed since the last write (written before `buf`).
    sealed_bufs: Vec<(Arc<File>, Vec<u8>)>,
    /// Encoded records not yet written to the active segment.
    buf: Vec<u8>,
    /// The last written buffer, kept for its allocation.
    spare: Vec<u8>,
    live_bytes: u64,
    disk_bytes: u64,
    /// Segments to delete once everything written before is durable.
    deletes: Vec<u64>,
    /// Written since the syncer's last sync.
    dirty: bool,
    /// Files created or deleted since the last directory sync.
    dir_dirty: bool,
    /// A waiter wants durability now (the syncer skips the rest of its interval, except
    /// under group commit, whose interval bounds the syncs a second).
    nudged: bool,
    failure: Option<SpoolError>,
    closing: bool,
    stopped: bool,
    /// The syncer waits without a deadline (nothing to sync): the next write wakes it.
    syncer_idle: bool,
    stats: SpoolStats,
    #[cfg(test)]
    pub(crate) inject_write_error: Option<io::ErrorKind>,
    /// Tests stall the syncer with it (a disk whose syncs do not return).
    #[cfg(test)]
    pub(crate) syncer_paused: bool,
}

/// How [`State::recovered`] finds the directory after recovery.
pub(crate) struct Recovered {
    pub(crate) next_key: u64,
    /// Each live key with its segment, record bytes and first send time.
    pub(crate) live: Vec<(u64, u64, u32, u64)>,
    /// Every segment file, the active one last.
    pub(crate) segs: BTreeMap<u64, SegAcct>,
    pub(crate) active_seg: u64,
    /// The active segment (its header written and synced).
    pub(crate) active: File,
}

impl State {
    /// The state after recovery.
    pub(crate) fn recovered(options: &SpoolOptions, recovered: Recovered) -> State {
        let mut state = State {
            dir: options.dir.clone(),
            segment_bytes: options.segment_bytes.max(4096),
            next_key: recovered.next_key,
            oldest_scan: recovered
                .live
                .iter()
                .map(|l| l.0)
                .min()
                .unwrap_or(recovered.next_key),
            compaction_blocked: None,
            mark: 0,
            written: 0,
            live: LiveMap::with_capacity_and_hasher(recovered.live.len(), Default::default()),
            segs: recovered.segs,
            active_seg: recovered.active_seg,
            active: Arc::new(recovered.active),
            sealed: Vec::new(),
            sealed_bufs: Vec::new(),
            buf: Vec::with_capacity(16 << 10),
            spare: Vec::with_capacity(16 << 10),
            live_bytes: 0,
            disk_bytes: 0,
            deletes: Vec::new(),
            dirty: false,
            dir_dirty: false,
            nudged: false,
            failure: None,
            closing: false,
            stopped: false,
            syncer_idle: false,
            stats: SpoolStats::default(),
            #[cfg(test)]
            inject_write_error: None,
            #[cfg(test)]
            syncer_paused: false,
        };
        for (key, seg, bytes, first_sent_unix_ms) in recovered.live {
            state.live_bytes += u64::from(bytes);
            state.live.insert(
                key,
                Live {
                    seg,
                    bytes,
                    first_sent_unix_ms,
                },
            );
        }
        state.disk_bytes = state.segs.values().map(|s| s.bytes).sum();
        state.reclaim();
        state
    }

    /// Records `failure` as the spool's (the first one stays) and returns it.
    /// Not logged here: this may run under a caller's lock (a client's drain); the syncer
    /// logs the failure once, and a client logs its refused keeps.
    fn fail(&mut self, failure: SpoolError) -> SpoolError {
        self.failure.get_or_insert(failure).clone()
    }

    /// Seals the active segment and begins the next when `len` more bytes would overflow it.
    fn roll_if_needed(&mut self, len: u64) -> Result<(), SpoolError> {
        let active_bytes = self.segs.get(&self.active_seg).map_or(0, |s| s.bytes);
        if active_bytes + len <= self.segment_bytes || active_bytes <= HEADER_LEN as u64 {
            return Ok(());
        }
        let seg = self.active_seg + 1;
        let path = segment_path(&self.dir, seg);
        let mut header = Vec::with_capacity(HEADER_LEN);
        format::encode_header(&mut header, self.next_key);
        let created = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(&header).map(|()| file));
        let file = match created {
            Ok(file) => file,
            Err(e) => return Err(self.fail(write_failed(&path, &e))),
        };
        let old = std::mem::replace(&mut self.active, Arc::new(file));
        if !self.buf.is_empty() {
            let staged = std::mem::take(&mut self.buf);
            self.sealed_bufs.push((old.clone(), staged));
        }
        self.sealed.push(old);
        self.active_seg = seg;
        self.dirty = true;
        self.dir_dirty = true;
        self.segs.insert(
            seg,
            SegAcct {
                live_records: 0,
                bytes: HEADER_LEN as u64,
            },
        );
        self.disk_bytes += HEADER_LEN as u64;
        self.reclaim();
        Ok(())
    }

    /// Stages `record` under `key` (encoded into the buffer, written by the next
    /// [`Shared::write_through`]). A live record under the same key is replaced.
    fn stage(&mut self, key: u64, record: &SpoolRecord, max_bytes: u64) -> Result<DurableMark, SpoolError> {
        self.check_open()?;
        let len = format::append_len(record) as u64;
        let replaced = self.live.get(&key).map_or(0, |l| u64::from(l.bytes));
        if self.live_bytes - replaced + len > max_bytes {
            self.stats.refused_full += 1;
            return Err(SpoolError::Full {
                live_bytes: self.live_bytes,
                record_bytes: len,
                max_bytes,
            });
        }
        format::check_append(record).map_err(|e| SpoolError::RecordTooLarge(e.to_string()))?;
        let staged = self.staged_bytes();
        if staged + len > MAX_STAGED_BYTES {
            self.stats.refused_backlogged += 1;
            return Err(SpoolError::Backlogged {
                staged_bytes: staged,
                max_bytes: MAX_STAGED_BYTES,
            });
        }
        self.roll_if_needed(len)?;
        let seg = self.active_seg;
        format::encode_append(&mut self.buf, SpoolKey(key), record);
        self.mark += 1;
        self.grew(seg, len);
        self.next_key = self.next_key.max(key.saturating_add(1));
        self.oldest_scan = self.oldest_scan.min(key);
        let live = Live {
            seg,
            bytes: len as u32,
            first_sent_unix_ms: record.first_sent_unix_ms,
        };
        if let Some(old) = self.live.insert(key, live) {
            self.live_bytes -= u64::from(old.bytes);
            self.seg_live(old.seg, -1);
            self.reclaim();
        }
        self.live_bytes += len;
        self.seg_live(seg, 1);
        self.stats.appended += 1;
        Ok(DurableMark(self.mark))
    }

    /// Releases `key`: its release record waits in the buffer for the next write. Whether
    /// the key was live.
    fn release(&mut self, key: u64) -> Result<bool, SpoolError> {
        if self.check_open().is_err() {
            return Ok(false);
        }
        let Some(live) = self.live.remove(&key) else {
            return Ok(false);
        };
        self.live_bytes -= u64::from(live.bytes);
        self.seg_live(live.seg, -1);
        self.roll_if_needed(RELEASE_LEN as u64)?;
        let seg = self.active_seg;
        format::encode_release(&mut self.buf, SpoolKey(key));
        self.mark += 1;
        self.grew(seg, RELEASE_LEN as u64);
        self.stats.released += 1;
        self.reclaim();
        Ok(true)
    }

    fn seg_live(&mut self, seg: u64, delta: i64) {
        if let Some(acct) = self.segs.get_mut(&seg) {
            acct.live_records = acct.live_records.saturating_add_signed(delta);
        }
    }

    /// Records `len` bytes encoded for `seg`.
    fn grew(&mut self, seg: u64, len: u64) {
        if let Some(acct) = self.segs.get_mut(&seg) {
            acct.bytes += len;
        }
        self.disk_bytes += len;
    }

    /// Queues the deletion of the oldest segments while they hold no live record. Oldest
    /// first only: a segment may hold the release records of keys in older segments, and
    /// deleting it before them would bring those keys back.
    fn reclaim(&mut self) {
        while let Some((&seg, acct)) = self.segs.first_key_value() {
            if seg == self.active_seg || acct.live_records > 0 {
                break;
            }
            self.disk_bytes -= acct.bytes;
            self.segs.remove(&seg);
            self.deletes.push(seg);
        }
    }

    /// The live record with the smallest key (the oldest appended), moving the search's start
    /// past the keys released since the last look.
    fn oldest_live(&mut self) -> Option<&Live> {
        if self.live.is_empty() {
            return None;
        }
        while self.oldest_scan < self.next_key && !self.live.contains_key(&self.oldest_scan) {
            self.oldest_scan += 1;
        }
        self.live.get(&self.oldest_scan)
    }

    /// Whether the syncer has anything to do.
    fn has_work(&self) -> bool {
        self.dirty
            || self.written < self.mark
            || !self.sealed_bufs.is_empty()
            || !self.deletes.is_empty()
            || self.compaction_due()
    }

    /// Whether the dead bytes outgrew the live ones with live records in the oldest segment:
    /// the syncer goes on compacting without waiting for more traffic.
    fn compaction_due(&self) -> bool {
        let budget = 2 * self.live_bytes + 2 * self.segment_bytes;
        self.disk_bytes > budget
            && self.segs.first_key_value().is_some_and(|(&seg, acct)| {
                seg != self.active_seg && acct.live_records > 0 && self.compaction_blocked != Some(seg)
            })
    }

    /// Bytes staged and not yet written.
    fn staged_bytes(&self) -> u64 {
        let sealed: usize = self.sealed_bufs.iter().map(|(_, bytes)| bytes.len()).sum();
        (self.buf.len() + sealed) as u64
    }

    /// Whether staged bytes wait to be written.
    fn staged(&self) -> bool {
        !self.buf.is_empty() || !self.sealed_bufs.is_empty()
    }

    fn check_open(&self) -> Result<(), SpoolError> {
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None if self.closing => Err(SpoolError::Closed),
            None => Ok(()),
        }
    }

    /// Writes may go on while closing (the last round writes what is staged).
    fn check_open_or_closing(&self) -> Result<(), SpoolError> {
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}

/// What the handle and the syncer share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Held while staged bytes are written, so that writes reach the files in staging order
    /// (a release after its append) while the state's lock is free for staging.
    write_lock: Mutex<()>,
    /// The mark up to which everything staged reached the OS (`State::written`, readable
    /// without the lock).
    written: AtomicU64,
    /// Wakes the syncer (something to sync, a waiter, closing).
    wake_syncer: Condvar,
    /// Signals a stopped syncer (for blocking waits).
    stopped: Condvar,
    /// Notified when the durable mark advances, the spool fails or the syncer stops.
    progress: event_listener::Event,
    durable: AtomicU64,
    dir: PathBuf,
    max_bytes: u64,
    policy: SyncPolicy,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `mark` as durable.
    fn publish(&self, mark: u64) {
        if self.durable.fetch_max(mark, Ordering::AcqRel) < mark {
            self.progress.notify(usize::MAX);
        }
    }

    /// After staging: the syncer is woken if it sleeps without a deadline (once per busy
    /// period, not per record), or at once when `urgent`.
    fn after_stage(&self, mut st: MutexGuard<'_, State>, urgent: bool) {
        st.nudged |= urgent;
        let wake = st.syncer_idle || urgent;
        st.syncer_idle &= !wake;
        drop(st);
        if wake {
            self.wake_syncer.notify_one();
        }
    }

    /// Writes everything staged up to `mark` (and whatever was staged after it, in the same
    /// `write`) unless that was written already. Under [`SyncPolicy::Never`], written is
    /// durable. A failure fails the spool (it takes no more records).
    fn write_through(&self, mark: u64) -> Result<(), SpoolError> {
        if self.written.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        // Another caller's write takes about a microsecond: spin for it rather than sleep
        // (a sleep and a wake-up cost more than the write), then look whether it took ours.
        let mut spins = 0u32;
        let _writing = loop {
            match self.write_lock.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if spins < WRITE_SPINS => {
                    spins += 1;
                    std::hint::spin_loop();
                    if self.written.load(Ordering::Acquire) >= mark {
                        return Ok(());
                    }
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    break self.write_lock.lock().unwrap_or_else(PoisonError::into_inner)
                }
            }
        };
        if self.written.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        let (chunks, active, mut bytes, upto) = {
            let mut st = self.lock();
            if st.written >= mark || !st.staged() {
                return Ok(());
            }
            st.check_open_or_closing()?;
            let spare = std::mem::take(&mut st.spare);
            let bytes = std::mem::replace(&mut st.buf, spare);
            (
                std::mem::take(&mut st.sealed_bufs),
                st.active.clone(),
                bytes,
                st.mark,
            )
        };
        let mut result = Ok(());
        for (file, chunk) in &chunks {
            if result.is_ok() {
                result = write_file(&self.state, file, chunk);
            }
        }
        if result.is_ok() {
            result = write_file(&self.state, &active, &bytes);
        }
        let mut st = self.lock();
        bytes.clear();
        if st.spare.capacity() < bytes.capacity() {
            st.spare = bytes;
        }
        if let Err(e) = result {
            let failure = st.fail(write_failed(&self.dir, &e));
            drop(st);
            self.progress.notify(usize::MAX);
            self.wake_syncer.notify_one();
            return Err(failure);
        }
        st.written = st.written.max(upto);
        st.dirty = true;
        self.written.store(st.written, Ordering::Release);
        drop(st);
        if self.policy == SyncPolicy::Never {
            self.publish(upto);
        }
        Ok(())
    }
}

/// An open spool: the handle callers append to and release from. Cheap to share behind an
/// `Arc`; every method takes `&self`. [`Spool::append`] writes to the OS (one `write`, no
/// sync); nothing a caller does waits for a sync (the syncer thread does them).
///
/// Dropping it without [`Spool::close`] still lets the syncer sync what was written,
/// waiting for it up to the close timeout; the files are consistent at every moment (a
/// record is either complete with its checksum or skipped as a torn tail).
pub struct Spool {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    close_timeout: Duration,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `options.dir`: takes the directory's lock, reads every
    /// segment and hands back the records that earlier processes left live, in their original
    /// order. Errors: [`SpoolError::Locked`] (another owner), [`SpoolError::NotWritable`],
    /// [`SpoolError::IncompatibleVersion`], [`SpoolError::Io`]. Damaged records are skipped
    /// and counted in [`Recovery::damage`](super::Recovery::damage), never an error.
    pub fn open(options: SpoolOptions) -> Result<(Spool, super::Recovery), SpoolError> {
        super::store::open(options)
    }

    pub(crate) fn start(options: &SpoolOptions, state: State, lock_file: File) -> Result<Spool, SpoolError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            write_lock: Mutex::new(()),
            written: AtomicU64::new(0),
            wake_syncer: Condvar::new(),
            stopped: Condvar::new(),
            progress: event_listener::Event::new(),
            durable: AtomicU64::new(0),
            dir: options.dir.clone(),
            max_bytes: options.max_bytes,
            policy: options.sync,
        });
        let syncer = Syncer {
            shared: shared.clone(),
            policy: options.sync,
            last_sync: Instant::now(),
            _lock_file: lock_file,
        };
        let thread = std::thread::Builder::new()
            .name("usageflow-spool-syncer".into())
            .spawn(move || syncer.run())
            .map_err(|e| SpoolError::io("starting the syncer thread for", &options.dir, &e))?;
        Ok(Spool {
            shared,
            thread: Some(thread),
            close_timeout: options.close_timeout,
        })
    }

    /// Appends a record under the next key and writes it to the OS before returning (one
    /// `write`, shared with concurrent callers; killing the process now loses nothing).
    /// Refused with [`SpoolError::Full`] when its encoded size would take the live bytes past
    /// `max_bytes` (counted in [`SpoolStats::refused_full`]), with
    /// [`SpoolError::WriteFailed`] when the write fails (then and ever after: a full or
    /// failing disk), [`SpoolError::Closed`] after close.
    pub fn append(&self, record: &SpoolRecord) -> Result<Appended, SpoolError> {
        let st = self.shared.lock();
        let key = SpoolKey(st.next_key);
        let appended = self.stage_locked(st, key, record)?;
        self.write_through(appended.mark)?;
        Ok(appended)
    }

    /// Writes `record` under a key the caller chose (replacing the live record with that key,
    /// if any), as [`Spool::append`] does. Keys must be unique among live records; a key
    /// whose record was released may be used again (the later write wins on recovery).
    pub fn put(&self, key: SpoolKey, record: &SpoolRecord) -> Result<Appended, SpoolError> {
        let appended = self.stage(key, record)?;
        self.write_through(appended.mark)?;
        Ok(appended)
    }

    /// Stages `record` under `key` as [`Spool::put`] does, without writing it: it reaches the
    /// OS with the next [`Spool::write_through`] (by any caller) or the syncer's next round.
    /// For a caller that holds a lock of its own: stage under it, write through after it.
    pub fn stage(&self, key: SpoolKey, record: &SpoolRecord) -> Result<Appended, SpoolError> {
        let st = self.shared.lock();
        self.stage_locked(st, key, record)
    }

    fn stage_locked(
        &self,
        mut st: MutexGuard<'_, State>,
        key: SpoolKey,
        record: &SpoolRecord,
    ) -> Result<Appended, SpoolError> {
        let mark = match st.stage(key.0, record, self.shared.max_bytes) {
            Ok(mark) => mark,
            Err(e) => {
                if matches!(e, SpoolError::WriteFailed { .. }) {
                    // A segment could not be created: the syncer logs it and stops.
                    drop(st);
                    self.shared.progress.notify(usize::MAX);
                    self.shared.wake_syncer.notify_one();
                }
                return Err(e);
            }
        };
        self.shared
            .after_stage(st, self.shared.policy == SyncPolicy::EverySend);
        Ok(Appended { key, mark })
    }

    /// Writes everything staged up to `mark` to the OS (one `write` for it and everything
    /// staged since; nothing if another caller wrote it already). After it returns `Ok`, a
    /// process crash loses nothing up to `mark`.
    pub fn write_through(&self, mark: DurableMark) -> Result<(), SpoolError> {
        self.shared.write_through(mark.0)
    }

    /// The key the next [`Spool::append`] uses: above every key any process wrote here.
    pub fn next_key(&self) -> SpoolKey {
        SpoolKey(self.shared.lock().next_key)
    }

    /// Releases a record (confirmed, expired, or dropped with a reason) and frees its bytes at
    /// once; its small release record goes out with the next write. Returns whether the key
    /// was live (a second release, or one after a failure or close, does nothing).
    pub fn release(&self, key: SpoolKey) -> bool {
        let mut st = self.shared.lock();
        match st.release(key.0) {
            Ok(released) => {
                if released && st.syncer_idle {
                    self.shared.after_stage(st, false);
                }
                released
            }
            Err(_) => false,
        }
    }

    /// The mark of everything appended or released so far (what `flush` waits for).
    pub fn written_mark(&self) -> DurableMark {
        DurableMark(self.shared.lock().mark)
    }

    /// Whether everything up to `mark` is durable.
    pub fn is_durable(&self, mark: DurableMark) -> bool {
        self.shared.durable.load(Ordering::Acquire) >= mark.0
    }

    /// `Some` once waiting for `mark` is over: durable (`Ok(true)`), or the spool failed or
    /// stopped first.
    fn durable_or_failed(&self, mark: DurableMark) -> Option<Result<bool, SpoolError>> {
        if self.is_durable(mark) {
            return Some(Ok(true));
        }
        let st = self.shared.lock();
        if let Some(failure) = &st.failure {
            return Some(Err(failure.clone()));
        }
        st.stopped.then_some(Err(SpoolError::Closed))
    }

    /// Asks the syncer for durability now (it still keeps group commit's interval).
    fn nudge(&self) {
        let mut st = self.shared.lock();
        if !st.nudged {
            st.nudged = true;
            st.syncer_idle = false;
            drop(st);
            self.shared.wake_syncer.notify_one();
        }
    }

    /// Waits until everything up to `mark` is durable or `deadline` (any runtime's timer,
    /// e.g. `runtime.sleep_until(t)`) fires. `Ok(true)`: durable; `Ok(false)`: the deadline
    /// came first; `Err`: the spool failed (the records up to `mark` may not be on disk)
    /// or closed before making them durable.
    pub async fn wait_durable(&self, mark: DurableMark, deadline: impl Future) -> Result<bool, SpoolError> {
        if !self.is_durable(mark) {
            self.nudge();
        }
        let settled =
            progress_or_deadline(&self.shared.progress, deadline, || self.durable_or_failed(mark)).await;
        settled.unwrap_or_else(|| Ok(self.is_durable(mark)))
    }

    /// [`Spool::wait_durable`] for synchronous callers (a `send` under
    /// [`SyncPolicy::EverySend`]): blocks the calling thread until everything up to `mark`
    /// is durable or `deadline` passes.
    pub fn wait_durable_blocking(&self, mark: DurableMark, deadline: Instant) -> Result<bool, SpoolError> {
        use event_listener::Listener;
        if !self.is_durable(mark) {
            self.nudge();
        }
        loop {
            let listener = self.shared.progress.listen();
            if let Some(done) = self.durable_or_failed(mark) {
                return done;
            }
            if listener.wait_deadline(deadline).is_none() {
                return Ok(self.is_durable(mark));
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SpoolStats {
        let mut st = self.shared.lock();
        let mut stats = st.stats.clone();
        stats.records = st.live.len() as u64;
        stats.live_bytes = st.live_bytes;
        stats.disk_bytes = st.disk_bytes;
        stats.segments = st.segs.len() as u64;
        stats.oldest_first_sent_unix_ms = st.oldest_live().map(|l| l.first_sent_unix_ms);
        stats.durable = DurableMark(self.shared.durable.load(Ordering::Acquire));
        stats.written = DurableMark(st.mark);
        stats
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Closes the spool: the syncer writes and syncs everything, then releases the
    /// directory's lock. Waits until `deadline` (any runtime's timer) at most; then
    /// [`SpoolError::CloseTimedOut`] (the syncer still finishes on its own).
    pub async fn close(mut self, deadline: impl Future) -> Result<(), SpoolError> {
        self.begin_close();
        let shared = self.shared.clone();
        let stopped =
            progress_or_deadline(&shared.progress, deadline, || shared.lock().stopped.then_some(())).await;
        if stopped.is_none() {
            self.thread = None;
            return Err(SpoolError::CloseTimedOut);
        }
        self.finish()
    }

    /// [`Spool::close`] for synchronous callers: blocks up to the close timeout.
    pub fn close_blocking(mut self) -> Result<(), SpoolError> {
        self.begin_close();
        if !self.wait_stopped() {
            self.thread = None;
            return Err(SpoolError::CloseTimedOut);
        }
        self.finish()
    }

    fn begin_close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake_syncer.notify_one();
    }

    fn wait_stopped(&self) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .stopped
            .wait_timeout_while(st, self.close_timeout, |st| !st.stopped)
            .unwrap_or_else(PoisonError::into_inner);
        st.stopped
    }

    /// Joins the stopped syncer; reports the spool's failure, if any.
    fn finish(&mut self) -> Result<(), SpoolError> {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match self.shared.lock().failure.clone() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_write_error(&self, kind: io::ErrorKind) {
        self.shared.lock().inject_write_error = Some(kind);
    }

    #[cfg(test)]
    pub(crate) fn pause_syncer(&self, paused: bool) {
        self.shared.lock().syncer_paused = paused;
        self.shared.wake_syncer.notify_one();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.begin_close();
            if self.wait_stopped() {
                let _ = self.finish();
            } else {
                tracing::warn!(dir = %self.shared.dir.display(), "spool syncer still busy after the close timeout");
            }
        }
    }
}

/// The syncer thread's own state.
struct Syncer {
    shared: Arc<Shared>,
    policy: SyncPolicy,
    last_sync: Instant,
    /// Holds the directory's lock until the syncer stops.
    _lock_file: File,
}

impl Syncer {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            #[cfg(test)]
            if st.syncer_paused && !st.closing {
                st = shared
                    .wake_syncer
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            if let Some(failure) = st.failure.clone() {
                drop(st);
                tracing::error!(error = %failure, "spool write failed; the spool takes no more records");
                st = shared.lock();
                while !st.closing {
                    st = shared
                        .wake_syncer
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                drop(st);
                break;
            }
            let closing = st.closing;
            if !closing {
                if !st.has_work() {
                    st.nudged = false;
                    st.syncer_idle = true;
                    st = shared
                        .wake_syncer
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                    st.syncer_idle = false;
                    continue;
                }
                let due = match self.policy {
                    SyncPolicy::Group(interval) => self.last_sync + interval,
                    SyncPolicy::EverySend => self.last_sync,
                    SyncPolicy::Never if st.nudged => self.last_sync,
                    SyncPolicy::Never => self.last_sync + NEVER_TICK,
                };
                let now = Instant::now();
                if now < due {
                    st = shared
                        .wake_syncer
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
            }
            st.nudged = false;
            drop(st);
            let result = self.round(closing);
            if let Err(failure) = result {
                shared.lock().fail(failure);
                shared.progress.notify(usize::MAX);
            }
            if closing {
                break;
            }
            st = shared.lock();
        }
        shared.lock().stopped = true;
        shared.stopped.notify_all();
        shared.progress.notify(usize::MAX);
    }

    /// One round: compacts (unless closing), writes the batched releases, syncs everything
    /// written (not under [`SyncPolicy::Never`], except before deleting a segment or at
    /// close), deletes dead segments, then publishes the durable mark.
    fn round(&mut self, closing: bool) -> Result<(), SpoolError> {
        if !closing {
            self.compact()?;
        }
        self.shared.write_through(u64::MAX)?;
        let (mark, files, dir_dirty, deletes) = {
            let mut st = self.shared.lock();
            let mut files = std::mem::take(&mut st.sealed);
            if st.dirty {
                files.push(st.active.clone());
            }
            st.dirty = false;
            (
                st.written,
                files,
                std::mem::take(&mut st.dir_dirty),
                std::mem::take(&mut st.deletes),
            )
        };
        let sync = self.policy != SyncPolicy::Never || !deletes.is_empty() || closing;
        if sync {
            for file in &files {
                file.sync_data().map_err(|e| write_failed(&self.shared.dir, &e))?;
            }
            if dir_dirty {
                sync_dir(&self.shared.dir).map_err(|e| write_failed(&self.shared.dir, &e))?;
            }
            self.shared.lock().stats.syncs += 1;
        } else if dir_dirty {
            self.shared.lock().dir_dirty = true;
        }
        self.last_sync = Instant::now();
        if !deletes.is_empty() {
            // Everything copied out of these segments, and every release, is durable now.
            for &seg in &deletes {
                let path = segment_path(&self.shared.dir, seg);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SpoolError::io("deleting", path, &e)),
                }
            }
            let mut st = self.shared.lock();
            st.stats.segments_deleted += deletes.len() as u64;
            // The deletions' directory entries are synced next round.
            st.dir_dirty = true;
            st.dirty = !closing;
        }
        self.shared.publish(mark);
        Ok(())
    }

    /// When dead bytes outgrow live ones, copies the live records of the oldest segment
    /// forward (same keys) so that it can be deleted: disk stays bounded even when one old
    /// record outlives a steady, confirmed stream.
    fn compact(&mut self) -> Result<(), SpoolError> {
        // A few segments per round: each copy usually lets a run of released segments go.
        for _ in 0..16 {
            if !self.compact_oldest()? {
                break;
            }
        }
        Ok(())
    }

    /// Compacts the oldest segment if dead bytes outgrew live ones; whether it did.
    fn compact_oldest(&mut self) -> Result<bool, SpoolError> {
        let seg = {
            let st = self.shared.lock();
            match st.segs.first_key_value() {
                Some((&seg, _)) if st.compaction_due() => seg,
                _ => return Ok(false),
            }
        };
        let path = segment_path(&self.shared.dir, seg);
        let scan = std::fs::read(&path)
            .ok()
            .and_then(|bytes| format::scan_segment(&bytes).ok());
        let Some(scan) = scan else {
            self.shared.lock().compaction_blocked = Some(seg);
            return Ok(false);
        };
        let mut st = self.shared.lock();
        for entry in scan.entries {
            let format::SegmentEntry::Append(key, record) = entry else {
                continue;
            };
            if st.live.get(&key.0).is_none_or(|l| l.seg != seg) {
                continue;
            }
            let len = format::append_len(&record) as u64;
            st.roll_if_needed(len)?;
            let active = st.active_seg;
            format::encode_append(&mut st.buf, key, &record);
            st.grew(active, len);
            if let Some(live) = st.live.get_mut(&key.0) {
                live.seg = active;
            }
            st.seg_live(seg, -1);
            st.seg_live(active, 1);
            st.stats.compacted += 1;
        }
        // The copies are not new appends or releases (the mark does not move); they are
        // written with the round's write and synced before the segment they left is deleted.
        st.dirty = true;
        st.reclaim();
        // Deleted (queued) unless a live record could not be read back from it.
        let emptied = !st.segs.contains_key(&seg);
        if !emptied {
            st.compaction_blocked = Some(seg);
        }
        Ok(emptied)
    }
}

/// Waits until `check` gives an answer (looked at after every notification of `progress`)
/// or `deadline` fires (then one last look).
async fn progress_or_deadline<T>(
    progress: &event_listener::Event,
    deadline: impl Future,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let mut deadline = pin!(deadline);
    loop {
        let listener = progress.listen();
        if let Some(answer) = check() {
            return Some(answer);
        }
        let mut listener = pin!(listener);
        let timed_out = poll_fn(|cx| {
            if listener.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            deadline.as_mut().poll(cx).map(|_| true)
        })
        .await;
        if timed_out {
            return check();
        }
    }
}

/// Writes `bytes` to `file` (tests inject a failure through the state).
fn write_file(state: &Mutex<State>, file: &File, bytes: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    {
        let st = state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kind) = st.inject_write_error {
            return Err(io::Error::from(kind));
        }
    }
    #[cfg(not(test))]
    let _ = state;
    let mut file = file;
    file.write_all(bytes)
}

fn write_failed(path: &Path, err: &io::Error) -> SpoolError {
    SpoolError::WriteFailed {
        kind: err.kind(),
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}
