//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay
//! under plain `cargo test` (`tests/tests/fuzz_corpus.rs` in the repository reads
//! `fuzz/corpus/<target>/`).
//!
//! Each function takes arbitrary bytes and panics only when it finds a bug: a panic in the
//! core, or a broken invariant (conservation of requests and sends, exactly-once completion,
//! outputs only to dialed connections, deadlines never in the past, bounded output per step).
//!
//! Compiled with the `fuzzing` feature, and in the crate's own unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use serde_json::{json, Value};

use crate::config::Config;
use crate::frame::{self, FrameError, Outgoing};
use crate::sim::{Call, Checker};
use crate::Pool;
use crate::{
    CloseReason, ConnId, Delivery, DialError, Input, Outcome, Output, RequestError, RequestFailure,
    RequestId, RequestOptions, SendError, SendOptions, SendRefusal,
};

/// The default maximum frame size, used by [`frame_decode`] unless the input picks a small one.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Largest number of outputs one call may produce before the fuzzer calls it unbounded.
pub const MAX_OUTPUTS_PER_STEP: usize = 10_000;
/// Largest number of operations one `pool_ops` input runs.
pub const MAX_OPS: usize = 1_000;

/// Whether the harness also runs the simulation's shadow-model [`Checker`] after every step
/// (on by default; `UFSOCK_FUZZ_SIM_CHECKER=0` turns it off to isolate a finding to the
/// harness's own checks). The harness's own checks always run.
pub fn sim_checker_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UFSOCK_FUZZ_SIM_CHECKER").is_none_or(|v| v != "0"))
}

/// `UFSOCK_FUZZ_TRACE=1` prints every call and output of `pool_ops` and `config` runs.
fn trace_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UFSOCK_FUZZ_TRACE").is_some())
}

// ----- frame_decode -----

