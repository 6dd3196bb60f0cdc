//! One task per TCP connection: TLS, the upgrade, then the read/answer loop.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tokio::{accept_hdr_async_with_config, TokioAdapter};
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::StatusCode;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use usageflow_socket_core::frame::{decode, Incoming, Payload};
use usageflow_socket_core::messages::{
    GET_APPLICATION_CONFIG, GET_APPLICATION_POLICIES, GET_BLOCKED_ENDPOINTS, REPORT_CALL_CHAIN,
    REQUEST_FOR_ALLOCATION, USE_ALLOCATION,
};

use super::counters::Counters;
use super::options::ReplyStyle;
use super::pong_filter::PongFilter;
use super::{Shared, FORGED_PONG_MAX};

/// Messages handled per wake-up before the replies are flushed anyway.
const MAX_BATCH: usize = 256;
/// Delayed replies held per connection; beyond that they are sent at once.
const MAX_DELAYED: usize = 100_000;
/// How long a connection waits for the peer's close frame after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The non-JSON frame of the `garbage_every` fault.
const GARBAGE: &str = "this is not JSON {";
/// How late after its scheduled instant `read_delay_us` still counts a frame as read on
/// schedule: the timer wakes a connection up to a millisecond late, and the frames it owes
/// meanwhile are read at once. A frame later than that pauses reading a full delay.
const READ_PACE_SLACK: Duration = Duration::from_millis(2);

type Ws<S> = WebSocketStream<TokioAdapter<PongFilter<S>>>;

/// Counts a live connection task for as long as it exists.
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live_tasks.fetch_sub(1, Relaxed);
    }
}

/// Counts an open WebSocket connection for as long as it exists.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

/// A transport over a TCP socket: the socket is reached to reset it when the connection is
/// aborted.
pub(crate) trait OverTcp {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Makes dropping `tcp` reset the connection (an RST; unsent and unread bytes discarded)
/// instead of closing it with a FIN.
fn reset_on_drop(tcp: &TcpStream) {
    // A zero linger never blocks the drop (the deprecation is about non-zero lingers);
    // `set_zero_linger`, its replacement, needs a newer Tokio than the workspace asks for.
    #[allow(deprecated)]
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

/// Waits until the connections of `abort`'s epoch are aborted (never, if the server is gone
/// without aborting them).
async fn abort_requested(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|aborted| *aborted).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits until shutdown is asked for (or the server is gone).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Serves one accepted TCP connection until it ends, the server shuts down, or `abort` (the
/// abort epoch the connection was accepted in) aborts it.
pub(crate) async fn handle_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) {
    shared.live_tasks.fetch_add(1, Relaxed);
    let _live = LiveGuard(shared.clone());
    let counters = &shared.counters;
    if shared.faults.hang_handshakes() {
        Counters::add(&counters.handshakes_hung);
        tracing::debug!(%peer, "holding the handshake (hang_handshakes)");
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => {}
            _ = abort_requested(&mut abort) => {
                reset_on_drop(&stream);
                Counters::add(&counters.connections_aborted);
            }
        }
        return;
    }
    let accepted = match &shared.tls {
        None => return upgrade(stream, peer, &shared, shutdown, abort).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream));
            tokio::select! {
                biased;
                // The stream is inside the handshake: dropped, not reset.
                _ = abort_requested(&mut abort) => return Counters::add(&counters.connections_aborted),
                accepted = handshake => accepted,
            }
        }
    };
    match accepted {
        Ok(Ok(tls)) => upgrade(tls, peer, &shared, shutdown, abort).await,
        Ok(Err(e)) => {
            Counters::add(&counters.handshakes_failed);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            Counters::add(&counters.handshakes_failed);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

fn rejection(text: &str) -> ErrorResponse {
    status_answer(StatusCode::UNAUTHORIZED, text, 0)
}

/// An upgrade answered with `status` (and `Retry-After: retry_after_secs` when non-zero).
fn status_answer(status: StatusCode, text: &str, retry_after_secs: u64) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(text.to_owned()));
    *r.status_mut() = status;
    if retry_after_secs > 0 {
        r.headers_mut().insert(
            async_tungstenite::tungstenite::http::header::RETRY_AFTER,
            retry_after_secs.into(),
        );
    }
    r
}

