//! [`Client`]: the public handle, written once for every [`Runtime`], and its event
//! [`Subscription`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use std::time::Duration;
use tracing::Instrument;

use usageflow_socket_core::{
    redact_url, Availability, Incoming, MessageId, Outgoing, RequestOptions, SendOptions, Stats,
};

use crate::driver::ClientEvent;
use crate::events::EventPublisher;
use crate::handshake::DialContext;
use crate::live::{spawn_abortable, Live};
use crate::receipt::Receipt;
use crate::shared::{deadline_after, drive, CloseReport, DirectReports, Shared, Signals};
use crate::{ClientError, ClientOptions, Runtime, UsageFlowApi};

/// A UsageFlow client on the runtime `R`: a cheap `Clone` handle on one pool of connections.
/// When the last handle is dropped, the pool closes as by [`Client::close`], draining in the
/// background, and names what it could not deliver in one ERROR line (its counts per message
/// type and state). If the runtime stops before that drain ends, the client's state names what
/// it still held as it goes away. Call [`Client::close`] at shutdown to have it handed back.
///
/// A clone is a new handle on the same pool that leans to the next slot: give each task its
/// own clone, and each task's requests keep to one connection while the pool is balanced
/// (see [`RequestOptions::affinity`]).
///
/// The adapters name it for their runtime: `usageflow_socket_tokio::Client` is
/// `Client<usageflow_socket_tokio::Tokio>`.
pub struct Client<R: Runtime> {
    inner: Arc<HandleInner<R>>,
    /// The slot this handle's requests lean to.
    affinity: u32,
}

/// What every handle of one client shares.
struct HandleInner<R: Runtime> {
    shared: Arc<Shared<R>>,
    /// The client's URL with its credentials redacted, for `Debug`.
    url: String,
    /// The next handle's slot.
    affinities: AtomicU32,
}

impl<R: Runtime> Drop for HandleInner<R> {
    fn drop(&mut self) {
        // Drains as `close` does, in the background, and logs what it could not deliver.
        self.shared.close_dropped();
    }
}

impl<R: Runtime> Clone for Client<R> {
    fn clone(&self) -> Self {
        Self::on(Arc::clone(&self.inner))
    }
}

impl<R: Runtime> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Client<R> {
    /// Starts a client on the runtime of the calling context ([`Runtime::current`]) and dials
    /// every slot in parallel; returns once every first dial has settled, connected or failed
    /// (bounded by the handshake timeout, plus the configured initial dial spread). Failed
    /// slots keep retrying in the background, so the client is returned even when no
    /// connection could be opened (check [`Client::is_connected`]), except when the API key
    /// was refused.
    ///
    /// Fails on options that cannot work ([`ClientError::InvalidOptions`]), when the calling
    /// context has no runtime (Tokio: not called within a Tokio runtime), and with
    /// [`ClientError::Rejected`] when the server refused the API key on every first dial (the
    /// client is then shut down: nothing keeps retrying). Use [`Client::start`] instead to
    /// keep retrying in the background whatever the first dials met, for example when the key
    /// may be provisioned after start-up.
    pub async fn connect(options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        Self::connect_on(R::current()?, options).await
    }

    /// [`Client::connect`] on an explicit `runtime`.
    pub async fn connect_on(runtime: R, options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        let client = Self::start_on(runtime, options)?;
        client.shared().settled_or_rejected().await?;
        Ok(client)
    }

    /// Starts a client and its dials without waiting for them, on the runtime of the calling
    /// context ([`Runtime::current`]): requests fail with [`ClientError::NotConnected`] until
    /// a connection opens (or [`ClientError::Rejected`] while the server refuses the API key),
    /// while sends wait in the outbox. Slots keep retrying in the background on the backoff
    /// schedule, whatever the first dials met.
    pub fn start(options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        Self::start_on(R::current()?, options)
    }

