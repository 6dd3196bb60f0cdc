//! Shared, lock-light counters of everything the server saw and did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::recording::{ReceivedFrame, Recorder};

use usageflow_socket_core::messages::{
    GET_APPLICATION_CONFIG, GET_APPLICATION_POLICIES, GET_BLOCKED_ENDPOINTS, REPORT_CALL_CHAIN,
    REQUEST_FOR_ALLOCATION, USE_ALLOCATION,
};

/// The message types of [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md), counted with plain atomics; others go to a locked map.
const KNOWN: [&str; 6] = [
    REQUEST_FOR_ALLOCATION,
    USE_ALLOCATION,
    GET_APPLICATION_POLICIES,
    GET_APPLICATION_CONFIG,
    GET_BLOCKED_ENDPOINTS,
    REPORT_CALL_CHAIN,
];

/// How many close codes are remembered (the oldest are forgotten first).
const MAX_CLOSE_CODES: usize = 4096;

/// A per-message-type counter: atomics for the known types, a map for the rest.
#[derive(Debug, Default)]
struct PerType {
    known: [AtomicU64; 6],
    other: Mutex<BTreeMap<String, u64>>,
}

impl PerType {
    fn add(&self, kind: &str) {
        match KNOWN.iter().position(|k| *k == kind) {
            Some(i) => {
                self.known[i].fetch_add(1, Relaxed);
            }
            None => {
                let mut map = self.other.lock().unwrap_or_else(|e| e.into_inner());
                *map.entry(kind.to_owned()).or_insert(0) += 1;
            }
        }
    }

    fn get(&self, kind: &str) -> u64 {
        match KNOWN.iter().position(|k| *k == kind) {
            Some(i) => self.known[i].load(Relaxed),
            None => {
                let map = self.other.lock().unwrap_or_else(|e| e.into_inner());
                map.get(kind).copied().unwrap_or(0)
            }
        }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = self.other.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, k) in KNOWN.iter().enumerate() {
            let n = self.known[i].load(Relaxed);
            if n > 0 {
                out.insert((*k).to_owned(), n);
            }
        }
        out
    }
}