async fn upgrade<S>(
    stream: S,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    mut abort: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + OverTcp,
{
    let counters = &shared.counters;
    let filtered = PongFilter::new(stream, shared.faults.clone(), counters.clone());
    // The callback's signature is tungstenite's; its error is an HTTP response by design.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let headers = req.headers();
        let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok());
        let key = headers.get("x-usage-key").and_then(|v| v.to_str().ok());
        counters.record_upgrade(user_agent, key.is_some());
        let refusal = if shared.faults.reject_handshakes() {
            Some("handshakes are rejected (fault)")
        } else {
            match (key, &shared.key) {
                (None, _) | (Some(""), _) => Some("missing x-usage-key"),
                (Some(k), Some(expected)) if k != expected => Some("invalid x-usage-key"),
                _ => None,
            }
        };
        let status = StatusCode::from_u16(shared.faults.handshake_status()).ok();
        match (refusal, status) {
            (Some(text), _) => {
                // Never log the key itself.
                tracing::debug!(%peer, reason = text, "upgrade rejected with 401");
                Counters::add(&counters.handshakes_rejected);
                Err(rejection(text))
            }
            (None, Some(status)) => {
                tracing::debug!(%peer, %status, "upgrade answered with a status (fault)");
                Counters::add(&counters.handshakes_rejected);
                let retry_after = shared.faults.retry_after_secs();
                Err(status_answer(status, "handshake_status fault", retry_after))
            }
            (None, None) => Ok(resp),
        }
    };
    let handshake = tokio::time::timeout(
        shared.handshake_timeout,
        accept_hdr_async_with_config(filtered, callback, Some(shared.ws_config)),
    );
    let accepted = tokio::select! {
        biased;
        // The stream is inside the handshake: dropped, not reset.
        _ = abort_requested(&mut abort) => return Counters::add(&counters.connections_aborted),
        accepted = handshake => accepted,
    };
    let mut ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(WsError::Http(_))) => return, // rejected by the callback, counted there
        Ok(Err(e)) => {
            Counters::add(&counters.handshakes_failed);
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            Counters::add(&counters.handshakes_failed);
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    // The 101 response is out (tungstenite writes it in full before returning): frames from now on.
    ws.get_mut().get_mut().activate();
    Counters::add(&counters.connections_accepted);
    counters.open_connections.fetch_add(1, Relaxed);
    let _open = OpenGuard(counters.clone());
    tracing::debug!(%peer, "connection open");
    let mut conn = Conn {
        ws,
        shared: shared.clone(),
        shutdown,
        abort: abort.clone(),
        msgs: 0,
        opened: Instant::now(),
        delayed: BinaryHeap::new(),
        delayed_order: 0,
        dirty: false,
        closing_until: None,
        next_ping: None,
        next_forge: None,
        read_resume_at: None,
    };
    // The connection is aborted wherever it is, even blocked on a write or frozen.
    let aborted = tokio::select! {
        biased;
        _ = abort_requested(&mut abort) => true,
        aborted = conn.run() => aborted,
    };
    if aborted {
        reset_on_drop(conn.ws.get_ref().get_ref().get_ref().tcp());
        Counters::add(&counters.connections_aborted);
        tracing::debug!(%peer, "connection aborted");
    } else {
        tracing::debug!(%peer, "connection ended");
    }
}

/// A reply waiting for its delay to pass.
struct Delayed {
    due: Instant,
    order: u64,
    seq: u64,
    text: Utf8Bytes,
    denial: bool,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// What a connection does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Freeze,
    /// End the task: the socket is dropped without a close frame.
    End,
    /// End the task, resetting the socket: the connection is aborted.
    Abort,
}

