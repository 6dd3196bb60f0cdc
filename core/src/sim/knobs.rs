//! Swarm knobs: every setting, fault rate and workload parameter of one simulation run.

use std::time::Duration;

use crate::config::{Config, ConfigBuilder};

/// Everything that varies between simulation runs. [`Knobs::draw`] picks a different mix for
/// every seed (swarm testing: each seed enables its own subset of faults, at its own
/// rates); a failing run prints its knobs with `{:#?}`.
///
/// Fault probabilities apply during the chaos phase only, per opportunity: per dial
/// (`dial_*`), per request the server receives (`reply_*`), per frame the server receives
/// (`garbage`, `binary`, `stray`, `close_mid_stream`), per write (`write_fail`,
/// `write_stall`), per ping (`pong_suppress`), per event for a socket the pool already gave
/// up (`late_event`).
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    /// Slots in the pool (1..=8).
    pub pool_size: u16,
    /// Default request timeout.
    pub request_timeout: Duration,
    /// Ping period.
    pub ping_period: Duration,
    /// Read deadline after the last frame or pong.
    pub pong_wait: Duration,
    /// Write deadline.
    pub write_wait: Duration,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// First reconnect delay (sometimes zero).
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Reconnect attempts before a slot rests.
    pub backoff_attempts: u32,
    /// Backoff jitter fraction (sometimes zero).
    pub backoff_jitter: f64,
    /// Spread of the first dials.
    pub initial_dial_spread: Duration,
    /// Pending requests per connection.
    pub max_in_flight: u32,
    /// Unflushed writes per connection.
    pub max_unflushed_writes: u32,
    /// Outbox capacity (sometimes tiny).
    pub outbox_capacity: u32,
    /// Outbox bytes (sometimes a few messages' worth).
    pub max_outbox_bytes: usize,
    /// Outbox time-to-live.
    pub outbox_ttl: Duration,
    /// How long `close` waits for replies.
    pub close_drain: Duration,
    /// Connection rotation age.
    pub max_connection_age: Option<Duration>,
    /// Whether idempotent requests are re-sent once.
    pub resend_idempotent: bool,
    /// Whether the server is taken to deduplicate on `allocationId`.
    pub server_deduplicates_allocation_ids: bool,
    /// Whether messages are confirmed by ping barriers.
    pub confirm_delivery: bool,
    /// Messages after which a barrier is due.
    pub confirm_every: u32,
    /// Time after which a barrier is due.
    pub confirm_after: Duration,
    /// The unconfirmed window per connection, in messages and bytes.
    pub max_unconfirmed: u32,
    /// The unconfirmed window per connection in bytes.
    pub max_unconfirmed_bytes: usize,
    /// Rewrites of an at-least-once message.
    pub max_rewrites: u32,
    /// Share of sends asking for at least once (the rest: at most once, or the default).
    pub at_least_once: f64,
    /// Chance that the adapter reports which writes of a dropped connection never started.
    pub report_unwritten: f64,

    /// A dial fails with a network error.
    pub dial_refuse: f64,
    /// A dial is rejected with HTTP 401.
    pub dial_reject: f64,
    /// A dial never answers.
    pub dial_hang: f64,
    /// Dial latency range.
    pub dial_latency: (Duration, Duration),
    /// Reply latency range (chaos phase; the heal phase answers within a few milliseconds).
    pub reply_latency: (Duration, Duration),
    /// The server drops a request without answering.
    pub reply_drop: f64,
    /// The server answers a request twice.
    pub reply_dup: f64,
    /// The server denies a request (`"type":"error"` or an `error` field).
    pub reply_deny: f64,
    /// The server sends a malformed text frame.
    pub garbage: f64,
    /// The server sends a binary frame.
    pub binary: f64,
    /// The server sends a frame that answers nothing (push, or an unknown `replyTo`).
    pub stray: f64,
    /// The server does not answer a ping.
    pub pong_suppress: f64,
    /// Per ping, the server also sends an unsolicited pong that guesses its payload (the
    /// sequence alone, in either byte order, or after a zero or wrong token), whether or not
    /// it answers the ping: such a pong must confirm nothing.
    pub guessed_pong: f64,
    /// The server closes the connection.
    pub close_mid_stream: f64,
    /// A write fails.
    pub write_fail: f64,
    /// A write never completes, nor does any later write of that socket (no `Flushed`).
    pub write_stall: f64,
    /// The adapter reports an event for a socket the pool already gave up (a race).
    pub late_event: f64,

    /// How long the chaos phase lasts.
    pub chaos: Duration,
    /// Workload operations during the chaos phase.
    pub ops: u32,
    /// Chance that the next operation comes at the same instant (bursts, ties).
    pub burst: f64,
    /// Relative weight of requests among operations.
    pub w_request: u32,
    /// Relative weight of fire-and-forget sends.
    pub w_send: u32,
    /// Relative weight of cancels.
    pub w_cancel: u32,
    /// Relative weight of explicit connects.
    pub w_connect: u32,
    /// Chance that a request carries its own timeout.
    pub per_call_timeout: f64,

    /// Whether the pool runs with its spool open: every process opens it with what the
    /// earlier ones left, and the chaos phase crashes and restarts the process.
    pub spool: bool,
    /// The spool's byte limit (sometimes a few records' worth, so that sends are refused as
    /// `SpoolFull`).
    pub spool_bytes: u64,
    /// Crashes during the chaos phase (spool runs only): the process forgets everything but
    /// the spool, and a new one opens it. The heal phase starts with one more.
    pub crashes: u32,
    /// Of those, restarts after a close (a deploy) instead: the close drains, what it could
    /// not deliver stays in the spool.
    pub deploys: u32,
}

