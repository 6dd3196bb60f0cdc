//! The [`Spool`] handle and its writer thread.
//!
//! Callers encode records into a shared write buffer under one short lock (key, accounting and
//! bytes stay in one order); the writer thread swaps the buffer out, writes it with one
//! `write` per segment, syncs at most once per interval and publishes the durable mark.

use super::format::{self, HEADER_LEN, RELEASE_LEN};
use super::store::{segment_path, sync_dir};
use super::{SpoolError, SpoolKey, SpoolOptions, SpoolRecord, SyncPolicy};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The writer may fall this far behind even when `max_bytes` is smaller (release records
/// and segment headers are not live bytes).
const MIN_BACKLOG_BYTES: u64 = 8 << 20;

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
    /// Appends refused because the writer fell `max_bytes` behind (a stalled disk).
    pub refused_backlogged: u64,
    /// `fdatasync` rounds made by the writer.
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

/// A segment file's accounting.
#[derive(Debug, Default)]
pub(crate) struct SegAcct {
    pub(crate) live_records: u64,
    pub(crate) bytes: u64,
}

/// Work for the writer thread, in order.
enum Op {
    /// Append these bytes to this segment (creating it on the first write).
    Write { seg: u64, bytes: Vec<u8> },
    /// Sync everything written so far, then delete this segment.
    Delete { seg: u64 },
}

/// Everything the callers and the writer share, behind one lock.
pub(crate) struct State {
    next_key: u64,
    mark: u64,
    live: BTreeMap<u64, Live>,
    segs: BTreeMap<u64, SegAcct>,
    active_seg: u64,
    live_bytes: u64,
    disk_bytes: u64,
    ops: Vec<Op>,
    /// Bytes in `ops` (the writer has not taken them yet): bounded by `max_bytes`.
    pending_bytes: u64,
    failure: Option<SpoolError>,
    closing: bool,
    stopped: bool,
    writer_idle: bool,
    stats: SpoolStats,
    #[cfg(test)]
    pub(crate) inject_write_error: Option<io::ErrorKind>,
}

impl State {
    /// The state after recovery: `live` maps each recovered key to its segment, record bytes
    /// and first send time; `segs` holds every segment file, the active one last.
    pub(crate) fn recovered(
        next_key: u64,
        live: impl IntoIterator<Item = (u64, u64, u32, u64)>,
        segs: BTreeMap<u64, SegAcct>,
        active_seg: u64,
    ) -> State {
        let mut state = State {
            next_key,
            mark: 0,
            live: BTreeMap::new(),
            segs,
            active_seg,
            live_bytes: 0,
            disk_bytes: 0,
            ops: Vec::new(),
            pending_bytes: 0,
            failure: None,
            closing: false,
            stopped: false,
            writer_idle: false,
            stats: SpoolStats::default(),
            #[cfg(test)]
            inject_write_error: None,
        };
        for (key, seg, bytes, first_sent_unix_ms) in live {
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

    /// The write buffer for `seg` (the last op if it writes there, else a new one).
    fn buffer(&mut self, seg: u64) -> &mut Vec<u8> {
        let reuse = matches!(self.ops.last(), Some(Op::Write { seg: s, .. }) if *s == seg);
        if !reuse {
            self.ops.push(Op::Write {
                seg,
                bytes: Vec::with_capacity(16 << 10),
            });
        }
        match self.ops.last_mut() {
            Some(Op::Write { bytes, .. }) => bytes,
            _ => unreachable!("a write op was just ensured"),
        }
    }

    /// Seals the active segment and begins the next when `len` more bytes would overflow it.
    fn roll_if_needed(&mut self, len: u64, segment_bytes: u64) {
        let active_bytes = self.segs.get(&self.active_seg).map_or(0, |s| s.bytes);
        if active_bytes + len <= segment_bytes || active_bytes <= HEADER_LEN as u64 {
            return;
        }
        self.active_seg += 1;
        let seg = self.active_seg;
        let base_key = self.next_key;
        format::encode_header(self.buffer(seg), base_key);
        self.segs.insert(
            seg,
            SegAcct {
                live_records: 0,
                bytes: HEADER_LEN as u64,
            },
        );
        self.disk_bytes += HEADER_LEN as u64;
        self.reclaim();
    }

    /// Records `len` bytes written to `seg`.
    fn grew(&mut self, seg: u64, len: u64) {
        if let Some(acct) = self.segs.get_mut(&seg) {
            acct.bytes += len;
        }
        self.disk_bytes += len;
        self.pending_bytes += len;
        self.mark += 1;
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
            self.ops.push(Op::Delete { seg });
        }
    }

    fn check_open(&self) -> Result<(), SpoolError> {
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None if self.closing => Err(SpoolError::Closed),
            None => Ok(()),
        }
    }
}

/// What the handle and the writer share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (work queued, closing).
    wake_writer: Condvar,
    /// Signals a stopped writer (for blocking waits).
    stopped: Condvar,
    /// Notified when the durable mark advances, the writer fails or it stops.
    progress: event_listener::Event,
    durable: AtomicU64,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open spool: the handle callers append to and release from. Cheap to share behind an
/// `Arc`; every method takes `&self` and none waits for the disk (the writer thread does).
///
/// Dropping it without [`Spool::close`] still lets the writer write and sync what was
/// appended, waiting for it up to the close timeout; the files are consistent at every
/// moment (a record is either complete with its checksum or skipped as a torn tail).
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

    pub(crate) fn start(
        options: &SpoolOptions,
        state: State,
        active: File,
        lock_file: File,
    ) -> Result<Spool, SpoolError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake_writer: Condvar::new(),
            stopped: Condvar::new(),
            progress: event_listener::Event::new(),
            durable: AtomicU64::new(0),
            dir: options.dir.clone(),
            max_bytes: options.max_bytes,
            segment_bytes: options.segment_bytes.max(4096),
        });
        let active_seg = shared.lock().active_seg;
        let writer = Writer {
            shared: shared.clone(),
            policy: options.sync,
            current: Some((active_seg, active)),
            sealed: Vec::new(),
            dirty: false,
            dir_dirty: false,
            last_sync: Instant::now(),
            _lock_file: lock_file,
        };
        let thread = std::thread::Builder::new()
            .name("usageflow-spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::io("starting the writer thread for", &options.dir, &e))?;
        Ok(Spool {
            shared,
            thread: Some(thread),
            close_timeout: options.close_timeout,
        })
    }

    /// Appends a record: assigns its key and queues its bytes for the writer, at once.
    /// Refused with [`SpoolError::Full`] when its encoded size would take the live bytes past
    /// `max_bytes` (counted in [`SpoolStats::refused_full`]), with [`SpoolError::Backlogged`]
    /// when the writer is `max_bytes` (at least 8 MiB) behind (counted in [`SpoolStats::refused_backlogged`]), with
    /// [`SpoolError::WriteFailed`] once the writer failed, [`SpoolError::Closed`] after close.
    pub fn append(&self, record: &SpoolRecord) -> Result<Appended, SpoolError> {
        let len = format::append_len(record) as u64;
        let shared = &*self.shared;
        let mut st = shared.lock();
        st.check_open()?;
        if st.live_bytes + len > shared.max_bytes {
            st.stats.refused_full += 1;
            return Err(SpoolError::Full {
                live_bytes: st.live_bytes,
                record_bytes: len,
                max_bytes: shared.max_bytes,
            });
        }
        let max_pending = shared.max_bytes.max(MIN_BACKLOG_BYTES);
        if st.pending_bytes + len > max_pending {
            st.stats.refused_backlogged += 1;
            return Err(SpoolError::Backlogged {
                pending_bytes: st.pending_bytes,
                max_bytes: max_pending,
            });
        }
        format::check_append(record).map_err(|e| SpoolError::RecordTooLarge(e.to_string()))?;
        st.roll_if_needed(len, shared.segment_bytes);
        let key = SpoolKey(st.next_key);
        let seg = st.active_seg;
        format::encode_append(st.buffer(seg), key, record);
        st.next_key += 1;
        st.grew(seg, len);
        st.live_bytes += len;
        if let Some(acct) = st.segs.get_mut(&seg) {
            acct.live_records += 1;
        }
        st.live.insert(
            key.0,
            Live {
                seg,
                bytes: len as u32,
                first_sent_unix_ms: record.first_sent_unix_ms,
            },
        );
        st.stats.appended += 1;
        let mark = DurableMark(st.mark);
        self.wake(st);
        Ok(Appended { key, mark })
    }

    /// Releases a record (confirmed, expired, or dropped with a reason): queues a small
    /// release record and frees its bytes at once. Returns whether the key was live (a
    /// second release, or one after a failure or close, does nothing).
    pub fn release(&self, key: SpoolKey) -> bool {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.check_open().is_err() {
            return false;
        }
        let Some(live) = st.live.remove(&key.0) else {
            return false;
        };
        st.live_bytes -= u64::from(live.bytes);
        if let Some(acct) = st.segs.get_mut(&live.seg) {
            acct.live_records -= 1;
        }
        st.roll_if_needed(RELEASE_LEN as u64, shared.segment_bytes);
        let seg = st.active_seg;
        format::encode_release(st.buffer(seg), key);
        st.grew(seg, RELEASE_LEN as u64);
        st.stats.released += 1;
        st.reclaim();
        self.wake(st);
        true
    }

    fn wake(&self, mut st: MutexGuard<'_, State>) {
        if st.writer_idle {
            st.writer_idle = false;
            drop(st);
            self.shared.wake_writer.notify_one();
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

    /// `Some` once waiting for `mark` is over: durable (`Ok(true)`), or the writer failed or
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

    /// Waits until everything up to `mark` is durable or `deadline` (any runtime's timer,
    /// e.g. `runtime.sleep_until(t)`) fires. `Ok(true)`: durable; `Ok(false)`: the deadline
    /// came first; `Err`: the writer failed (the records up to `mark` may not be on disk)
    /// or the spool closed before making them durable.
    pub async fn wait_durable(&self, mark: DurableMark, deadline: impl Future) -> Result<bool, SpoolError> {
        let mut deadline = pin!(deadline);
        loop {
            let listener = self.shared.progress.listen();
            if let Some(done) = self.durable_or_failed(mark) {
                return done;
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
                return Ok(self.is_durable(mark));
            }
        }
    }

    /// [`Spool::wait_durable`] for synchronous callers (a `send` under
    /// [`SyncPolicy::EverySend`]): blocks the calling thread until everything up to `mark`
    /// is durable or `deadline` passes.
    pub fn wait_durable_blocking(&self, mark: DurableMark, deadline: Instant) -> Result<bool, SpoolError> {
        use event_listener::Listener;
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
        let st = self.shared.lock();
        let mut stats = st.stats.clone();
        stats.records = st.live.len() as u64;
        stats.live_bytes = st.live_bytes;
        stats.disk_bytes = st.disk_bytes;
        stats.segments = st.segs.len() as u64;
        stats.oldest_first_sent_unix_ms = st.live.first_key_value().map(|(_, l)| l.first_sent_unix_ms);
        stats.durable = DurableMark(self.shared.durable.load(Ordering::Acquire));
        stats.written = DurableMark(st.mark);
        stats
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Closes the spool: the writer writes and syncs everything queued, then releases the
    /// directory's lock. Waits until `deadline` (any runtime's timer) at most; then
    /// [`SpoolError::CloseTimedOut`] (the writer still finishes on its own).
    pub async fn close(mut self, deadline: impl Future) -> Result<(), SpoolError> {
        self.begin_close();
        let mut deadline = pin!(deadline);
        loop {
            let listener = self.shared.progress.listen();
            if self.shared.lock().stopped {
                break;
            }
            let mut listener = pin!(listener);
            let timed_out = poll_fn(|cx| {
                if listener.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                deadline.as_mut().poll(cx).map(|_| true)
            })
            .await;
            if timed_out && !self.shared.lock().stopped {
                self.thread = None;
                return Err(SpoolError::CloseTimedOut(self.close_timeout));
            }
        }
        self.finish()
    }

    /// [`Spool::close`] for synchronous callers: blocks up to the close timeout.
    pub fn close_blocking(mut self) -> Result<(), SpoolError> {
        self.begin_close();
        if !self.wait_stopped() {
            self.thread = None;
            return Err(SpoolError::CloseTimedOut(self.close_timeout));
        }
        self.finish()
    }

    fn begin_close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
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

    /// Joins the stopped writer; reports its failure, if any.
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
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.begin_close();
            if self.wait_stopped() {
                let _ = self.finish();
            } else {
                tracing::warn!(dir = %self.shared.dir.display(), "spool writer still busy after the close timeout");
            }
        }
    }
}