/// Decodes arbitrary bytes as one text frame and checks the result.
///
/// A first byte with the high bit set (never the start of useful JSON) picks a small size
/// limit, `64 + 8·(b & 0x7f)` bytes, and is not part of the frame; otherwise the whole input is
/// the frame and the limit is [`DEFAULT_MAX_FRAME`]. Invalid UTF-8 is replaced lossily.
pub fn frame_decode(data: &[u8]) {
    let (max, rest) = match data.split_first() {
        Some((&b, rest)) if b & 0x80 != 0 => (64 + 8 * usize::from(b & 0x7f), rest),
        _ => (DEFAULT_MAX_FRAME, data),
    };
    let text = String::from_utf8_lossy(rest);
    let result = frame::decode(&text, max);
    if text.len() <= max {
        check_liberal_decoding(&text, &result);
    }
    match &result {
        Err(FrameError::TooLarge { len, max: m }) => {
            assert_eq!(*len, text.len());
            assert_eq!(*m, max);
            assert!(text.len() > max, "TooLarge for a frame within the limit");
        }
        _ => assert!(
            text.len() <= max,
            "a frame over the limit was not refused: {result:?}"
        ),
    }
    match result {
        Ok(f) => {
            // The accessors never panic and agree with the fields.
            if let Some(id) = f.correlation_id() {
                assert!(!id.is_empty());
                assert!(f.reply_to.as_deref() == Some(id) || f.id.as_deref() == Some(id));
            }
            let _ = f.denial_text();
            let _ = f.is_denial();
            // What we decoded re-encodes into a frame that decodes to the same strings.
            let again = serde_json::to_string(&f).expect("an Incoming always serializes");
            let g = frame::decode(&again, usize::MAX).expect("a re-encoded frame decodes");
            assert_eq!(
                (&f.kind, &f.id, &f.reply_to, &f.message, &f.error),
                (&g.kind, &g.id, &g.reply_to, &g.message, &g.error)
            );
            // The payload travels verbatim; reading it never panics.
            assert_eq!(f.payload.json(), g.payload.json());
            let _ = f.payload.to_value();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

// ----- config -----

fn wild_duration(u: &mut Unstructured<'_>) -> arbitrary::Result<Duration> {
    Ok(match u.arbitrary::<u8>()? % 10 {
        0 => Duration::ZERO,
        1 => Duration::from_millis(1),
        2 => Duration::from_millis(10),
        3 => Duration::from_secs(3600),
        4 => Duration::from_secs(86_400),
        5 => Duration::MAX,
        6 => Duration::from_secs(3600) + Duration::from_nanos(1),
        7 => Duration::new(u.arbitrary()?, u.arbitrary::<u32>()? % 1_000_000_000),
        _ => Duration::from_millis(u64::from(u.arbitrary::<u16>()?)),
    })
}

fn wild_u32(u: &mut Unstructured<'_>) -> arbitrary::Result<u32> {
    Ok(match u.arbitrary::<u8>()? % 4 {
        0 => 0,
        1 => u32::MAX,
        2 => u32::from(u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    })
}

fn wild_f64(u: &mut Unstructured<'_>) -> arbitrary::Result<f64> {
    Ok(match u.arbitrary::<u8>()? % 6 {
        0 => f64::NAN,
        1 => -0.0,
        2 => 1.0,
        3 => f64::INFINITY,
        4 => f64::from(u.arbitrary::<u8>()?) / 255.0,
        _ => f64::from_bits(u.arbitrary()?),
    })
}

/// Builds a configuration from arbitrary values (valid and wild), which must give `Ok` or a
/// typed error, never a panic (nor may [`crate::redact_url`] or the builder's `Debug`); a
/// valid one must run a connect / request / send / close cycle
/// to a closed, drained pool.
pub fn config(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = config_inner(&mut u);
}

fn config_inner(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    const URLS: [&str; 8] = [
        "ws://127.0.0.1:9000/ws",
        "wss://api.usageflow.io/ws",
        "ws://h",
        "ws:///ws",
        "http://x/ws",
        "wss://",
        "ws://a b/ws",
        "",
    ];
    let url: String = if u.arbitrary::<u8>()? < 200 {
        URLS[usize::from(u.arbitrary::<u8>()?) % URLS.len()].to_owned()
    } else {
        u.arbitrary()?
    };
    let key: String = if u.arbitrary::<u8>()? < 200 {
        "key".to_owned()
    } else {
        u.arbitrary()?
    };
    // Redaction takes any text without panicking.
    let _ = crate::config::redact_url(&url);
    let mut b = Config::builder(url, key);
    // Each field: a clear bit keeps the default, a set bit draws a wild value.
    let mask: u32 = u.arbitrary()?;
    let mut field = 0u32;
    macro_rules! set {
        ($b:ident . $name:ident ( $value:expr )) => {
            field += 1;
            if mask & (1 << (field - 1)) != 0 {
                $b = $b.$name($value);
            }
        };
    }
    set!(b.pool_size(u.arbitrary::<u8>()?.into()));
    set!(b.request_timeout(wild_duration(u)?));
    set!(b.ping_period(wild_duration(u)?));
    set!(b.pong_wait(wild_duration(u)?));
    set!(b.write_wait(wild_duration(u)?));
    set!(b.handshake_timeout(wild_duration(u)?));
    set!(b.backoff_base(wild_duration(u)?));
    set!(b.backoff_cap(wild_duration(u)?));
    set!(b.backoff_attempts(wild_u32(u)?));
    set!(b.backoff_jitter(wild_f64(u)?));
    set!(b.initial_dial_spread(wild_duration(u)?));
    set!(b.max_in_flight(wild_u32(u)?));
    set!(b.max_unflushed_writes(wild_u32(u)?));
    set!(b.outbox_capacity(wild_u32(u)?));
    set!(b.outbox_ttl(wild_duration(u)?));
    set!(b.max_frame_size(match u.arbitrary::<u8>()? % 4 {
        0 => 0,
        1 => usize::MAX,
        2 => 64,
        _ => u.arbitrary::<u32>()? as usize,
    }));
    set!(b.close_drain(wild_duration(u)?));
    set!(b.max_connection_age(if u.arbitrary()? {
        None
    } else {
        Some(wild_duration(u)?)
    }));
    set!(b.resend_idempotent(u.arbitrary()?));
    set!(b.server_deduplicates_allocation_ids(u.arbitrary()?));
    set!(b.degraded_timeout_ratio(wild_f64(u)?));
    let _ = format!("{b:?}");
    let config = match b.build() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return Ok(());
        }
    };
    let seed: u64 = u.arbitrary()?;
    let mut h = Harness::new(config, seed);
    h.pool.connect(h.now);
    h.observe(Call::Connect);
    h.drain(Step::Command);
    // Let the first dials happen (a spread may delay them) and answer them.
    for _ in 0..64 {
        let dials: Vec<ConnId> = std::mem::take(&mut h.fresh_dials);
        for conn in dials {
            let input = if u.arbitrary::<u8>()? < 200 {
                Input::Connected { conn }
            } else {
                Input::ConnectFailed {
                    conn,
                    error: DialError::Rejected { status: 401 },
                }
            };
            h.pool.handle_input(h.now, input.clone());
            h.observe(Call::Input(&input));
            h.drain(Step::Input);
        }
        if h.pool.is_connected() || !u.arbitrary::<bool>()? {
            break;
        }
        let Some(t) = h.pool.poll_timeout() else { break };
        h.timeout_at(t);
    }
    h.request(message(0), RequestOptions::default());
    h.send(message(1), SendOptions::default());
    h.finish();
    Ok(())
}

/// Decoding is liberal ([PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)): whatever `serde_json` reads as a [`Value`] decodes as
/// that value says. An object whose last `type` is a string is a frame whose string fields
/// are the object's (last occurrence wins, as in the `Value`), a field of another type being
/// `None`; its `error` denies as the object's does. Any other value is not an object. (Text
/// a `Value` cannot hold, such as a number beyond `f64` or a lone surrogate, is not checked.)
fn check_liberal_decoding(text: &str, result: &Result<frame::Incoming, FrameError>) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let Value::Object(m) = value else {
        assert_eq!(
            *result,
            Err(FrameError::NotAnObject),
            "a JSON {value} is not an object"
        );
        return;
    };
    let Some(Value::String(kind)) = m.get("type") else {
        assert_eq!(*result, Err(FrameError::MissingType), "no string type in {text}");
        return;
    };
    let f = match result {
        Ok(f) => f,
        Err(e) => panic!("an object with a string type is skipped ({e}): {text}"),
    };
    let string = |key: &str| m.get(key).and_then(Value::as_str);
    assert_eq!(&f.kind, kind);
    assert_eq!(f.id.as_deref(), string("id"));
    assert_eq!(f.reply_to.as_deref(), string("replyTo"));
    match m.get("message") {
        None | Some(Value::Null) => assert_eq!(f.message, None),
        Some(Value::String(s)) => assert_eq!(f.message.as_deref(), Some(s.as_str())),
        Some(_) => assert!(f.message.is_some(), "a message of another type is dropped"),
    }
    let denies = match m.get("error") {
        None | Some(Value::Null | Value::Bool(false)) => Some(false),
        Some(Value::Bool(true)) => Some(true),
        Some(Value::String(s)) => Some(!s.is_empty()),
        Some(Value::Array(a)) => Some(!a.is_empty()),
        Some(Value::Object(o)) => Some(!o.is_empty()),
        // A number that reads as 0.0 may be one too small for `f64`, which denies.
        Some(Value::Number(n)) => (n.as_f64() != Some(0.0)).then_some(true),
    };
    if let Some(denies) = denies {
        assert_eq!(f.error.is_some(), denies, "error of {text}");
    }
    if let Some(Value::String(s)) = m.get("error").filter(|_| denies == Some(true)) {
        assert_eq!(f.error.as_deref(), Some(s.as_str()));
    }
}

// ----- pool_ops -----

/// Which connection an input names.
#[derive(Debug, Clone, Copy)]
pub enum ConnSel {
    /// The `back`-th most recently dialed connection (mod the number dialed).
    Dialed(u8),
    /// Any id, valid or not.
    Raw(ConnId),
}

/// The shape of a text frame fed to the pool.
#[derive(Debug, Clone)]
pub enum TextSpec {
    /// A reply to the `back`-th most recently issued request, of the given shape (0..8).
    Reply {
        /// Which request.
        back: u8,
        /// Success, denial, uppercase id, `id` instead of `replyTo`, unknown id, numeric
        /// `replyTo` beside a string `id`...
        shape: u8,
    },
    /// Arbitrary text.
    Garbage(String),
    /// A frame of this many bytes of padding (tests the size limit).
    Big(u16),
}

/// An owned [`Input`], with the connection and request ids chosen symbolically so that
/// inputs find the connections and requests the pool really has.
#[derive(Debug, Clone)]
pub enum OpInput {
    /// [`Input::Connected`].
    Connected,
    /// [`Input::ConnectFailed`].
    ConnectFailed(DialError),
    /// [`Input::Text`].
    Text(TextSpec),
    /// [`Input::Binary`].
    Binary(usize),
    /// [`Input::Pong`]: 0..=191 answers the latest ping of the connection, 192..=223 an
    /// older one, the rest carries junk.
    Pong(u8),
    /// [`Input::Unwritten`]: this many writes before the latest one were started.
    Unwritten(u8),
    /// [`Input::Ping`].
    Ping,
    /// [`Input::Flushed`] with this write total.
    Flushed(u64),
    /// [`Input::WriteFailed`].
    WriteFailed,
    /// [`Input::Closed`].
    Closed(CloseReason),
}

/// One step of a `pool_ops` run.
#[derive(Debug, Clone)]
pub enum Op {
    /// An I/O result.
    Input(ConnSel, OpInput),
    /// [`Pool::connect`].
    Connect,
    /// [`Pool::request`] of message type `kind` (0..3).
    Request {
        /// A per-request timeout.
        timeout: Option<Duration>,
        /// The idempotent flag.
        idempotent: bool,
        /// The preferred slot.
        affinity: Option<u32>,
        /// Which message.
        kind: u8,
    },
    /// [`Pool::send`] of message type `kind` (0..3).
    Send(u8),
    /// [`Pool::cancel`] of the `back`-th most recently issued request.
    Cancel(u8),
    /// [`Pool::close`].
    Close,
    /// Let this many milliseconds pass, then [`Pool::handle_timeout`].
    Advance(u64),
}

/// The pool configuration of a `pool_ops` run, drawn from the input's first bytes.
pub fn ops_config(u: &mut Unstructured<'_>) -> arbitrary::Result<(Config, u64)> {
    let b: [u8; 6] = u.arbitrary()?;
    let flags = b[4];
    let mut c = Config::builder("ws://127.0.0.1:9000/ws", "key")
        .pool_size(1 + u16::from(b[0] % 4))
        .max_in_flight(1 + u32::from(b[1] % 8))
        .max_unflushed_writes(1 + u32::from(b[2] % 8))
        .outbox_capacity(u32::from(b[3] % 5))
        .backoff_attempts(1 + u32::from(b[5] % 3))
        .request_timeout(Duration::from_millis(if flags & 0x80 != 0 { 200 } else { 2000 }))
        .ping_period(Duration::from_secs(1))
        .pong_wait(Duration::from_secs(3))
        .write_wait(Duration::from_secs(1))
        .handshake_timeout(Duration::from_secs(1))
        .backoff_base(if flags & 0x40 != 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        })
        .backoff_cap(Duration::from_secs(4))
        .outbox_ttl(Duration::from_secs(5))
        .close_drain(if flags & 1 != 0 {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        })
        .max_connection_age((flags & 2 != 0).then_some(Duration::from_secs(2)))
        .resend_idempotent(flags & 4 != 0)
        .server_deduplicates_allocation_ids(flags & 0x0c == 0x0c)
        .backoff_jitter(if flags & 8 != 0 { 0.2 } else { 0.0 })
        .initial_dial_spread(if flags & 0x10 != 0 {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        });
    if flags & 0x20 != 0 {
        c = c.max_frame_size(64);
    }
    let seed: u64 = u.arbitrary()?;
    Ok((c.build().expect("ops_config is always valid"), seed))
}