enum Event {
    Shutdown,
    Message(Option<Result<Message, WsError>>),
    Wake,
}

struct Conn<S> {
    ws: Ws<S>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// Turns `true` when the connection is to be aborted.
    abort: watch::Receiver<bool>,
    /// Text frames received.
    msgs: u64,
    opened: Instant,
    delayed: BinaryHeap<Delayed>,
    delayed_order: u64,
    /// Frames were fed since the last flush.
    dirty: bool,
    /// A close frame was sent or received: no more writes; give up at this instant.
    closing_until: Option<Instant>,
    /// When the `ping_every_ms` fault sends its next ping.
    next_ping: Option<Instant>,
    /// When the `forge_pongs_every_ms` fault sends its next round of forged pongs.
    next_forge: Option<Instant>,
    /// With `read_delay_us`: reading resumes at this instant.
    read_resume_at: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Serves the connection until it ends; whether it ended aborted (its socket to be reset).
    async fn run(&mut self) -> bool {
        let shared = self.shared.clone();
        let faults = &shared.faults;
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        loop {
            let changed = faults.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            if self.aborting() {
                return true;
            }
            if self.closing_until.is_some_and(|t| now >= t) {
                return false;
            }
            let freeze_at = match faults.freeze_after_ms() {
                0 => None,
                ms => Some(self.opened + Duration::from_millis(ms)),
            };
            if self.closing_until.is_none() && (self.should_freeze() || freeze_at.is_some_and(|t| now >= t)) {
                return self.freeze().await;
            }
            if let Some((count, size)) = faults.take_push() {
                if self.push(count, size).await.is_err() {
                    return false;
                }
            }
            let stop_reading = faults.stop_reading();
            let read_paused = self.read_paused();
            self.next_ping = match faults.ping_every_ms() {
                0 => None,
                ms => Some(self.next_ping.unwrap_or(now + Duration::from_millis(ms))),
            };
            self.next_forge = match faults.forge_pongs_every_ms() {
                0 => None,
                ms => Some(self.next_forge.unwrap_or(now + Duration::from_millis(ms))),
            };
            let wake = [
                self.delayed.peek().map(|d| d.due),
                freeze_at,
                self.closing_until,
                self.next_ping,
                self.next_forge,
                self.read_resume_at.filter(|_| read_paused),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(w) = wake {
                if timer.deadline() != w {
                    timer.as_mut().reset(w);
                }
            }
            let event = tokio::select! {
                biased;
                _ = shutdown_requested(&mut self.shutdown), if self.closing_until.is_none() => Event::Shutdown,
                m = self.ws.next(), if !stop_reading && !read_paused => Event::Message(m),
                _ = &mut timer, if wake.is_some() => Event::Wake,
                _ = &mut changed => Event::Wake,
            };
            let next = match event {
                Event::Shutdown => self.close(CloseCode::Away, "server shutting down").await,
                Event::Wake => Next::Continue,
                Event::Message(None) | Event::Message(Some(Err(_))) => return false,
                Event::Message(Some(Ok(m))) => self.handle_batch(m).await,
            };
            match next {
                Next::End => return false,
                Next::Abort => return true,
                Next::Continue | Next::Freeze => {}
            }
            if self.send_due().await.is_err()
                || self.ping_due().await.is_err()
                || self.forge_due().await.is_err()
            {
                return false;
            }
            if self.dirty {
                self.dirty = false;
                if self.ws.flush().await.is_err() {
                    return false;
                }
            }
            if next == Next::Freeze {
                return self.freeze().await;
            }
        }
    }

    /// Handles `first`, then every message already readable, up to [`MAX_BATCH`] (while
    /// reading is neither stopped nor paused).
    async fn handle_batch(&mut self, first: Message) -> Next {
        let mut next = self.handle(first).await;
        let mut n = 1;
        while next == Next::Continue
            && n < MAX_BATCH
            && !self.shared.faults.stop_reading()
            && !self.aborting()
            && !self.read_paused()
        {
            match self.ws.next().now_or_never() {
                None => break,
                Some(Some(Ok(m))) => next = self.handle(m).await,
                Some(_) => next = Next::End,
            }
            n += 1;
        }
        next
    }

    fn should_freeze(&self) -> bool {
        let faults = &self.shared.faults;
        let after = faults.freeze_after_messages();
        faults.freeze() || (after > 0 && self.msgs >= after)
    }

    /// Whether the connection is to be aborted (its task may not have noticed yet).
    fn aborting(&self) -> bool {
        *self.abort.borrow()
    }

    /// Whether `read_delay_us` pauses reading now.
    fn read_paused(&self) -> bool {
        self.read_resume_at.is_some_and(|t| Instant::now() < t) && self.shared.faults.read_delay_us() > 0
    }

    /// Stops reading and writing, keeping the socket open, until shutdown, kill or abort (the
    /// caller's). Never ends aborted by itself.
    async fn freeze(&mut self) -> bool {
        Counters::add(&self.shared.counters.connections_frozen);
        tracing::debug!("connection frozen");
        shutdown_requested(&mut self.shutdown).await;
        false
    }

    async fn handle(&mut self, msg: Message) -> Next {
        let counters = &self.shared.counters;
        match msg {
            Message::Text(text) => {
                Counters::add(&counters.text_frames_received);
                counters.recorder.record(text.as_str());
                self.msgs += 1;
                self.read_resume_at = match self.shared.faults.read_delay_us() {
                    0 => None,
                    delay_us => next_read(self.read_resume_at, delay_us, Instant::now()),
                };
                let drop_once = self.shared.faults.take_drop_once(text.as_str());
                let counted = self.count(text.as_str());
                if counted.is_some() && self.shared.faults.take_abort_after() {
                    // Counted as received, never answered: every connection is aborted.
                    tracing::debug!("aborting every connection (abort_after_messages)");
                    self.shared.abort_connections();
                    return Next::Abort;
                }
                if drop_once {
                    // Counted as received, never answered: the connection dies before replying.
                    Counters::add(&counters.connections_dropped);
                    return Next::End;
                }
                if let Some((frame, true)) = counted {
                    if self.reply(&frame).await.is_err() {
                        return Next::End;
                    }
                }
                let faults = &self.shared.faults;
                let drop_after = faults.drop_after_messages();
                if drop_after > 0 && self.msgs >= drop_after {
                    Counters::add(&self.shared.counters.connections_dropped);
                    return Next::End;
                }
                let close_after = faults.close_after_messages();
                if close_after > 0 && self.msgs == close_after && self.closing_until.is_none() {
                    let code = match faults.close_code() {
                        0 => CloseCode::Normal,
                        c => CloseCode::from(c),
                    };
                    return self.close(code, "close_after_messages fault").await;
                }
                if self.should_freeze() {
                    return Next::Freeze;
                }
            }
            Message::Binary(_) => Counters::add(&counters.binary_frames_received),
            Message::Ping(_) => {
                Counters::add(&counters.pings_received);
                // tungstenite queued the pong; a flush sends it now (the PongFilter may drop it).
                self.dirty = true;
            }
            Message::Pong(_) => Counters::add(&counters.pongs_received),
            Message::Close(frame) => {
                counters.record_close(frame.as_ref().map(|f| u16::from(f.code)));
                // tungstenite queued the close reply; flush it, then the stream ends.
                self.dirty = true;
                if self.closing_until.is_none() {
                    self.closing_until = Some(Instant::now() + CLOSE_WAIT);
                }
            }
            Message::Frame(_) => {}
        }
        Next::Continue
    }

    /// Sends a close frame and waits (a bounded time) for the peer's.
    async fn close(&mut self, code: CloseCode, reason: &'static str) -> Next {
        if self.closing_until.is_some() {
            return Next::Continue;
        }
        self.closing_until = Some(Instant::now() + CLOSE_WAIT);
        Counters::add(&self.shared.counters.closes_sent);
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.ws.feed(Message::Close(Some(frame))).await.is_err() {
            return Next::End;
        }
        self.dirty = true;
        Next::Continue
    }

    /// Answers a request.
    async fn reply(&mut self, frame: &Incoming) -> Result<(), WsError> {
        let id = frame.id.as_deref().unwrap_or_default();
        let style = self.shared.faults.reply_style();
        let (reply, denial) = build_reply(frame, id, style, &self.shared.payloads);
        self.emit(reply, denial).await
    }

    /// Decodes and counts a text frame: the frame and whether it is a request (to be
    /// answered), or `None` when it is invalid.
    fn count(&self, text: &str) -> Option<(Incoming, bool)> {
        let counters = &self.shared.counters;
        let Ok(frame) = decode(text, self.shared.max_frame_size) else {
            Counters::add(&counters.invalid_frames_received);
            return None;
        };
        let is_request =
            frame.id.as_deref().is_some_and(|id| !id.is_empty()) && frame.kind != REPORT_CALL_CHAIN;
        if is_request {
            counters.count_request(&frame.kind);
        } else {
            counters.count_fire_and_forget(&frame.kind);
            if counters.recording_allocation_ids() {
                if let Some(id) = frame
                    .payload
                    .to_value()
                    .get("allocationId")
                    .and_then(|v| v.as_str())
                {
                    counters.record_allocation_id(id);
                }
            }
        }
        Some((frame, is_request))
    }

    /// Applies the reply faults (drop, delay) and sends or schedules the reply.
    async fn emit(&mut self, reply: String, denial: bool) -> Result<(), WsError> {
        let faults = &self.shared.faults;
        let seq = self.shared.counters.reply_seq.fetch_add(1, Relaxed) + 1;
        let drop_every = faults.drop_every();
        if drop_every > 0 && seq % drop_every == 0 {
            Counters::add(&self.shared.counters.replies_dropped);
            return Ok(());
        }
        let jitter = faults.reply_jitter_ms();
        let delay = faults.reply_delay_ms() + if jitter > 0 { fastrand::u64(0..=jitter) } else { 0 };
        let text = Utf8Bytes::from(reply);
        if delay == 0 || self.delayed.len() >= MAX_DELAYED {
            return self.send_reply(seq, text, denial).await;
        }
        self.delayed_order += 1;
        self.delayed.push(Delayed {
            due: Instant::now() + Duration::from_millis(delay),
            order: self.delayed_order,
            seq,
            text,
            denial,
        });
        Ok(())
    }

    /// Sends `count` unsolicited frames whose payloads are JSON strings `size` long (the
    /// `push_frames` fault).
    async fn push(&mut self, count: u64, size: u64) -> Result<(), WsError> {
        if self.closing_until.is_some() {
            return Ok(());
        }
        let fill = usize::try_from(size.saturating_sub(2)).unwrap_or(0);
        let payload = format!("\"{}\"", "x".repeat(fill));
        for n in 0..count {
            let frame = build_frame(
                "push",
                Some(&payload),
                None,
                &format!("push-{n}"),
                ReplyStyle::IdOnly,
            );
            self.ws.feed(Message::text(frame)).await?;
            Counters::add(&self.shared.counters.pushes_sent);
        }
        self.ws.flush().await
    }

    /// Sends the delayed replies that are due.
    /// Feeds the `ping_every_ms` fault's ping when it is due.
    async fn ping_due(&mut self) -> Result<(), WsError> {
        let now = Instant::now();
        if self.closing_until.is_some() || self.next_ping.is_none_or(|t| t > now) {
            return Ok(());
        }
        self.next_ping = Some(now + Duration::from_millis(self.shared.faults.ping_every_ms().max(1)));
        self.ws.feed(Message::Ping(Default::default())).await?;
        Counters::add(&self.shared.counters.pings_sent);
        self.dirty = true;
        Ok(())
    }

    /// Feeds the `forge_pongs_every_ms` fault's unsolicited pongs when they are due: every
    /// counter `0..=FORGED_PONG_MAX` as 8 bytes big endian, then little endian.
    async fn forge_due(&mut self) -> Result<(), WsError> {
        let now = Instant::now();
        if self.closing_until.is_some() || self.next_forge.is_none_or(|t| t > now) {
            return Ok(());
        }
        self.next_forge = Some(now + Duration::from_millis(self.shared.faults.forge_pongs_every_ms().max(1)));
        for n in 0..=FORGED_PONG_MAX {
            for payload in [n.to_be_bytes(), n.to_le_bytes()] {
                self.ws.feed(Message::Pong(payload.to_vec().into())).await?;
                Counters::add(&self.shared.counters.forged_pongs_sent);
            }
        }
        self.dirty = true;
        Ok(())
    }

    async fn send_due(&mut self) -> Result<(), WsError> {
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            let Some(d) = self.delayed.pop() else { break };
            self.send_reply(d.seq, d.text, d.denial).await?;
        }
        Ok(())
    }