/// The writer thread's own state.
struct Writer {
    shared: Arc<Shared>,
    policy: SyncPolicy,
    /// The segment being written.
    current: Option<(u64, File)>,
    /// Segments sealed since the last sync (synced at the next one).
    sealed: Vec<File>,
    dirty: bool,
    dir_dirty: bool,
    last_sync: Instant,
    /// Holds the directory's lock until the writer stops.
    _lock_file: File,
}

impl Writer {
    fn run(mut self) {
        let mut ops = Vec::new();
        loop {
            let Some((mark, closing)) = self.take_work(&mut ops) else {
                if self.shared.lock().failure.is_some() {
                    self.wait_for_close();
                    break;
                }
                continue;
            };
            let result = self.write_all(&mut ops).and_then(|()| {
                if !closing {
                    self.compact();
                }
                if self.sync_due(closing) {
                    self.sync()?;
                }
                Ok(())
            });
            ops.clear();
            match result {
                Ok(()) => {
                    if !self.dirty || self.policy == SyncPolicy::Never {
                        self.publish(mark);
                    }
                }
                Err(failure) => {
                    tracing::error!(error = %failure, "spool writer failed; the spool takes no more records");
                    self.shared.lock().failure = Some(failure);
                    self.shared.progress.notify(usize::MAX);
                    self.wait_for_close();
                    break;
                }
            }
            if closing {
                break;
            }
        }
        self.shared.lock().stopped = true;
        self.shared.stopped.notify_all();
        self.shared.progress.notify(usize::MAX);
    }

