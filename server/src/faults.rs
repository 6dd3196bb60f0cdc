//! Run-time fault switches shared by the listener and every connection task.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use super::options::{FaultConfig, ReplyStyle};

/// The live fault switches of a running server. Every setter takes effect at once: new
/// connections and handshakes read them when they happen; open connections read them before
/// each message, and are woken when `freeze` or `stop_reading` changes.
///
/// Get it from [`ServerHandle::faults`](super::ServerHandle::faults). See [`FaultConfig`] for
/// what each switch does.
#[derive(Debug)]
pub struct Faults {
    reply_style: AtomicU8,
    reply_delay_ms: AtomicU64,
    reply_jitter_ms: AtomicU64,
    drop_every: AtomicU64,
    duplicate_replies: AtomicBool,
    garbage_every: AtomicU64,
    binary_every: AtomicU64,
    stray_every: AtomicU64,
    no_pongs: AtomicBool,
    freeze: AtomicBool,
    freeze_after_messages: AtomicU64,
    freeze_after_ms: AtomicU64,
    stop_reading: AtomicBool,
    close_after_messages: AtomicU64,
    close_code: AtomicU16,
    drop_after_messages: AtomicU64,
    reject_handshakes: AtomicBool,
    handshake_status: AtomicU16,
    retry_after_secs: AtomicU64,
    ping_every_ms: AtomicU64,
    forge_pongs_every_ms: AtomicU64,
    hang_handshakes: AtomicBool,
    /// Fast check for `drop_once_on`, so the hot path takes no lock while it is off.
    drop_once_armed: AtomicBool,
    drop_once_on: Mutex<Option<String>>,
    push_frames: AtomicU64,
    push_size: AtomicU64,
    abort_after_messages: AtomicU64,
    /// Messages counted toward `abort_after_messages` since it was last set.
    abort_after_seen: AtomicU64,
    abort_every_ms: AtomicU64,
    read_delay_us: AtomicU64,
    pub(crate) changed: Notify,
}

macro_rules! accessors {
    ($($(#[$doc:meta])* $field:ident / $setter:ident : $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $field(&self) -> $ty {
                self.$field.load(Relaxed)
            }

            #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
            pub fn $setter(&self, value: $ty) {
                self.$field.store(value, Relaxed);
                self.changed.notify_waiters();
            }
        )*
    };
}

impl Faults {
    /// Switches set as in `config`, replies in `style`.
    pub fn new(config: &FaultConfig, style: ReplyStyle) -> Self {
        let f = Self {
            reply_style: AtomicU8::new(style.to_u8()),
            reply_delay_ms: AtomicU64::new(0),
            reply_jitter_ms: AtomicU64::new(0),
            drop_every: AtomicU64::new(0),
            duplicate_replies: AtomicBool::new(false),
            garbage_every: AtomicU64::new(0),
            binary_every: AtomicU64::new(0),
            stray_every: AtomicU64::new(0),
            no_pongs: AtomicBool::new(false),
            freeze: AtomicBool::new(false),
            freeze_after_messages: AtomicU64::new(0),
            freeze_after_ms: AtomicU64::new(0),
            stop_reading: AtomicBool::new(false),
            close_after_messages: AtomicU64::new(0),
            close_code: AtomicU16::new(0),
            drop_after_messages: AtomicU64::new(0),
            reject_handshakes: AtomicBool::new(false),
            handshake_status: AtomicU16::new(0),
            retry_after_secs: AtomicU64::new(0),
            ping_every_ms: AtomicU64::new(0),
            forge_pongs_every_ms: AtomicU64::new(0),
            hang_handshakes: AtomicBool::new(false),
            drop_once_armed: AtomicBool::new(false),
            drop_once_on: Mutex::new(None),
            push_frames: AtomicU64::new(0),
            push_size: AtomicU64::new(0),
            abort_after_messages: AtomicU64::new(0),
            abort_after_seen: AtomicU64::new(0),
            abort_every_ms: AtomicU64::new(0),
            read_delay_us: AtomicU64::new(0),
            changed: Notify::new(),
        };
        f.set(config);
        f
    }