/// The delivery knobs, drawn after every other knob so those keep their values per seed.
fn delivery_knobs(r: &mut fastrand::Rng, k: &mut Knobs) {
    k.confirm_delivery = r.u8(..8) != 0;
    k.confirm_every = if r.bool() { r.u32(1..=8) } else { 256 };
    k.confirm_after = Duration::from_millis(r.u64(1..=2_000));
    k.max_unconfirmed = if r.u8(..3) == 0 { r.u32(1..=6) } else { 4096 };
    k.max_unconfirmed_bytes = if r.u8(..3) == 0 {
        r.usize(1024..=4096)
    } else {
        1 << 20
    };
    k.max_rewrites = r.u32(0..=3);
    k.at_least_once = r.f64();
    k.report_unwritten = if r.u8(..4) == 0 { 0.0 } else { r.f64() };
}

/// The spool knobs, drawn last so every other knob keeps its value per seed: about a third
/// of the seeds run with the spool open and crash their process a few times.
fn spool_knobs(r: &mut fastrand::Rng, k: &mut Knobs) {
    k.spool = r.u8(..3) == 0;
    if !k.spool {
        return;
    }
    k.spool_bytes = if r.u8(..4) == 0 {
        r.u64(256..=4_096)
    } else {
        1 << 30
    };
    k.crashes = r.u32(1..=4);
    k.deploys = r.u32(0..=k.crashes.min(2));
}