    /// Feeds one reply (twice when duplicating) and the every-n extra frames.
    async fn send_reply(&mut self, seq: u64, text: Utf8Bytes, denial: bool) -> Result<(), WsError> {
        let counters = self.shared.counters.clone();
        if self.closing_until.is_some() {
            Counters::add(&counters.replies_dropped);
            return Ok(());
        }
        let faults = self.shared.faults.clone();
        let duplicate = faults.duplicate_replies();
        if duplicate {
            self.ws.feed(Message::Text(text.clone())).await?;
            Counters::add(&counters.duplicates_sent);
            Counters::add(&counters.replies_sent);
        }
        self.ws.feed(Message::Text(text)).await?;
        Counters::add(&counters.replies_sent);
        if denial {
            Counters::add(&counters.denials_sent);
        }
        let every = |n: u64| n > 0 && seq % n == 0;
        if every(faults.garbage_every()) {
            self.ws.feed(Message::text(GARBAGE)).await?;
            Counters::add(&counters.garbage_sent);
        }
        if every(faults.binary_every()) {
            self.ws
                .feed(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]))
                .await?;
            Counters::add(&counters.binary_sent);
        }
        if every(faults.stray_every()) {
            let stray = build_frame("success", Some("{}"), None, &new_uuid(), ReplyStyle::ReplyTo);
            self.ws.feed(Message::text(stray)).await?;
            Counters::add(&counters.stray_sent);
        }
        self.dirty = true;
        Ok(())
    }
}