    /// Sets every switch from `config` (the reply style is left alone).
    pub fn set(&self, c: &FaultConfig) {
        self.reply_delay_ms.store(c.reply_delay_ms, Relaxed);
        self.reply_jitter_ms.store(c.reply_jitter_ms, Relaxed);
        self.drop_every.store(c.drop_every, Relaxed);
        self.duplicate_replies.store(c.duplicate_replies, Relaxed);
        self.garbage_every.store(c.garbage_every, Relaxed);
        self.binary_every.store(c.binary_every, Relaxed);
        self.stray_every.store(c.stray_every, Relaxed);
        self.no_pongs.store(c.no_pongs, Relaxed);
        self.freeze.store(c.freeze, Relaxed);
        self.freeze_after_messages.store(c.freeze_after_messages, Relaxed);
        self.freeze_after_ms.store(c.freeze_after_ms, Relaxed);
        self.stop_reading.store(c.stop_reading, Relaxed);
        self.close_after_messages.store(c.close_after_messages, Relaxed);
        self.close_code.store(c.close_code, Relaxed);
        self.drop_after_messages.store(c.drop_after_messages, Relaxed);
        self.reject_handshakes.store(c.reject_handshakes, Relaxed);
        self.handshake_status.store(c.handshake_status, Relaxed);
        self.retry_after_secs.store(c.retry_after_secs, Relaxed);
        self.ping_every_ms.store(c.ping_every_ms, Relaxed);
        self.forge_pongs_every_ms.store(c.forge_pongs_every_ms, Relaxed);
        self.hang_handshakes.store(c.hang_handshakes, Relaxed);
        self.set_drop_once_on(c.drop_once_on.clone());
        self.push_size.store(c.push_size, Relaxed);
        self.push_frames.store(c.push_frames, Relaxed);
        self.arm_abort_after(c.abort_after_messages);
        self.abort_every_ms.store(c.abort_every_ms, Relaxed);
        self.read_delay_us.store(c.read_delay_us, Relaxed);
        self.changed.notify_waiters();
    }

    /// Turns every fault off (the reply style is left alone).
    pub fn clear(&self) {
        self.set(&FaultConfig::default());
    }

    /// The current switches, as plain data.
    pub fn get(&self) -> FaultConfig {
        FaultConfig {
            reply_delay_ms: self.reply_delay_ms(),
            reply_jitter_ms: self.reply_jitter_ms(),
            drop_every: self.drop_every(),
            duplicate_replies: self.duplicate_replies(),
            garbage_every: self.garbage_every(),
            binary_every: self.binary_every(),
            stray_every: self.stray_every(),
            no_pongs: self.no_pongs(),
            freeze: self.freeze(),
            freeze_after_messages: self.freeze_after_messages(),
            freeze_after_ms: self.freeze_after_ms(),
            stop_reading: self.stop_reading(),
            close_after_messages: self.close_after_messages(),
            close_code: self.close_code(),
            drop_after_messages: self.drop_after_messages(),
            reject_handshakes: self.reject_handshakes(),
            handshake_status: self.handshake_status(),
            retry_after_secs: self.retry_after_secs(),
            ping_every_ms: self.ping_every_ms(),
            forge_pongs_every_ms: self.forge_pongs_every_ms(),
            hang_handshakes: self.hang_handshakes(),
            drop_once_on: self.drop_once_on(),
            push_frames: self.push_frames(),
            push_size: self.push_size(),
            abort_after_messages: self.abort_after_messages(),
            abort_every_ms: self.abort_every_ms(),
            read_delay_us: self.read_delay_us(),
        }
    }