/// Reads one operation (see the module's seed corpus for examples).
pub fn op(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
    let tag = u.arbitrary::<u8>()? % 20;
    Ok(match tag {
        0 | 1 => Op::Connect,
        2..=4 => {
            let t = u.arbitrary::<u8>()?;
            // One byte of flags, as before the preference existed, so older corpora decode
            // to the same operations: bit 0 idempotent, bit 1 "has a preferred slot", the
            // rest that slot.
            let flags = u.arbitrary::<u8>()?;
            Op::Request {
                timeout: (t != 0).then(|| Duration::from_millis(u64::from(t - 1) * 20)),
                idempotent: flags & 1 != 0,
                affinity: (flags & 2 != 0).then_some(u32::from(flags >> 2)),
                kind: u.arbitrary::<u8>()? % 3,
            }
        }
        5 | 6 => Op::Send(u.arbitrary::<u8>()?),
        7 => Op::Cancel(u.arbitrary()?),
        8 => Op::Close,
        9 | 10 => Op::Advance(u64::from(u.arbitrary::<u16>()?)),
        _ => {
            let sel = match u.arbitrary::<u8>()? {
                b @ 0..=239 => ConnSel::Dialed(b % 8),
                _ => ConnSel::Raw(ConnId {
                    slot: u16::from(u.arbitrary::<u8>()?),
                    generation: u32::from(u.arbitrary::<u8>()?),
                }),
            };
            let input = match u.arbitrary::<u8>()? % 9 {
                0 => OpInput::Connected,
                1 => OpInput::ConnectFailed(match u.arbitrary::<u8>()? % 8 {
                    0 => DialError::Rejected { status: 401 },
                    1 => DialError::HttpStatus {
                        status: 503,
                        retry_after: None,
                    },
                    2 => DialError::Network("refused".into()),
                    3 => DialError::Rejected { status: 403 },
                    4 => DialError::HttpStatus {
                        status: 429,
                        retry_after: Some(Duration::from_millis(u64::from(u.arbitrary::<u8>()?) * 100)),
                    },
                    5 => DialError::Timeout,
                    6 => DialError::Proxy { status: 407 },
                    _ => DialError::Proxy { status: 502 },
                }),
                2 => OpInput::Text(TextSpec::Reply {
                    back: u.arbitrary()?,
                    shape: u.arbitrary::<u8>()? % 8,
                }),
                3 => {
                    let len = usize::from(u.arbitrary::<u8>()?);
                    let bytes = u.bytes(len.min(u.len()))?;
                    OpInput::Text(TextSpec::Garbage(String::from_utf8_lossy(bytes).into_owned()))
                }
                4 => {
                    if u.arbitrary::<bool>()? {
                        OpInput::Text(TextSpec::Big(u.arbitrary()?))
                    } else {
                        OpInput::Binary(usize::from(u.arbitrary::<u16>()?))
                    }
                }
                5 => match u.arbitrary::<u8>()? % 4 {
                    0 | 1 => OpInput::Pong(u.arbitrary()?),
                    2 => OpInput::Unwritten(u.arbitrary()?),
                    _ => OpInput::Ping,
                },
                6 => OpInput::Flushed(match u.arbitrary::<u8>()? {
                    255 => u64::MAX,
                    n => u64::from(n),
                }),
                7 => OpInput::WriteFailed,
                _ => OpInput::Closed(match u.arbitrary::<u8>()? % 3 {
                    0 => CloseReason::Frame {
                        code: 1000,
                        reason: String::new(),
                    },
                    1 => CloseReason::Eof,
                    _ => CloseReason::Error("reset".into()),
                }),
            };
            Op::Input(sel, input)
        }
    })
}