    /// [`Client::start`] on an explicit `runtime`.
    pub fn start_on(runtime: R, options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        let options = options.into();
        // A runtime that cannot run the driver task (Tokio without timers) would leave a client
        // that looks connected and never times anything out.
        runtime.check()?;
        let runtime = Arc::new(runtime);
        let dial = Arc::new(DialContext::new(&options, R::USER_AGENT)?);
        let (events, subscriber) = EventPublisher::with_budget(options.max_unsolicited_bytes());
        let signals = Signals::new(subscriber);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared<R>>| {
            let live = Live {
                runtime: Arc::clone(&runtime),
                dial,
                reports: DirectReports::new(weak.clone()),
                events,
            };
            Shared::new(&options, live, signals)
        });
        #[cfg(feature = "spool")]
        if let Some(spool) = options.spool() {
            shared.lock().open_spool(spool, std::time::Instant::now())?;
        }
        // The driver task is never aborted: it ends by itself once the client closed.
        drop(spawn_abortable(
            &*runtime,
            drive(Arc::clone(&shared), Arc::clone(&runtime)),
        ));
        shared.connect();
        let inner = HandleInner {
            shared,
            url: redact_url(options.config().url()),
            affinities: AtomicU32::new(0),
        };
        Ok(Self::on(Arc::new(inner)))
    }

    /// A new handle on `inner`, leaning to the next slot (the first handle to slot 0).
    fn on(inner: Arc<HandleInner<R>>) -> Self {
        let affinity = inner.affinities.fetch_add(1, Relaxed);
        Self { inner, affinity }
    }

    fn shared(&self) -> &Shared<R> {
        &self.inner.shared
    }

    /// The spool's counters (records, bytes, syncs...), when the client has a spool.
    #[cfg(feature = "spool")]
    pub fn spool_stats(&self) -> Option<crate::spool::SpoolStats> {
        // Not under the client's lock: the store has its own.
        let spool = self
            .shared()
            .lock()
            .spool()
            .map(|s| std::sync::Arc::clone(s.spool()));
        spool.map(|s| s.stats())
    }

    /// Waits until every message accepted so far is durable in the spool (under its sync
    /// policy: on disk with group commit or `EverySend`, written to the OS with `Never`),
    /// without waiting for confirmations; bounded by `timeout`
    /// ([`ClientError::FlushTimeout`]). Returns at once without a spool.
    #[cfg(feature = "spool")]
    pub async fn sync_spool(&self, timeout: Duration) -> Result<(), ClientError> {
        // Saturates: a huge timeout waits "forever" instead of overflowing.
        self.shared()
            .spool_durable(crate::shared::deadline_after(timeout))
            .await
    }

    /// Sends `message` as a request with the configured timeout and waits for its reply.
    ///
    /// Fails at once with [`ClientError::NotConnected`], [`ClientError::Backpressure`] or
    /// [`ClientError::Closed`]; later with [`ClientError::Timeout`],
    /// [`ClientError::ConnectionLost`] or [`ClientError::Closed`]; a server's "no" is
    /// [`ClientError::Denied`]. Dropping the future cancels the request.
    pub async fn request(&self, message: Outgoing) -> Result<Incoming, ClientError> {
        self.request_with(message, RequestOptions::default()).await
    }

    /// [`Client::request`] with per-request options (timeout, idempotence, a preferred slot;
    /// without one, the request leans to this handle's slot).
    pub async fn request_with(
        &self,
        message: Outgoing,
        mut options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        options.affinity.get_or_insert(self.affinity);
        // A span per request at debug level (its id recorded once the core assigned it);
        // nothing but a level check when debug is off.
        let span =
            tracing::debug_span!("usageflow_request", r#type = %message.kind, id = tracing::field::Empty);
        if span.is_disabled() {
            return self.shared().request(message, options).await;
        }
        self.shared().request(message, options).instrument(span).await
    }

    /// Sends `message` fire-and-forget with the configured guarantee. It goes out at once on
    /// an open connection whose unconfirmed window has room, or waits in the bounded outbox;
    /// [`ClientError::OutboxFull`] hands it back when that is full, [`ClientError::Closed`]
    /// when the client is closed. Never waits. Once written it is *written* until a pong
    /// confirms it; every message ends in one state of [`Client::stats`] (see
    /// [`SendStats`](crate::SendStats)).
    pub fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        self.shared().send(message, SendOptions::default()).map(drop)
    }

    /// [`Client::send`] with per-message options (the delivery guarantee: at most once, or
    /// at least once for a message the server deduplicates). Returns the message's id.
    pub fn send_with(&self, message: Outgoing, options: SendOptions) -> Result<MessageId, ClientError> {
        self.shared().send(message, options)
    }

    /// [`Client::send_with`], returning a [`Receipt`]: a future of this one message's end
    /// (its id once delivered, [`ClientError::NotDelivered`] with its fate otherwise), as a
    /// producer's delivery future. Refused at once as [`Client::send`] is. The receipt costs one
    /// small channel per live message, freed when the message ends; dropping it changes
    /// nothing for the message.
    pub fn send_with_receipt(&self, message: Outgoing, options: SendOptions) -> Result<Receipt, ClientError> {
        self.shared().send_with_receipt(message, options)
    }

    /// Sends `message` and waits up to `timeout` until the server's WebSocket endpoint
    /// confirmed it (a pong for a ping written after it came back; with confirmation off,
    /// until it was written). Fails with [`ClientError::NotDelivered`] when it ended
    /// otherwise (unconfirmed, expired, handed back by close), with
    /// [`ClientError::NotYetConfirmed`] when the wait ended first (the message goes on), and at
    /// once as [`Client::send`] does. A barrier comes within `confirm_after` (1 s by default).
    pub async fn send_confirmed(
        &self,
        message: Outgoing,
        options: SendOptions,
        timeout: Duration,
    ) -> Result<MessageId, ClientError> {
        self.shared()
            .send_confirmed(message, options, deadline_after(timeout))
            .await
    }

    /// [`Client::send_with`] for a producer that would rather slow down than drop: when the
    /// outbox is full, waits up to `timeout` for room (the windows of the open connections
    /// drain into it as pongs confirm what they carry), then fails with
    /// [`ClientError::OutboxFull`], handing the message back.
    pub async fn send_when_room(
        &self,
        message: Outgoing,
        options: SendOptions,
        timeout: Duration,
    ) -> Result<MessageId, ClientError> {
        self.shared()
            .send_when_room(message, options, deadline_after(timeout))
            .await
    }

    /// Waits up to `timeout` until every message sent so far has ended (confirmed, or
    /// otherwise: see the stats), asking every connection for a barrier at once. Closes
    /// nothing: for deploy hooks and hosts about to be frozen. Fails with
    /// [`ClientError::FlushTimeout`] saying how many are still queued or unconfirmed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.shared().flush(deadline_after(timeout)).await
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.shared().is_connected()
    }

    /// Whether the client was closed (by [`Client::close`] or by dropping every handle); it
    /// may still be finishing its pending requests and close handshakes.
    pub fn is_closed(&self) -> bool {
        self.shared().is_closed()
    }

    /// A snapshot of the pool's counters. With the `metrics` feature, also publishes them
    /// through the `metrics` facade (see the [crate docs](crate#metrics)).
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// Fire-and-forget messages waiting in the outbox now: cheaper than [`Client::stats`]
    /// for a producer that paces itself.
    pub fn outbox_len(&self) -> usize {
        self.shared().lock().pool().outbox_len()
    }

    /// The pool's availability, for fail-open decisions.
    pub fn availability(&self) -> Availability {
        self.shared().availability()
    }

    /// Subscribes to the client's events: pool events (connected, disconnected, reconnect
    /// scheduled, attempts exhausted, frame skipped, message dropped, availability changed),
    /// unsolicited frames, and [`ClientEvent::Stopped`] when the client closed.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            events: self.shared().signals().events.subscribe(),
        }
    }

    /// Closes the client: refuses new work; gives pending requests, and queued and written
    /// messages, up to `close_drain` (3 s by default) to finish and be confirmed (dialing at
    /// once when nothing is open; a rejected key ends the drain); then ends what is left,
    /// sends a normal close frame on every connection, and waits until the driver stopped.
    /// Returns the final counters and the messages it could not deliver (see
    /// [`CloseReport`]). Idempotent; bounded by the drain, the core's deadlines and the
    /// write wait.
    ///
    /// The drain ends early when nothing can deliver any more: no connection open and no slot
    /// due to dial (every slot used its dial attempts, or the key was rejected). Slots keep
    /// their backoff schedule during the drain; none is re-armed by it.
    ///
    /// If this future is dropped before it returns (a timeout shorter than the drain), the
    /// drain goes on in the background and what it could not deliver is named in one ERROR
    /// line with its counts per type, since nobody can take it. When the driver task is gone
    /// (its runtime stopped), returns at once with everything ended.
    pub async fn close(&self) -> CloseReport {
        self.shared().close().await
    }
}