    /// The armed `drop_once_on` text, if any.
    pub fn drop_once_on(&self) -> Option<String> {
        self.drop_once_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Arms (or, with `None` or an empty text, disarms) the one-shot `drop_once_on` fault:
    /// the connection that receives the first text frame containing `text` is dropped.
    pub fn set_drop_once_on(&self, text: Option<String>) {
        let text = text.filter(|t| !t.is_empty());
        let mut armed = self.drop_once_on.lock().unwrap_or_else(PoisonError::into_inner);
        self.drop_once_armed.store(text.is_some(), Relaxed);
        *armed = text;
    }

    /// Whether the connection that received `frame` must be dropped by `drop_once_on`; a
    /// match disarms the fault, so exactly one connection is dropped per arming.
    pub(crate) fn take_drop_once(&self, frame: &str) -> bool {
        if !self.drop_once_armed.load(Relaxed) {
            return false;
        }
        let mut armed = self.drop_once_on.lock().unwrap_or_else(PoisonError::into_inner);
        match armed.as_deref() {
            Some(text) if frame.contains(text) => {
                *armed = None;
                self.drop_once_armed.store(false, Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Takes the armed `push_frames` burst (disarming it): how many frames to push, and the
    /// length of each one's payload; `None` when not armed.
    pub(crate) fn take_push(&self) -> Option<(u64, u64)> {
        if self.push_frames.load(Relaxed) == 0 {
            return None;
        }
        match self.push_frames.swap(0, Relaxed) {
            0 => None,
            n => Some((n, self.push_size.load(Relaxed))),
        }
    }

    /// The armed `abort_after_messages` count: after this many messages, counted from when it
    /// was set, every connection is aborted (0 = off, and after it fired).
    pub fn abort_after_messages(&self) -> u64 {
        self.abort_after_messages.load(Relaxed)
    }

    /// Arms (or, with 0, disarms) the one-shot `abort_after_messages` fault: once the server has
    /// received `n` more messages (requests and fire-and-forget messages, all connections
    /// together), every connection is aborted and the switch returns to 0.
    pub fn set_abort_after_messages(&self, n: u64) {
        self.arm_abort_after(n);
        self.changed.notify_waiters();
    }

    /// Sets `abort_after_messages` and restarts its count.
    fn arm_abort_after(&self, n: u64) {
        self.abort_after_messages.store(0, Relaxed);
        self.abort_after_seen.store(0, Relaxed);
        self.abort_after_messages.store(n, Relaxed);
    }

    /// Counts one received message toward `abort_after_messages`; whether it is the one that
    /// reaches the count, in which case the fault is disarmed (so it fires exactly once per
    /// arming).
    pub(crate) fn take_abort_after(&self) -> bool {
        let n = self.abort_after_messages.load(Relaxed);
        if n == 0 {
            return false;
        }
        let seen = self.abort_after_seen.fetch_add(1, Relaxed) + 1;
        seen >= n
            && self
                .abort_after_messages
                .compare_exchange(n, 0, Relaxed, Relaxed)
                .is_ok()
    }

    /// The reply style in force.
    pub fn reply_style(&self) -> ReplyStyle {
        ReplyStyle::from_u8(self.reply_style.load(Relaxed))
    }

    /// Changes the reply style for every reply built from now on.
    pub fn set_reply_style(&self, style: ReplyStyle) {
        self.reply_style.store(style.to_u8(), Relaxed);
    }

    accessors! {
        /// Delay before each reply, in milliseconds.
        reply_delay_ms / set_reply_delay_ms: u64;
        /// Random extra delay bound, in milliseconds.
        reply_jitter_ms / set_reply_jitter_ms: u64;
        /// Drop every k-th reply (0 = off).
        drop_every / set_drop_every: u64;
        /// Send each reply twice.
        duplicate_replies / set_duplicate_replies: bool;
        /// A non-JSON text frame after every n-th reply (0 = off).
        garbage_every / set_garbage_every: u64;
        /// A binary frame after every n-th reply (0 = off).
        binary_every / set_binary_every: u64;
        /// A stray reply after every n-th reply (0 = off).
        stray_every / set_stray_every: u64;
        /// Pongs are filtered out.
        no_pongs / set_no_pongs: bool;
        /// Every connection is frozen (permanent for a connection once it has frozen).
        freeze / set_freeze: bool;
        /// Freeze a connection after this many text frames (0 = off).
        freeze_after_messages / set_freeze_after_messages: u64;
        /// Freeze a connection this many ms after it opened (0 = off).
        freeze_after_ms / set_freeze_after_ms: u64;
        /// Connections stop reading while set.
        stop_reading / set_stop_reading: bool;
        /// Close a connection after this many text frames (0 = off).
        close_after_messages / set_close_after_messages: u64;
        /// Code of fault-injected close frames (0 = 1000).
        close_code / set_close_code: u16;
        /// Drop a connection abruptly after this many text frames (0 = off).
        drop_after_messages / set_drop_after_messages: u64;
        /// Every upgrade is rejected with 401.
        reject_handshakes / set_reject_handshakes: bool;
        /// Every upgrade is answered with this status (0 = off).
        handshake_status / set_handshake_status: u16;
        /// `Retry-After` seconds sent with `handshake_status` (0 = no header).
        retry_after_secs / set_retry_after_secs: u64;
        /// Every connection gets a server ping this often, in ms (0 = off).
        ping_every_ms / set_ping_every_ms: u64;
        /// Every connection gets unsolicited pongs with every small counter in both byte
        /// orders this often, in ms (0 = off).
        forge_pongs_every_ms / set_forge_pongs_every_ms: u64;
        /// Upgrades are never answered.
        hang_handshakes / set_hang_handshakes: bool;
        /// Unsolicited frames the next connection to wake pushes, once (0 = off). Set
        /// [`push_size`](Self::push_size) first: setting this wakes every connection.
        push_frames / set_push_frames: u64;
        /// The payload length of each pushed frame.
        push_size / set_push_size: u64;
        /// Every connection is aborted this often, in ms (0 = off).
        abort_every_ms / set_abort_every_ms: u64;
        /// Reading pauses this many microseconds after each text frame (0 = off).
        read_delay_us / set_read_delay_us: u64;
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::new(&FaultConfig::default(), ReplyStyle::default())
    }
}