/// Runs arbitrary operations (I/O results, commands, time) against a pool and checks the
/// invariants after every step; at the end closes the pool and lets time run until every
/// request has completed exactly once and the pool is closed.
pub fn pool_ops(data: &[u8]) {
    run_pool_ops(data);
}

/// [`pool_ops`], returning the pool's final counters (to see what a corpus file exercises).
pub fn run_pool_ops(data: &[u8]) -> Option<crate::Stats> {
    let mut u = Unstructured::new(data);
    let (config, seed) = ops_config(&mut u).ok()?;
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match op(&mut u) {
            Ok(o) => ops.push(o),
            Err(_) => break,
        }
    }
    let mut h = Harness::new(config, seed);
    for o in ops {
        h.apply(o);
    }
    h.finish();
    Some(h.pool.stats())
}

fn message(kind: u8) -> Outgoing {
    match kind % 3 {
        0 => Outgoing::new("get_application_policies", Value::Null),
        1 => Outgoing::new(
            "use_allocation",
            json!({"alias": "a", "amount": 1.0, "allocationId": "k1"}),
        ),
        _ => Outgoing::new("report_call_chain", json!({"chain": [1, 2, 3]})),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Command,
    Input,
    Timeout,
}

/// Drives a pool and checks it after every step.
struct Harness {
    pool: Pool,
    now: Instant,
    pool_size: u16,
    /// Every connection the pool asked to dial, in order.
    dialed: Vec<ConnId>,
    dialed_set: BTreeSet<ConnId>,
    /// Dials not yet answered (for the config cycle).
    fresh_dials: Vec<ConnId>,
    /// Every request id `request` returned, in order.
    issued: Vec<RequestId>,
    /// Completion count per id (must stay at most 1).
    completed: BTreeMap<RequestId, Outcome>,
    /// Outputs of the last drain.
    last: Vec<Output>,
    /// The simulation's invariant checker (a shadow model), when [`sim_checker_enabled`].
    checker: Option<Checker>,
    /// The latest ping sequence and write count per connection, for plausible pongs and
    /// unwritten reports.
    pings: BTreeMap<ConnId, [u8; 16]>,
    writes: BTreeMap<ConnId, u64>,
}

impl Harness {
    fn new(config: Config, seed: u64) -> Harness {
        let pool_size = config.pool_size();
        let now = Instant::now();
        Harness {
            checker: sim_checker_enabled().then(|| Checker::new(&config, now)),
            pool: Pool::new(config, seed, now),
            now,
            pool_size,
            dialed: Vec::new(),
            dialed_set: BTreeSet::new(),
            fresh_dials: Vec::new(),
            issued: Vec::new(),
            completed: BTreeMap::new(),
            last: Vec::new(),
            pings: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    fn pick_conn(&self, sel: ConnSel) -> ConnId {
        match sel {
            ConnSel::Raw(c) => c,
            ConnSel::Dialed(_) if self.dialed.is_empty() => ConnId {
                slot: 0,
                generation: 0,
            },
            ConnSel::Dialed(back) => {
                let n = self.dialed.len();
                self.dialed[n - 1 - usize::from(back) % n]
            }
        }
    }

    fn pick_request(&self, back: u8) -> Option<RequestId> {
        let n = self.issued.len();
        (n > 0).then(|| self.issued[n - 1 - usize::from(back) % n])
    }

    fn text(&self, spec: &TextSpec) -> String {
        match spec {
            TextSpec::Garbage(s) => s.clone(),
            TextSpec::Big(n) => format!(
                r#"{{"type":"success","payload":"{}"}}"#,
                "x".repeat(usize::from(*n))
            ),
            TextSpec::Reply { back, shape } => {
                let id = self
                    .pick_request(*back)
                    .map_or_else(|| uuid::Uuid::nil().to_string(), |id| id.to_string());
                match shape {
                    0 => format!(r#"{{"type":"success","payload":{{"ok":true}},"replyTo":"{id}"}}"#),
                    1 => format!(r#"{{"type":"success","error":"limit reached","replyTo":"{id}"}}"#),
                    2 => format!(r#"{{"type":"ERROR","message":"no","replyTo":"{id}"}}"#),
                    3 => format!(r#"{{"type":"success","id":"{id}"}}"#),
                    4 => format!(r#"{{"type":"success","replyTo":"{}"}}"#, id.to_uppercase()),
                    5 => format!(r#"{{"type":"success","replyTo":"","id":"{id}"}}"#),
                    6 => r#"{"type":"success","replyTo":"00000000-0000-4000-8000-000000000001"}"#.to_owned(),
                    _ => format!(r#"{{"type":"success","replyTo":7,"id":"{id}"}}"#),
                }
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect => {
                self.pool.connect(self.now);
                self.observe(Call::Connect);
                self.drain(Step::Command);
            }
            Op::Request {
                timeout,
                idempotent,
                affinity,
                kind,
            } => self.request(
                message(kind),
                RequestOptions {
                    timeout,
                    idempotent,
                    affinity,
                },
            ),
            Op::Send(kind) => {
                // The low bits pick the type; the rest the guarantee and tracking.
                let mut options = SendOptions::default().with_notify(kind & 8 != 0);
                options.delivery = match (kind >> 4) % 3 {
                    0 => None,
                    1 => Some(Delivery::AtMostOnce),
                    _ => Some(Delivery::AtLeastOnce),
                };
                self.send(message(kind % 3), options)
            }
            Op::Cancel(back) => {
                let Some(id) = self.pick_request(back) else { return };
                let expect = !self.completed.contains_key(&id);
                let cancelled = self.pool.cancel(self.now, id);
                self.observe(Call::Cancel {
                    id,
                    result: cancelled,
                });
                assert_eq!(cancelled, expect, "cancel({id}) disagrees with the pending set");
                self.drain(Step::Command);
                if cancelled {
                    assert_eq!(
                        self.completed.get(&id),
                        Some(&Outcome::Failed(RequestFailure::Cancelled)),
                        "a cancelled request completes at once as cancelled"
                    );
                }
            }
            Op::Close => {
                self.pool.close(self.now);
                self.observe(Call::Close);
                self.drain(Step::Command);
                assert!(self.pool.is_closing());
            }
            Op::Advance(ms) => {
                let t = self.now + Duration::from_millis(ms);
                self.timeout_at(t);
            }
            Op::Input(sel, input) => {
                let conn = self.pick_conn(sel);
                let text;
                let payload;
                let input = match input {
                    OpInput::Connected => Input::Connected { conn },
                    OpInput::ConnectFailed(error) => Input::ConnectFailed { conn, error },
                    OpInput::Text(spec) => {
                        text = self.text(&spec);
                        Input::Text { conn, text: &text }
                    }
                    OpInput::Binary(len) => Input::Binary { conn, len },
                    OpInput::Pong(pick) => {
                        let ping = self.pings.get(&conn).copied().unwrap_or_default();
                        let seq = u64::from_be_bytes(ping[8..].try_into().expect("8 bytes"));
                        let mut older = ping;
                        older[8..].copy_from_slice(&seq.saturating_sub(1).to_be_bytes());
                        payload = match pick {
                            0..=191 => ping.to_vec(),
                            192..=207 => older.to_vec(),
                            // Guesses: the sequence alone, or after a zero token.
                            208..=215 => seq.to_be_bytes().to_vec(),
                            216..=223 => [[0; 8], seq.to_be_bytes()].concat(),
                            n => vec![n; usize::from(n % 10)],
                        };
                        Input::Pong {
                            conn,
                            payload: &payload,
                        }
                    }
                    OpInput::Unwritten(back) => Input::Unwritten {
                        conn,
                        first: self
                            .writes
                            .get(&conn)
                            .copied()
                            .unwrap_or(0)
                            .saturating_sub(u64::from(back))
                            + 1,
                    },
                    OpInput::Ping => Input::Ping { conn },
                    OpInput::Flushed(writes) => Input::Flushed { conn, writes },
                    OpInput::WriteFailed => Input::WriteFailed {
                        conn,
                        error: "broken pipe".into(),
                    },
                    OpInput::Closed(reason) => Input::Closed { conn, reason },
                };
                self.pool.handle_input(self.now, input.clone());
                self.observe(Call::Input(&input));
                self.drain(Step::Input);
            }
        }
    }

    fn request(&mut self, message: Outgoing, options: RequestOptions) {
        let result = self.pool.request(self.now, message.clone(), options);
        self.observe(Call::Request {
            message: &message,
            options,
            result: &result,
        });
        let closing = self.pool.is_closing();
        if let Ok(id) = result {
            assert!(!self.issued.contains(&id), "request id {id} issued twice");
            self.issued.push(id);
        }
        self.drain(Step::Command);
        match result {
            Ok(id) => {
                assert!(!closing, "request accepted after close");
                let text = id.to_string();
                assert!(
                    self.last
                        .iter()
                        .any(|o| matches!(o, Output::Transmit { frame, .. } if frame.contains(&text))),
                    "an accepted request is transmitted at once"
                );
            }
            Err(RequestError::Closed) => assert!(closing),
            Err(e) => {
                assert!(!closing, "{e} after close");
                let _ = e.to_string();
            }
        }
        self.check_pending();
    }

    fn send(&mut self, message: Outgoing, options: SendOptions) {
        let result = self.pool.send_with(self.now, &message, options);
        self.observe(Call::Send {
            message: &message,
            options,
            result: &result,
        });
        let closing = self.pool.is_closing();
        self.drain(Step::Command);
        match result {
            Ok(_) => assert!(!closing, "send accepted after close"),
            Err(SendRefusal::Closed) => assert!(closing),
            Err(refusal) => {
                assert!(!closing);
                // The caller kept the message: it can be handed back.
                let _ = SendError::from_refusal(refusal, message).into_message();
            }
        }
    }

    fn timeout_at(&mut self, t: Instant) {
        self.now = self.now.max(t);
        self.pool.handle_timeout(self.now);
        self.observe(Call::Timeout);
        self.drain(Step::Timeout);
    }

    /// Drains the outputs and checks every invariant.
    fn drain(&mut self, step: Step) {
        self.last.clear();
        while let Some(o) = self.pool.poll_output() {
            if trace_enabled() {
                eprintln!("  -> {o:?}");
            }
            if let Some(checker) = &mut self.checker {
                if let Err(v) = checker.observe_output(&o) {
                    panic!("sim checker: {v} (output {o:?})");
                }
            }
            assert!(
                self.last.len() < MAX_OUTPUTS_PER_STEP,
                "more than {MAX_OUTPUTS_PER_STEP} outputs from one {step:?}"
            );
            self.last.push(o);
        }
        for o in &self.last {
            match o {
                Output::Dial { conn } => {
                    assert!(
                        conn.slot < self.pool_size,
                        "dial of slot {} past the pool",
                        conn.slot
                    );
                    assert!(self.dialed_set.insert(*conn), "{conn} dialed twice");
                    self.dialed.push(*conn);
                    self.fresh_dials.push(*conn);
                }
                Output::Transmit { conn, .. }
                | Output::Ping { conn, .. }
                | Output::Disconnect { conn, .. } => {
                    if let Output::Ping { payload, .. } = o {
                        self.pings.insert(*conn, *payload);
                    }
                    if matches!(o, Output::Transmit { .. } | Output::Ping { .. }) {
                        *self.writes.entry(*conn).or_default() += 1;
                    }
                    assert!(
                        self.dialed_set.contains(conn),
                        "{o:?} names a connection never dialed"
                    );
                }
                Output::Completed { id, outcome } => {
                    assert!(self.issued.contains(id), "completion of unknown request {id}");
                    let prev = self.completed.insert(*id, outcome.clone());
                    assert!(
                        prev.is_none(),
                        "request {id} completed twice: {prev:?} then {outcome:?}"
                    );
                }
                _ => {}
            }
        }
        if let Some(checker) = &mut self.checker {
            if let Err(v) = checker.check(&self.pool) {
                panic!("sim checker after {step:?}: {v}");
            }
        }
        let stats = self.pool.stats();
        assert!(
            stats.requests_conserved(),
            "request conservation broken: {stats:?}"
        );
        assert!(
            stats.sends.conserved(),
            "send conservation broken: {:?}",
            stats.sends
        );
        for (kind, s) in &stats.sends_by_type {
            assert!(s.conserved(), "send conservation broken for {kind}: {s:?}");
        }
        assert_eq!(stats.pending, self.pool.pending_len() as u64);
        assert_eq!(stats.outbox_depth, self.pool.outbox_len() as u64);
        self.check_pending();
        if let Some(t) = self.pool.poll_timeout() {
            assert!(t >= self.now, "poll_timeout in the past after {step:?}");
            if step == Step::Timeout {
                assert!(
                    t > self.now,
                    "handle_timeout left a deadline due now (a busy loop)"
                );
            }
        }
    }

    /// Tells the checker about the call just made (before draining its outputs).
    fn observe(&mut self, call: Call<'_>) {
        if trace_enabled() {
            eprintln!("call {call:?}");
        }
        let Some(checker) = &mut self.checker else { return };
        if let Err(v) = checker.observe_call(self.now, call) {
            panic!("sim checker on {call:?}: {v}");
        }
    }

    fn check_pending(&self) {
        assert_eq!(
            self.pool.pending_len(),
            self.issued.len() - self.completed.len(),
            "pending requests are exactly those issued and not completed"
        );
    }

    /// Closes the pool and lets time pass until nothing is scheduled: every request must
    /// have completed exactly once, and the pool must be closed.
    fn finish(&mut self) {
        self.pool.close(self.now);
        self.observe(Call::Close);
        self.drain(Step::Command);
        let mut steps = 0;
        while let Some(t) = self.pool.poll_timeout() {
            steps += 1;
            assert!(steps < 100_000, "a closed pool keeps scheduling timeouts");
            self.timeout_at(t);
        }
        assert_eq!(self.pool.pending_len(), 0);
        assert_eq!(
            self.completed.len(),
            self.issued.len(),
            "a request never completed"
        );
        assert!(
            self.pool.is_closed(),
            "pool not closed once every deadline passed"
        );
        assert_eq!(self.pool.stats().open_connections, 0);
    }
}

#[cfg(test)]
mod tests {
    // The committed corpora (`fuzz/corpus/<target>/`) are replayed by the workspace's
    // `usageflow-socket-tests` crate (tests/tests/fuzz_corpus.rs), so that this crate's
    // packaged tests need no file outside it.

    #[test]
    fn empty_and_tiny_inputs() {
        for data in [&b""[..], &[0], &[0xff; 3], &[7; 64]] {
            super::frame_decode(data);
            super::pool_ops(data);
            super::config(data);
        }
    }
}