impl<R: Runtime> UsageFlowApi for Client<R> {
    async fn request_with(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        Client::request_with(self, message, options).await
    }

    fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        Client::send(self, message)
    }
}

/// Why [`Subscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscriber fell behind and lost this many events (the oldest); the next receive
    /// returns the oldest event still held.
    Lagged(u64),
    /// The client is gone and every event was received.
    Closed,
}

/// Why [`Subscription::try_recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryRecvError {
    /// The subscriber fell behind and lost this many events (the oldest).
    Lagged(u64),
    /// No event is ready now.
    Empty,
    /// The client is gone and every event was received.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "subscriber lagged: {n} events lost"),
            RecvError::Closed => f.write_str("the client is gone"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A stream of [`ClientEvent`]s from [`Client::subscribe`]. A subscriber that falls more than
/// [`EVENT_CAPACITY`](crate::EVENT_CAPACITY) events behind, or behind by more unsolicited frames than
/// [`ClientOptionsBuilder::max_unsolicited_bytes`](crate::ClientOptionsBuilder::max_unsolicited_bytes)
/// allows (4 MiB by default), loses the oldest events; its next receive returns
/// [`RecvError::Lagged`] with how many, then the oldest event still held. Also a `futures`
/// [`Stream`] of events (which skips the lag reports).
#[derive(Debug)]
pub struct Subscription {
    events: async_broadcast::Receiver<ClientEvent>,
}

impl Subscription {
    /// The next event: [`RecvError::Lagged`] when events were lost since the last receive,
    /// [`RecvError::Closed`] once the client is gone and every event was received.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<ClientEvent, RecvError> {
        self.events.recv_direct().await.map_err(|e| match e {
            async_broadcast::RecvError::Overflowed(n) => RecvError::Lagged(n),
            async_broadcast::RecvError::Closed => RecvError::Closed,
        })
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Result<ClientEvent, TryRecvError> {
        self.events.try_recv().map_err(|e| match e {
            async_broadcast::TryRecvError::Overflowed(n) => TryRecvError::Lagged(n),
            async_broadcast::TryRecvError::Empty => TryRecvError::Empty,
            async_broadcast::TryRecvError::Closed => TryRecvError::Closed,
        })
    }

    /// A new subscription to the same client, receiving the events published from now on.
    pub fn resubscribe(&self) -> Subscription {
        Subscription {
            events: self.events.new_receiver(),
        }
    }
}

impl Stream for Subscription {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}