    /// Waits for work (or a due sync); takes the queued ops. `None`: a sync came due with
    /// nothing new (done here, look again).
    fn take_work(&mut self, ops: &mut Vec<Op>) -> Option<(u64, bool)> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            if !st.ops.is_empty() || st.closing {
                break;
            }
            match self.sync_deadline() {
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        let mark = st.mark;
                        drop(st);
                        match self.sync() {
                            Ok(()) => self.publish(mark),
                            Err(failure) => {
                                shared.lock().failure = Some(failure);
                                shared.progress.notify(usize::MAX);
                            }
                        }
                        return None;
                    }
                    st.writer_idle = true;
                    st = shared
                        .wake_writer
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    st.writer_idle = true;
                    st = shared
                        .wake_writer
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        st.writer_idle = false;
        std::mem::swap(&mut st.ops, ops);
        st.pending_bytes = 0;
        Some((st.mark, st.closing))
    }

    /// When unsynced writes must be synced, if there are any.
    fn sync_deadline(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        match self.policy {
            SyncPolicy::Group(interval) => Some(self.last_sync + interval),
            SyncPolicy::EverySend => Some(self.last_sync),
            SyncPolicy::Never => None,
        }
    }

    fn sync_due(&self, closing: bool) -> bool {
        self.dirty && (closing || self.sync_deadline().is_some_and(|due| Instant::now() >= due))
    }

    fn write_all(&mut self, ops: &mut [Op]) -> Result<(), SpoolError> {
        for op in ops.iter_mut() {
            match op {
                Op::Write { seg, bytes } => self.write(*seg, bytes)?,
                Op::Delete { seg } => {
                    // Copies moved out of it and release records must be on disk first.
                    if self.dirty {
                        self.sync()?;
                    }
                    let path = segment_path(&self.shared.dir, *seg);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(SpoolError::io("deleting", path, &e)),
                    }
                    self.dir_dirty = true;
                    self.shared.lock().stats.segments_deleted += 1;
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, seg: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        if self.current.as_ref().map(|(s, _)| *s) != Some(seg) {
            let path = segment_path(&self.shared.dir, seg);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| SpoolError::io("creating", &path, &e))?;
            self.dir_dirty = true;
            if let Some((_, old)) = self.current.replace((seg, file)) {
                self.sealed.push(old);
            }
        }
        let Some((_, file)) = self.current.as_mut() else {
            unreachable!("opened above")
        };
        #[cfg(test)]
        if let Some(kind) = self.shared.lock().inject_write_error {
            let path = segment_path(&self.shared.dir, seg);
            return Err(write_failed(&path, &io::Error::from(kind)));
        }
        file.write_all(bytes)
            .map_err(|e| write_failed(&segment_path(&self.shared.dir, seg), &e))?;
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SpoolError> {
        for file in self.sealed.drain(..) {
            file.sync_data().map_err(|e| write_failed(&self.shared.dir, &e))?;
        }
        if let Some((seg, file)) = &self.current {
            file.sync_data()
                .map_err(|e| write_failed(&segment_path(&self.shared.dir, *seg), &e))?;
        }
        if self.dir_dirty {
            sync_dir(&self.shared.dir).map_err(|e| write_failed(&self.shared.dir, &e))?;
            self.dir_dirty = false;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        self.shared.lock().stats.syncs += 1;
        Ok(())
    }

    fn publish(&self, mark: u64) {
        if self.shared.durable.fetch_max(mark, Ordering::AcqRel) < mark {
            self.shared.progress.notify(usize::MAX);
        }
    }

    fn wait_for_close(&self) {
        let mut st = self.shared.lock();
        while !st.closing {
            st = self
                .shared
                .wake_writer
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// When dead bytes outgrow live ones, copies the live records of the oldest segment
    /// forward (same keys) so that it can be deleted: disk stays bounded even when one old
    /// record outlives a steady, confirmed stream.
    fn compact(&mut self) {
        // A few segments per round: each copy usually lets a run of released segments go.
        for _ in 0..16 {
            if !self.compact_oldest() {
                break;
            }
        }
    }

    /// Compacts the oldest segment if dead bytes outgrew live ones; whether it did.
    fn compact_oldest(&mut self) -> bool {
        let seg = {
            let st = self.shared.lock();
            let budget = 2 * st.live_bytes + 2 * self.shared.segment_bytes;
            match st.segs.first_key_value() {
                Some((&seg, acct))
                    if st.disk_bytes > budget && seg != st.active_seg && acct.live_records > 0 =>
                {
                    seg
                }
                _ => return false,
            }
        };
        let path = segment_path(&self.shared.dir, seg);
        let Ok(bytes) = std::fs::read(&path) else {
            return false;
        };
        let Ok(scan) = format::scan_segment(&bytes) else {
            return false;
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
            st.roll_if_needed(len, self.shared.segment_bytes);
            let active = st.active_seg;
            format::encode_append(st.buffer(active), key, &record);
            st.grew(active, len);
            if let Some(live) = st.live.get_mut(&key.0) {
                live.seg = active;
            }
            for (s, delta) in [(seg, -1i64), (active, 1)] {
                if let Some(acct) = st.segs.get_mut(&s) {
                    acct.live_records = acct.live_records.saturating_add_signed(delta);
                }
            }
            st.stats.compacted += 1;
        }
        st.reclaim();
        // Deleted (queued) unless a live record could not be read back from it.
        !st.segs.contains_key(&seg)
    }
}

fn write_failed(path: &Path, err: &io::Error) -> SpoolError {
    SpoolError::WriteFailed {
        kind: err.kind(),
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}