/// When reading may resume after a text frame read at `now`, under a `read_delay_us` of
/// `delay_us`, the previous frame's resume instant being `resume_at`. A frame read on time
/// (at most [`READ_PACE_SLACK`] after `resume_at`) pushes the schedule one delay further from
/// `resume_at`, not from now, so that delays shorter than the timer's millisecond are kept on
/// average; a frame after an idle spell pauses reading a full delay from now.
fn next_read(resume_at: Option<Instant>, delay_us: u64, now: Instant) -> Option<Instant> {
    if delay_us == 0 {
        return None;
    }
    let base = match resume_at {
        Some(t) if now.saturating_duration_since(t) <= READ_PACE_SLACK => t,
        _ => now,
    };
    Some(base + Duration::from_micros(delay_us))
}

/// A random (v4) UUID from the fast non-cryptographic generator: ids only need uniqueness.
fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One reply frame: `type`, raw `payload` JSON, `error`, and the correlation fields of `style`.
fn build_frame(
    kind: &str,
    payload: Option<&str>,
    error: Option<&str>,
    request_id: &str,
    style: ReplyStyle,
) -> String {
    let mut out = Vec::with_capacity(112 + payload.map_or(0, str::len));
    out.extend_from_slice(b"{\"type\":");
    push_json_str(&mut out, kind);
    if let Some(p) = payload {
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = error {
        out.extend_from_slice(b",\"error\":");
        if style == ReplyStyle::Hostile {
            out.extend_from_slice(b"{\"code\":429,\"text\":");
            push_json_str(&mut out, e);
            out.push(b'}');
        } else {
            push_json_str(&mut out, e);
        }
    }
    match style {
        ReplyStyle::ReplyTo => {
            out.extend_from_slice(b",\"replyTo\":");
            push_json_str(&mut out, request_id);
            out.extend_from_slice(b",\"id\":");
            push_json_str(&mut out, &new_uuid());
        }
        ReplyStyle::Both => {
            out.extend_from_slice(b",\"replyTo\":");
            push_json_str(&mut out, request_id);
            out.extend_from_slice(b",\"id\":");
            push_json_str(&mut out, request_id);
        }
        ReplyStyle::IdOnly => {
            out.extend_from_slice(b",\"id\":");
            push_json_str(&mut out, request_id);
        }
        ReplyStyle::Hostile => {
            out.extend_from_slice(b",\"replyTo\":");
            push_json_str(&mut out, request_id);
            out.extend_from_slice(b",\"id\":42");
        }
    }
    out.push(b'}');
    // Only UTF-8 went in: JSON from serde_json and the raw payloads (which are Strings).
    String::from_utf8(out).unwrap_or_default()
}

/// The fields of an allocation payload the server looks at, borrowed from the frame's text;
/// each is read leniently (a field of another JSON type counts as absent), like a `Value`
/// lookup would.
#[derive(Debug, Default, Deserialize)]
struct AllocationFields<'a> {
    #[serde(borrow, default)]
    alias: Option<&'a RawValue>,
    #[serde(borrow, default)]
    amount: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "allocationId")]
    allocation_id: Option<&'a RawValue>,
}