impl Knobs {
    /// The knobs of `seed`: a configuration, a subset of faults with their rates, and a
    /// workload, all drawn from the seed.
    pub fn draw(seed: u64) -> Knobs {
        let mut r = fastrand::Rng::with_seed(seed ^ 0x5eed_cafe_f00d_0001);
        let ms = |r: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(r.u64(lo..=hi));
        // Swarm: each fault is on for about half of the seeds, at a rate up to `max`.
        let fault = |r: &mut fastrand::Rng, max: f64| {
            if r.bool() {
                r.f64() * max
            } else {
                0.0
            }
        };
        let ping_period = ms(&mut r, 100, 10_000);
        // Above the ping period by more than the simulated round trip (at most 22 ms), or
        // healthy connections would die between a ping and its pong.
        let pong_wait = ping_period.mul_f64(1.05 + 2.0 * r.f64()) + Duration::from_millis(50);
        let backoff_base = if r.u8(..10) == 0 {
            Duration::ZERO
        } else {
            ms(&mut r, 10, 5_000)
        };
        let backoff_cap = backoff_base.max(ms(&mut r, 0, 20_000));
        let handshake_timeout = ms(&mut r, 20, 10_000);
        let dial_lo = r.u64(1..=50);
        let dial_hi = if r.bool() {
            dial_lo + r.u64(0..=100)
        } else {
            // Sometimes slower than the handshake deadline.
            dial_lo + r.u64(0..=(handshake_timeout.as_millis() as u64 * 3 / 2))
        };
        let reply_lo = r.u64(0..=50);
        let reply_hi = reply_lo
            + if r.bool() {
                r.u64(0..=100)
            } else {
                r.u64(0..=5_000)
            };
        let resend_draw;
        let mut knobs = Knobs {
            pool_size: r.u16(1..=8),
            request_timeout: ms(&mut r, 20, 3_000),
            ping_period,
            pong_wait,
            write_wait: ms(&mut r, 20, 10_000),
            handshake_timeout,
            backoff_base,
            backoff_cap,
            backoff_attempts: r.u32(1..=6),
            backoff_jitter: match r.u8(..3) {
                0 => 0.0,
                1 => 1.0 * r.f64(),
                _ => 0.2,
            },
            initial_dial_spread: if r.u8(..4) == 0 {
                ms(&mut r, 1, 2_000)
            } else {
                Duration::ZERO
            },
            max_in_flight: if r.u8(..3) == 0 { r.u32(1..=4) } else { 1024 },
            max_unflushed_writes: if r.u8(..4) == 0 { r.u32(1..=8) } else { 4096 },
            outbox_capacity: if r.u8(..3) == 0 { r.u32(0..=5) } else { 10_000 },
            max_outbox_bytes: if r.u8(..3) == 0 {
                r.usize(0..=2_048)
            } else {
                crate::config::DEFAULT_MAX_OUTBOX_BYTES
            },
            outbox_ttl: ms(&mut r, 50, 60_000),
            close_drain: if r.bool() {
                ms(&mut r, 1, 3_000)
            } else {
                Duration::ZERO
            },
            max_connection_age: if r.u8(..4) == 0 {
                Some(Duration::from_secs(r.u64(1..=30)))
            } else {
                None
            },
            // One draw for both switches keeps every later draw where it was.
            resend_idempotent: {
                resend_draw = r.u8(..5);
                resend_draw != 0
            },
            server_deduplicates_allocation_ids: resend_draw >= 3,
            dial_refuse: fault(&mut r, 0.5),
            dial_reject: fault(&mut r, 0.3),
            dial_hang: fault(&mut r, 0.3),
            dial_latency: (Duration::from_millis(dial_lo), Duration::from_millis(dial_hi)),
            reply_latency: (Duration::from_millis(reply_lo), Duration::from_millis(reply_hi)),
            reply_drop: fault(&mut r, 0.3),
            reply_dup: fault(&mut r, 0.3),
            reply_deny: fault(&mut r, 0.3),
            garbage: fault(&mut r, 0.1),
            binary: fault(&mut r, 0.1),
            stray: fault(&mut r, 0.1),
            pong_suppress: fault(&mut r, 0.5),
            guessed_pong: fault(&mut r, 0.3),
            close_mid_stream: fault(&mut r, 0.05),
            write_fail: fault(&mut r, 0.03),
            write_stall: fault(&mut r, 0.03),
            late_event: fault(&mut r, 0.5),
            chaos: Duration::from_secs(r.u64(2..=60)),
            ops: r.u32(20..=300),
            burst: fault(&mut r, 0.5),
            w_request: r.u32(1..=10),
            w_send: r.u32(0..=10),
            w_cancel: r.u32(0..=3),
            w_connect: r.u32(0..=1),
            per_call_timeout: r.f64(),
            ..Knobs::calm()
        };
        delivery_knobs(&mut r, &mut knobs);
        spool_knobs(&mut r, &mut knobs);
        knobs
    }