/// Everything the server counts. Shared by all connections and kept across
/// [`restart`](super::ServerHandle::restart). Read single values with the getters, or take a
/// consistent-enough [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) tcp_accepted: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) forged_pongs_sent: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) handshakes_hung: AtomicU64,
    pub(crate) open_connections: AtomicU64,
    pub(crate) text_frames_received: AtomicU64,
    pub(crate) binary_frames_received: AtomicU64,
    pub(crate) invalid_frames_received: AtomicU64,
    requests: PerType,
    fire_and_forget: PerType,
    pub(crate) replies_sent: AtomicU64,
    pub(crate) denials_sent: AtomicU64,
    pub(crate) replies_dropped: AtomicU64,
    pub(crate) duplicates_sent: AtomicU64,
    pub(crate) garbage_sent: AtomicU64,
    pub(crate) binary_sent: AtomicU64,
    pub(crate) stray_sent: AtomicU64,
    pub(crate) pushes_sent: AtomicU64,
    pub(crate) pings_received: AtomicU64,
    pub(crate) pongs_received: AtomicU64,
    pub(crate) pongs_suppressed: AtomicU64,
    pub(crate) closes_sent: AtomicU64,
    pub(crate) connections_dropped: AtomicU64,
    pub(crate) connections_frozen: AtomicU64,
    pub(crate) connections_aborted: AtomicU64,
    close_codes: Mutex<Vec<Option<u16>>>,
    /// Whether fire-and-forget `allocationId`s are recorded (off: no lock on the hot path).
    recording_ids: AtomicBool,
    allocation_ids: Mutex<BTreeMap<String, u64>>,
    /// The received frames, when a test asked for them ([`Counters::record_frames`]).
    pub(crate) recorder: Recorder,
    pub(crate) last_key_present: AtomicBool,
    last_user_agent: Mutex<Option<String>>,
    /// Server-wide reply sequence, the clock of the every-n faults.
    pub(crate) reply_seq: AtomicU64,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CountersSnapshot {
    /// TCP connections accepted (before any handshake).
    pub tcp_accepted: u64,
    /// WebSocket upgrades accepted.
    pub connections_accepted: u64,
    /// Upgrades refused: 401 (missing or wrong key, or `reject_handshakes`), or the
    /// `handshake_status` fault's status.
    pub handshakes_rejected: u64,
    /// Handshakes that failed otherwise (TLS error, bad request, timeout, peer gone).
    pub handshakes_failed: u64,
    /// TCP connections held without an answer (`hang_handshakes`).
    pub handshakes_hung: u64,
    /// WebSocket connections open now.
    pub open_connections: u64,
    /// Text frames received.
    pub text_frames_received: u64,
    /// Binary frames received (not part of the protocol).
    pub binary_frames_received: u64,
    /// Text frames that were not a JSON object with a string `type`.
    pub invalid_frames_received: u64,
    /// Requests (frames with an `id`) received, per type. Each is answered with a reply or a
    /// denial unless a fault drops it.
    pub requests: BTreeMap<String, u64>,
    /// Fire-and-forget messages (no `id`, or `report_call_chain`) received, per type.
    pub fire_and_forget: BTreeMap<String, u64>,
    /// Reply frames sent, duplicates and denials included.
    pub replies_sent: u64,
    /// Denials (`"type":"error"`) among the replies.
    pub denials_sent: u64,
    /// Replies dropped by `drop_every`.
    pub replies_dropped: u64,
    /// Extra copies sent by `duplicate_replies`.
    pub duplicates_sent: u64,
    /// Non-JSON text frames sent.
    pub garbage_sent: u64,
    /// Binary frames sent.
    pub binary_sent: u64,
    /// Stray replies (to unknown ids) sent.
    pub stray_sent: u64,
    /// Unsolicited frames pushed by `push_frames`.
    pub pushes_sent: u64,
    /// Pings received.
    pub pings_received: u64,
    /// Pongs received.
    pub pongs_received: u64,
    /// Pongs filtered out by `no_pongs`.
    pub pongs_suppressed: u64,
    /// Close frames sent by the server (faults and shutdown).
    pub closes_sent: u64,
    /// Connections dropped abruptly by `drop_after_messages` or `drop_once_on`.
    pub connections_dropped: u64,
    /// Connections that froze.
    pub connections_frozen: u64,
    /// Connections aborted (socket reset, no close frame, unread messages lost) by
    /// [`abort_connections`](super::ServerHandle::abort_connections), `abort_after_messages` or
    /// `abort_every_ms`, counting those still in their handshake.
    pub connections_aborted: u64,
    /// The codes of the close frames received, oldest first (`None`: a close without a code).
    pub close_codes: Vec<Option<u16>>,
    /// Whether the last upgrade request carried an `x-usage-key` header.
    pub last_key_present: bool,
    /// The `user-agent` of the last upgrade request.
    pub last_user_agent: Option<String>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_request(&self, kind: &str) {
        self.requests.add(kind);
    }

    pub(crate) fn count_fire_and_forget(&self, kind: &str) {
        self.fire_and_forget.add(kind);
    }

    /// Whether fire-and-forget `allocationId`s are being recorded.
    pub(crate) fn recording_allocation_ids(&self) -> bool {
        self.recording_ids.load(Relaxed)
    }

    pub(crate) fn record_allocation_id(&self, id: &str) {
        let mut ids = self.allocation_ids.lock().unwrap_or_else(|e| e.into_inner());
        *ids.entry(id.to_owned()).or_insert(0) += 1;
    }

    /// Starts recording the `allocationId` of every fire-and-forget message received from
    /// now on (for delivery tests: how often each one arrived). Off by default: it takes a
    /// lock and memory per message.
    pub fn record_allocation_ids(&self) {
        self.recording_ids.store(true, Relaxed);
    }

    /// How many times each recorded `allocationId` arrived in a fire-and-forget message
    /// (see [`Counters::record_allocation_ids`]).
    pub fn allocation_ids(&self) -> BTreeMap<String, u64> {
        self.allocation_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts recording every text frame received from now on, at most `limit` of them
    /// (beyond it they are only counted, [`Counters::frames_not_recorded`]), so a test can
    /// assert on what its client sent: [`Counters::received_frames`]. Off by default: it
    /// takes a lock and an allocation per frame. Calling it again starts a new record.
    pub fn record_frames(&self, limit: usize) {
        self.recorder.start(limit);
    }

    /// The text frames received since [`Counters::record_frames`], in the order the server
    /// read them (across all connections), each with its `type`, `id` and `payload`.
    pub fn received_frames(&self) -> Vec<ReceivedFrame> {
        self.recorder.frames()
    }

    /// [`Counters::received_frames`], leaving the record empty; recording goes on.
    pub fn take_received_frames(&self) -> Vec<ReceivedFrame> {
        self.recorder.take()
    }

    /// Frames received while recording but not kept, because the record was full.
    pub fn frames_not_recorded(&self) -> u64 {
        self.recorder.not_recorded.load(Relaxed)
    }

    pub(crate) fn record_close(&self, code: Option<u16>) {
        let mut v = self.close_codes.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_CLOSE_CODES {
            v.remove(0);
        }
        v.push(code);
    }

    pub(crate) fn record_upgrade(&self, user_agent: Option<&str>, key_present: bool) {
        self.last_key_present.store(key_present, Relaxed);
        *self.last_user_agent.lock().unwrap_or_else(|e| e.into_inner()) = user_agent.map(str::to_owned);
    }

    /// Requests of `kind` received so far.
    pub fn requests(&self, kind: &str) -> u64 {
        self.requests.get(kind)
    }

    /// Fire-and-forget messages of `kind` received so far.
    pub fn fire_and_forget(&self, kind: &str) -> u64 {
        self.fire_and_forget.get(kind)
    }

    /// Requests received so far, all types.
    pub fn requests_total(&self) -> u64 {
        self.requests.snapshot().values().sum()
    }

    /// Fire-and-forget messages received so far, all types.
    pub fn fire_and_forget_total(&self) -> u64 {
        self.fire_and_forget.snapshot().values().sum()
    }

    /// WebSocket upgrades accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Relaxed)
    }

    /// Upgrades refused so far: 401 (missing or wrong key, `reject_handshakes`) or the
    /// `handshake_status` fault's status.
    pub fn handshakes_rejected(&self) -> u64 {
        self.handshakes_rejected.load(Relaxed)
    }

    /// Pings the server sent so far (the `ping_every_ms` fault).
    pub fn pings_sent(&self) -> u64 {
        self.pings_sent.load(Relaxed)
    }

    /// Unsolicited pongs the server sent so far (the `forge_pongs_every_ms` fault).
    pub fn forged_pongs_sent(&self) -> u64 {
        self.forged_pongs_sent.load(Relaxed)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Relaxed)
    }

    /// Pings received so far.
    pub fn pings_received(&self) -> u64 {
        self.pings_received.load(Relaxed)
    }

    /// Reply frames sent so far.
    pub fn replies_sent(&self) -> u64 {
        self.replies_sent.load(Relaxed)
    }

    /// Connections aborted so far by
    /// [`abort_connections`](super::ServerHandle::abort_connections), `abort_after_messages` or
    /// `abort_every_ms`.
    pub fn connections_aborted(&self) -> u64 {
        self.connections_aborted.load(Relaxed)
    }

    /// The codes of the close frames received so far.
    pub fn close_codes(&self) -> Vec<Option<u16>> {
        self.close_codes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let l = |a: &AtomicU64| a.load(Relaxed);
        CountersSnapshot {
            tcp_accepted: l(&self.tcp_accepted),
            connections_accepted: l(&self.connections_accepted),
            handshakes_rejected: l(&self.handshakes_rejected),
            handshakes_failed: l(&self.handshakes_failed),
            handshakes_hung: l(&self.handshakes_hung),
            open_connections: l(&self.open_connections),
            text_frames_received: l(&self.text_frames_received),
            binary_frames_received: l(&self.binary_frames_received),
            invalid_frames_received: l(&self.invalid_frames_received),
            requests: self.requests.snapshot(),
            fire_and_forget: self.fire_and_forget.snapshot(),
            replies_sent: l(&self.replies_sent),
            denials_sent: l(&self.denials_sent),
            replies_dropped: l(&self.replies_dropped),
            duplicates_sent: l(&self.duplicates_sent),
            garbage_sent: l(&self.garbage_sent),
            binary_sent: l(&self.binary_sent),
            stray_sent: l(&self.stray_sent),
            pushes_sent: l(&self.pushes_sent),
            pings_received: l(&self.pings_received),
            pongs_received: l(&self.pongs_received),
            pongs_suppressed: l(&self.pongs_suppressed),
            closes_sent: l(&self.closes_sent),
            connections_dropped: l(&self.connections_dropped),
            connections_frozen: l(&self.connections_frozen),
            connections_aborted: l(&self.connections_aborted),
            close_codes: self.close_codes(),
            last_key_present: self.last_key_present.load(Relaxed),
            last_user_agent: self
                .last_user_agent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Waits (asynchronously, on any runtime with a Tokio timer) until `pred` holds for a
    /// snapshot, polling every 5 ms, at most `timeout`. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&CountersSnapshot) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.snapshot()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Like [`wait_until`](Self::wait_until), blocking the calling thread (for callers without
    /// a Tokio runtime, such as smol-based tests).
    pub fn wait_until_blocking(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&CountersSnapshot) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.snapshot()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