impl<'a> AllocationFields<'a> {
    /// The fields of `payload` (none when it is not an object).
    fn of(payload: &'a Payload) -> Self {
        serde_json::from_str(payload.json()).unwrap_or_default()
    }

    fn text(field: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
        field.and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    fn alias(&self) -> Option<Cow<'a, str>> {
        Self::text(self.alias)
    }

    fn allocation_id(&self) -> Option<Cow<'a, str>> {
        Self::text(self.allocation_id)
    }

    fn amount(&self) -> Option<f64> {
        self.amount.and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// Whether an allocation payload asks for the documented denial: alias `"deny"` or a negative
/// amount.
fn denied(fields: &AllocationFields<'_>) -> Option<String> {
    if fields.alias().as_deref() == Some("deny") {
        return Some("allocation denied: alias \"deny\"".to_owned());
    }
    match fields.amount() {
        Some(a) if a < 0.0 => Some(format!("allocation denied: negative amount {a}")),
        _ => None,
    }
}

/// The reply to a request and whether it is a denial.
pub(crate) fn build_reply(
    frame: &Incoming,
    id: &str,
    style: ReplyStyle,
    payloads: &super::Payloads,
) -> (String, bool) {
    let ok = |payload: &str| (build_frame("success", Some(payload), None, id, style), false);
    let deny = |error: &str| (build_frame("error", None, Some(error), id, style), true);
    match frame.kind.as_str() {
        REQUEST_FOR_ALLOCATION => {
            let fields = AllocationFields::of(&frame.payload);
            if let Some(why) = denied(&fields) {
                return deny(&why);
            }
            let allocation_id = fields
                .allocation_id()
                .filter(|s| !s.is_empty())
                .map_or_else(new_uuid, Cow::into_owned);
            let mut p = Vec::with_capacity(64);
            p.extend_from_slice(b"{\"allocationId\":");
            push_json_str(&mut p, &allocation_id);
            p.push(b'}');
            ok(&String::from_utf8(p).unwrap_or_default())
        }
        USE_ALLOCATION => {
            if let Some(why) = denied(&AllocationFields::of(&frame.payload)) {
                return deny(&why);
            }
            ok(&format!("{{\"eventId\":\"{}\"}}", new_uuid()))
        }
        GET_APPLICATION_POLICIES => ok(&payloads.policies),
        GET_APPLICATION_CONFIG => ok(&payloads.config),
        GET_BLOCKED_ENDPOINTS => ok(&payloads.blocked),
        other => deny(&format!("unknown message type: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payloads, ReplyData};
    use serde_json::{json, Value};

    fn req(kind: &str, payload: Value) -> Incoming {
        serde_json::from_str(&json!({"type": kind, "payload": payload, "id": "r1"}).to_string()).unwrap()
    }

    #[test]
    fn read_pacing_keeps_sub_millisecond_delays_on_average() {
        let us = Duration::from_micros;
        let t0 = Instant::now();
        assert_eq!(next_read(None, 0, t0), None, "off");
        assert_eq!(next_read(Some(t0), 0, t0), None, "switched off");
        assert_eq!(next_read(None, 100, t0), Some(t0 + us(100)), "the first frame");
        // The timer woke the connection a millisecond after the instant reading was due: the
        // schedule moves from where it was, not from now, so the frames owed meanwhile are read
        // without pausing (while the resume instant is not after now).
        let mut resume = Some(t0 + us(100));
        let woke = t0 + us(1100);
        for n in 2..=12 {
            assert!(resume.unwrap() <= woke, "frame {n} is owed");
            resume = next_read(resume, 100, woke);
            assert_eq!(resume, Some(t0 + us(100 * n)));
        }
        assert!(resume.unwrap() > woke, "then reading pauses again");
        // After an idle spell: no credit, a full pause from the frame's own instant.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(next_read(Some(t0), 100, late), Some(late + us(100)));
        assert_eq!(next_read(Some(t0), 20_000, late), Some(late + us(20_000)));
        // Delays longer than the timer's resolution are kept frame by frame.
        let on_time = t0 + us(20_300);
        assert_eq!(
            next_read(Some(t0 + us(20_000)), 20_000, on_time),
            Some(t0 + us(40_000))
        );
    }

    #[test]
    fn replies_per_style_and_type() {
        let p = Payloads::new(&ReplyData::default());
        let (s, denial) = build_reply(
            &req(
                REQUEST_FOR_ALLOCATION,
                json!({"alias":"a","amount":1.0,"allocationId":"k\"1"}),
            ),
            "r1",
            ReplyStyle::Both,
            &p,
        );
        assert!(!denial);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            json!({"type":"success","payload":{"allocationId":"k\"1"},"replyTo":"r1","id":"r1"})
        );

        let (s, _) = build_reply(
            &req(GET_BLOCKED_ENDPOINTS, Value::Null),
            "r1",
            ReplyStyle::IdOnly,
            &p,
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "r1");
        assert!(v.get("replyTo").is_none());
        assert_eq!(v["payload"]["total"], 1);

        let (s, _) = build_reply(
            &req(
                USE_ALLOCATION,
                json!({"alias":"a","amount":1.0,"allocationId":"x"}),
            ),
            "r1",
            ReplyStyle::ReplyTo,
            &p,
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["replyTo"], "r1");
        assert_ne!(v["id"], "r1");
        assert_eq!(v["payload"]["eventId"].as_str().unwrap().len(), 36);

        for payload in [
            json!({"alias":"deny","amount":1.0}),
            json!({"alias":"a","amount":-1.0}),
        ] {
            let (s, denial) = build_reply(
                &req(REQUEST_FOR_ALLOCATION, payload),
                "r1",
                ReplyStyle::ReplyTo,
                &p,
            );
            assert!(denial);
            let f = decode(&s, 1 << 20).unwrap();
            assert!(f.is_denial());
            assert_eq!(f.correlation_id(), Some("r1"));
        }
        let (s, denial) = build_reply(&req("nope", Value::Null), "r1", ReplyStyle::ReplyTo, &p);
        assert!(denial);
        assert!(decode(&s, 1 << 20)
            .unwrap()
            .denial_text()
            .contains("unknown message type"));
    }
}