    /// Knobs without faults: [PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)'s defaults shrunk to simulation scale (pool of 3),
    /// fast replies, a small workload. A base for hand-written scenarios.
    pub fn calm() -> Knobs {
        let ms = Duration::from_millis;
        Knobs {
            pool_size: 3,
            request_timeout: ms(2_000),
            ping_period: ms(3_000),
            pong_wait: ms(6_000),
            write_wait: ms(1_000),
            handshake_timeout: ms(1_000),
            backoff_base: ms(500),
            backoff_cap: ms(6_000),
            backoff_attempts: 5,
            backoff_jitter: 0.2,
            initial_dial_spread: Duration::ZERO,
            max_in_flight: 1024,
            max_unflushed_writes: 4096,
            outbox_capacity: 100,
            max_outbox_bytes: crate::config::DEFAULT_MAX_OUTBOX_BYTES,
            outbox_ttl: ms(10_000),
            close_drain: Duration::ZERO,
            max_connection_age: None,
            resend_idempotent: true,
            server_deduplicates_allocation_ids: false,
            confirm_delivery: true,
            confirm_every: 8,
            confirm_after: ms(200),
            max_unconfirmed: 64,
            max_unconfirmed_bytes: 1 << 20,
            max_rewrites: 3,
            at_least_once: 0.5,
            report_unwritten: 0.8,
            dial_refuse: 0.0,
            dial_reject: 0.0,
            dial_hang: 0.0,
            dial_latency: (ms(1), ms(10)),
            reply_latency: (ms(1), ms(20)),
            reply_drop: 0.0,
            reply_dup: 0.0,
            reply_deny: 0.0,
            garbage: 0.0,
            binary: 0.0,
            stray: 0.0,
            pong_suppress: 0.0,
            guessed_pong: 0.0,
            close_mid_stream: 0.0,
            write_fail: 0.0,
            write_stall: 0.0,
            late_event: 0.0,
            chaos: Duration::from_secs(10),
            ops: 100,
            burst: 0.1,
            w_request: 5,
            w_send: 3,
            w_cancel: 1,
            w_connect: 0,
            per_call_timeout: 0.2,
            spool: false,
            spool_bytes: 1 << 30,
            crashes: 0,
            deploys: 0,
        }
    }

    /// The pool configuration these knobs describe.
    pub fn config(&self) -> Config {
        self.builder()
            .build()
            .expect("knobs always describe a valid configuration")
    }

    fn builder(&self) -> ConfigBuilder {
        Config::builder("ws://sim.invalid/ws", "sim-key")
            .pool_size(self.pool_size)
            .request_timeout(self.request_timeout)
            .ping_period(self.ping_period)
            .pong_wait(self.pong_wait)
            .write_wait(self.write_wait)
            .handshake_timeout(self.handshake_timeout)
            .backoff_base(self.backoff_base)
            .backoff_cap(self.backoff_cap)
            .backoff_attempts(self.backoff_attempts)
            .backoff_jitter(self.backoff_jitter)
            .initial_dial_spread(self.initial_dial_spread)
            .max_in_flight(self.max_in_flight)
            .max_unflushed_writes(self.max_unflushed_writes)
            .outbox_capacity(self.outbox_capacity)
            .max_outbox_bytes(self.max_outbox_bytes)
            .outbox_ttl(self.outbox_ttl)
            .close_drain(self.close_drain)
            .max_connection_age(self.max_connection_age)
            .resend_idempotent(self.resend_idempotent)
            .server_deduplicates_allocation_ids(self.server_deduplicates_allocation_ids)
            .confirm_delivery(self.confirm_delivery)
            .confirm_every(self.confirm_every)
            .confirm_after(self.confirm_after)
            .max_unconfirmed(self.max_unconfirmed)
            .max_unconfirmed_bytes(self.max_unconfirmed_bytes)
            .max_rewrites(self.max_rewrites)
    }
}
