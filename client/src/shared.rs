//! [`Shared`]: the state every client handle, request guard and driver task of a client
//! shares — the [`Driver`] behind a lock, plus its [`Signals`] — and the client operations
//! over it. `Client`'s methods are one-line calls into this module; connection tasks hand
//! their reports straight to the driver through [`DirectReports`] (no hop through another
//! task); the driver task ([`drive`]) only calls [`Shared::turn`] and sleeps until the next
//! deadline or a wake-up.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use usageflow_socket_core::{
    Availability, EncodedRequest, EncodedSend, Incoming, MessageId, Outcome, Outgoing, Pool, RequestOptions,
    SendError, SendOptions, SendRefusal, Stats, Undelivered,
};

use crate::driver::{wait_durable_send, wait_durable_send_async, Driver};
use crate::events::EventSubscriber;
use crate::io::{CancelOnDrop, Report, ReportSink};
use crate::leftovers::Ending;
use crate::live::{Live, LiveWriter, Waiter};

use crate::receipt::Receipt;
use crate::{ClientError, ClientOptions, Runtime};

/// The instant `timeout` from now, saturated: a huge timeout (`Duration::MAX`) means about
/// thirty years, never an overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 3600)))
        .unwrap_or(now)
}

/// What the driver task tells the waiters of `connect` and `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DriverState {
    /// Every slot's first dial settled.
    pub settled: bool,
    /// The driver stopped (closed, or its task ended).
    pub stopped: bool,
}

/// The client's wake-ups: how application commands wake the driver task, and how the driver
/// task tells `connect` and `close` where it is; plus the event stream's subscriber side.
/// Runtime-neutral (`async-channel`, `event-listener`). Used without the driver's lock held.
pub(crate) struct Signals {
    /// The driver task's wake-up: a full channel already holds one.
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
    state: Mutex<DriverState>,
    changed: event_listener::Event,
    /// The event stream, for `Client::subscribe`.
    pub(crate) events: EventSubscriber,
    /// Fired after every change to the driver while someone watches (`flush`, a send that
    /// waits for room): they check their condition again.
    progress: event_listener::Event,
    watchers: AtomicUsize,
}

impl Signals {
    /// The signals over the event channel's `events`.
    pub(crate) fn new(events: EventSubscriber) -> Self {
        let (wake, woken) = async_channel::bounded(1);
        Self {
            wake,
            woken,
            state: Mutex::new(DriverState::default()),
            changed: event_listener::Event::new(),
            events,
            progress: event_listener::Event::new(),
            watchers: AtomicUsize::new(0),
        }
    }

    /// Wakes the watchers of progress, if any (one atomic load when there are none).
    fn progressed(&self) {
        if self.watchers.load(Ordering::Acquire) > 0 {
            self.progress.notify(usize::MAX);
        }
    }

    /// Waits until `done()` holds or `deadline` passes (on `runtime`'s timer); returns
    /// whether it holds. `done` is checked after every change to the driver.
    pub(crate) async fn watch<R: Runtime>(
        &self,
        runtime: &R,
        deadline: Instant,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        let _unwatch = Unwatch(&self.watchers);
        let mut timer = pin!(runtime.sleep_until(deadline));
        loop {
            let listener = self.progress.listen();
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let mut listener = pin!(listener);
            let timed_out = poll_fn(|cx| {
                if listener.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                timer.as_mut().poll(cx).map(|()| true)
            })
            .await;
            if timed_out {
                return done();
            }
        }
    }

    /// Wakes the driver task; a wake-up given while it is busy is kept for its next wait.
    pub(crate) fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Publishes the driver's state (waking the waiters when it changed).
    pub(crate) fn publish(&self, state: DriverState) {
        let mut current = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *current != state {
            *current = state;
            self.changed.notify(usize::MAX);
        }
    }

    fn state(&self) -> DriverState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the published state satisfies `pred`.
    pub(crate) async fn wait_for(&self, pred: fn(&DriverState) -> bool) {
        loop {
            if pred(&self.state()) {
                return;
            }
            let listener = self.changed.listen();
            if pred(&self.state()) {
                return;
            }
            listener.await;
        }
    }
}

/// Lowers the watcher count when a watch ends (however it ends).
struct Unwatch<'a>(&'a AtomicUsize);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a [`Client::close`](crate::Client::close) hands back: the final counters and every
/// fire-and-forget message the close drain could not deliver.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CloseReport {
    /// The counters once the client closed (every message in a final state).
    pub stats: Stats,
    /// The messages still held when the drain ended, in send order: those that never left
    /// the outbox, and at-least-once messages written but not confirmed
    /// ([`Undelivered::written_before`]). Written at-most-once messages are not kept; they
    /// count as `unconfirmed`. Only the first `close` call that returns gets them; when no call
    /// returns (every one abandoned), they are named in an ERROR line instead. Empty with a
    /// spool: those messages stay in the spool instead (see `spooled`).
    pub undelivered: Vec<Undelivered>,
    /// With a spool: per message type, the messages the drain could not deliver, left in the
    /// spool for the next process to send (also `stats.sends.spooled`).
    pub spooled: std::collections::BTreeMap<String, u64>,
}

impl CloseReport {
    /// Whether everything sent was delivered: nothing handed back, nothing unconfirmed,
    /// dropped or expired.
    pub fn is_clean(&self) -> bool {
        let s = &self.stats.sends;
        self.undelivered.is_empty() && s.unconfirmed == 0 && s.dropped == 0 && s.expired == 0 && s.closed == 0
    }
}

/// What the driver task does after a [`Shared::turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Sleep until this deadline (or forever, `None`), or until a report or a wake-up.
    Sleep(Option<Instant>),
    /// The driver stopped: the task ends.
    Stop,
}

/// The live effects of a client on `R`: its connection tasks report straight to its driver.
pub(crate) type LiveOf<R> = Live<R, DirectReports<R>>;

/// The driver behind its lock, and the client's signals. See the [module docs](self).
pub(crate) struct Shared<R: Runtime> {
    driver: Mutex<Driver<LiveOf<R>>>,
    signals: Signals,
    runtime: Arc<R>,
    /// The `metrics` feature's publisher.
    #[cfg(feature = "metrics")]
    metrics: crate::metrics_bridge::Publisher,
}

impl<R: Runtime> Shared<R> {
    /// Builds the pool of `options` (with its seed) over the live effects `live`.
    pub(crate) fn new(options: &ClientOptions, live: LiveOf<R>, signals: Signals) -> Self {
        let config = options.config();
        tracing::debug!(
            url = ?config.url_redacted(),
            pool_size = config.pool_size(),
            "usageflow-socket: starting client"
        );
        let pool = Pool::new(config.clone(), options.resolve_seed(), Instant::now());
        let runtime = Arc::clone(&live.runtime);
        #[cfg(feature = "metrics")]
        crate::metrics_bridge::describe();
        Self {
            driver: Mutex::new(Driver::new(pool, live)),
            signals,
            runtime,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics_bridge::Publisher::new(),
        }
    }

    /// The client's signals.
    pub(crate) fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Locks the driver. Never held across an `.await`. A panic while locked (a bug) does not
    /// make every later call panic too. For reading: calls that change the driver go through
    /// [`Shared::command`] or [`Shared::turn`], which hand completed outcomes to their waiters
    /// after unlocking.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<LiveOf<R>>> {
        self.driver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an application command on the driver, hands the outcomes it completed to their
    /// waiters once the lock is released, then wakes the driver task if the command moved the
    /// next deadline earlier (or closed the pool).
    pub(crate) fn command<T>(&self, f: impl FnOnce(&mut Driver<LiveOf<R>>, Instant) -> T) -> T {
        self.command_with(&mut Vec::new(), f)
    }

    /// [`Shared::command`], with `completed` (empty) as the buffer the completed outcomes are
    /// handed over in; it is left empty, with its allocation, for the next call.
    fn command_with<T>(
        &self,
        completed: &mut Vec<(Waiter, Outcome)>,
        f: impl FnOnce(&mut Driver<LiveOf<R>>, Instant) -> T,
    ) -> T {
        // The clock is read before the lock, to keep the lock short; a `now` a little older
        // than one another holder already gave the pool is taken as that one.
        let now = Instant::now();
        let (result, wake, logs) = {
            let mut driver = self.lock();
            let result = f(&mut driver, now);
            driver.swap_completed(completed);
            (result, driver.needs_wake(), driver.take_logs())
        };
        complete_all(completed.drain(..));
        logs.write();
        if wake {
            self.signals.wake();
        }
        self.signals.progressed();
        result
    }

    /// The driver task's turn: handles a passed deadline (trusting the clock, not the sleep),
    /// stops the driver if everything is done, publishes its state, and arms the next deadline.
    pub(crate) fn turn(&self) -> Turn {
        let (state, deadline, completed, logs) = {
            let mut driver = self.lock();
            let now = Instant::now();
            if driver.poll_timeout().is_some_and(|t| t <= now) {
                driver.handle_timeout(now);
            }
            let stopped = driver.check_stopped(now);
            let settled = driver.first_dials_settled();
            let mut completed = Vec::new();
            driver.swap_completed(&mut completed);
            let logs = driver.take_logs();
            (DriverState { settled, stopped }, driver.arm(), completed, logs)
        };
        complete_all(completed);
        logs.write();
        self.signals.progressed();
        self.signals.publish(state);
        if state.stopped {
            Turn::Stop
        } else {
            Turn::Sleep(deadline)
        }
    }

    /// Feeds one report of a connection's task, waking the driver task when the report moved
    /// the next deadline earlier. Returns false once the driver stopped.
    pub(crate) fn handle_report(&self, report: Report<LiveWriter>) -> bool {
        self.command(|driver, now| {
            driver.handle_report(now, report);
            !driver.is_stopped()
        })
    }

    /// Feeds a batch of reports of one connection (in order) under one lock, leaving `batch`
    /// empty; the replies it completes are handed over in `completed` (see
    /// [`Driver::swap_completed`]). Returns false once the driver stopped.
    pub(crate) fn handle_reports(
        &self,
        batch: &mut Vec<Report<LiveWriter>>,
        completed: &mut Vec<(Waiter, Outcome)>,
    ) -> bool {
        self.command_with(completed, |driver, now| {
            for report in batch.drain(..) {
                driver.handle_report(now, report);
            }
            !driver.is_stopped()
        })
    }

    /// Arms every slot (the first dials).
    pub(crate) fn connect(&self) {
        self.command(|driver, now| driver.connect(now));
    }

    /// Waits until every first dial settled (or the driver stopped).
    pub(crate) async fn settled(&self) {
        self.signals.wait_for(|s| s.settled || s.stopped).await;
    }

    /// Waits until every first dial settled, as [`Shared::settled`]; when every one of them
    /// was refused because of the API key (401/403) or by the HTTP proxy (4xx), closes the
    /// pool (the caller gets no handle, so nothing may keep running) and fails with
    /// [`ClientError::Rejected`] or [`ClientError::ProxyRefused`]; fails with
    /// [`ClientError::DriverGone`] when the driver task ended first (its runtime stopped).
    pub(crate) async fn settled_or_rejected(&self) -> Result<(), ClientError> {
        self.settled().await;
        let refusal = {
            let driver = self.lock();
            if driver.is_gone() {
                return Err(ClientError::DriverGone);
            }
            match (driver.pool().rejection(), driver.proxy_refusal()) {
                (Some(status), _) => Some(ClientError::Rejected { status }),
                (None, Some(status)) => Some(ClientError::ProxyRefused { status }),
                (None, None) => None,
            }
        };
        match refusal {
            Some(error) => {
                self.close().await;
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Starts a request and waits for its outcome (through a oneshot channel). Dropping the
    /// future cancels the request; a closed channel (the driver stopped) is
    /// [`ClientError::Closed`].
    pub(crate) async fn request(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        // The one per-request cost of the `metrics` feature: a clock read at each end and a
        // histogram record (by outcome; `cancelled` if this future is dropped first).
        #[cfg(feature = "metrics")]
        let timer = crate::metrics_bridge::RequestTimer::start();
        let result = self.request_untimed(message, options).await;
        #[cfg(feature = "metrics")]
        timer.finish(&result);
        result
    }

    /// [`Shared::request`] without its timing.
    async fn request_untimed(
        &self,
        message: Outgoing,
        options: RequestOptions,
    ) -> Result<Incoming, ClientError> {
        let (waiter, outcome) = oneshot::channel();
        // Encoding is the costliest part of a request: do it before taking the lock.
        let request = EncodedRequest::new(&message);
        // The frame is all the request needs from here: free the message now rather than
        // keep it in this future's state until the reply.
        drop(message);
        let id = self.command(|driver, now| driver.request(now, request, options, waiter))?;
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("id", tracing::field::display(id));
        }
        // If this future is dropped before the outcome, cancel the request in the core.
        let guard = CancelOnDrop::new(|| {
            self.command(|driver, now| driver.cancel(now, id));
        });
        let outcome = outcome.await;
        guard.disarm();
        match outcome {
            Ok(outcome) => ClientError::from_outcome(outcome),
            // The driver dropped the waiter: it stopped.
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Sends a fire-and-forget message.
    pub(crate) fn send(&self, message: Outgoing, options: SendOptions) -> Result<MessageId, ClientError> {
        // Encoding is most of a send's cost: do it before taking the lock.
        let encoded = EncodedSend::new(&message);
        let (result, durable) = self.command(|driver, now| {
            let result = gone_or(driver.send(now, encoded, options), driver);
            let durable = result.is_ok().then(|| driver.durable_send_mark()).flatten();
            (result, durable)
        });
        let id = result.map_err(|(refusal, gone)| send_refused(refusal, message, gone))?;
        // Under `EverySend`, durable before it returns (the lock is not held while waiting).
        wait_durable_send(durable)?;
        Ok(id)
    }

    /// Sends a message whose end the returned [`Receipt`] resolves to.
    pub(crate) fn send_with_receipt(
        &self,
        message: Outgoing,
        options: SendOptions,
    ) -> Result<Receipt, ClientError> {
        let (receipt, durable) = self.send_tracked(message, options)?;
        // Under `EverySend`, durable before it returns, as `send`.
        wait_durable_send(durable)?;
        Ok(receipt)
    }

    /// A send with a receipt, and what it must do with its spool record once the lock is
    /// released.
    fn send_tracked(
        &self,
        message: Outgoing,
        options: SendOptions,
    ) -> Result<(Receipt, Option<crate::driver::DurableSend>), ClientError> {
        let (waiter, fate) = oneshot::channel();
        let encoded = EncodedSend::new(&message);
        let (result, durable) = self.command(|driver, now| {
            let result = gone_or(driver.send_tracked(now, encoded, options, waiter), driver);
            let durable = result.is_ok().then(|| driver.durable_send_mark()).flatten();
            (result, durable)
        });
        match result {
            Ok(id) => Ok((Receipt::new(id, fate), durable)),
            Err((refusal, gone)) => Err(send_refused(refusal, message, gone)),
        }
    }

    /// Sends a message and waits (until `deadline`) for its end: `Ok` once confirmed (or
    /// written, with confirmation off).
    pub(crate) async fn send_confirmed(
        &self,
        message: Outgoing,
        options: SendOptions,
        deadline: Instant,
    ) -> Result<MessageId, ClientError> {
        let (receipt, durable) = self.send_tracked(message, options)?;
        // Under `EverySend`, wait for durability on the runtime's timer, not by blocking.
        wait_durable_send_async(durable, &*self.runtime).await?;
        let id = receipt.id();
        let timer = self.runtime.sleep_until(deadline);
        match futures_util::future::select(receipt, pin!(timer)).await {
            futures_util::future::Either::Left((result, _)) => result,
            futures_util::future::Either::Right(_) => Err(ClientError::NotYetConfirmed { id }),
        }
    }

    /// Sends a message, waiting (until `deadline`) for room in the outbox when it is full;
    /// only the last try, at the deadline, can be refused (and counted as dropped).
    pub(crate) async fn send_when_room(
        &self,
        message: Outgoing,
        options: SendOptions,
        deadline: Instant,
    ) -> Result<MessageId, ClientError> {
        loop {
            // Only a send with room counts as one: waiting is not dropping.
            let encoded = EncodedSend::new(&message);
            let len = encoded.frame_len();
            let sent = self.command(|driver, now| {
                (driver.pool().has_room_for(len) || driver.is_stopped()).then(|| {
                    let result = gone_or(driver.send(now, encoded, options), driver);
                    let durable = result.is_ok().then(|| driver.durable_send_mark()).flatten();
                    result.map(|id| (id, durable))
                })
            });
            match sent {
                Some(Ok((id, durable))) => {
                    // Under `EverySend`, durable before it returns, as `send` (waiting on the
                    // runtime's timer: this is an async call).
                    wait_durable_send_async(durable, &*self.runtime).await?;
                    return Ok(id);
                }
                Some(Err((refusal, gone))) => return Err(send_refused(refusal, message, gone)),
                None => {}
            }
            let room = self
                .signals
                .watch(&*self.runtime, deadline, || {
                    let driver = self.lock();
                    driver.pool().has_room_for(len) || driver.is_stopped()
                })
                .await;
            if !room {
                // One last try: the room may have come with the deadline.
                return self.send(message, options);
            }
        }
    }

    /// Waits (until `deadline`) until every message sent so far has ended, asking for
    /// barriers at once.
    pub(crate) async fn flush(&self, deadline: Instant) -> Result<(), ClientError> {
        let mark = self.command(|driver, now| driver.flush(now));
        // A driver that stopped settles nothing more: its end (a close or its task gone) ended
        // every message.
        self.signals
            .watch(&*self.runtime, deadline, || {
                let driver = self.lock();
                driver.pool().is_settled(mark) || driver.is_stopped()
            })
            .await;
        {
            let driver = self.lock();
            if driver.is_gone() {
                return Err(ClientError::DriverGone);
            }
            if !driver.pool().is_settled(mark) {
                let remaining = driver.pool().live_messages();
                return Err(ClientError::FlushTimeout { remaining });
            }
        }
        // With a spool, what is left in it (records kept again, releases) is durable too.
        #[cfg(feature = "spool")]
        self.spool_durable(deadline).await?;
        Ok(())
    }

    /// Waits (until `deadline`) until everything appended to the spool so far is durable
    /// (under its sync policy); at once without a spool.
    #[cfg(feature = "spool")]
    pub(crate) async fn spool_durable(&self, deadline: Instant) -> Result<(), ClientError> {
        let spool = self.lock().spool().map(|s| Arc::clone(s.spool()));
        if let Some(spool) = spool {
            let durable = spool
                .wait_durable(spool.written_mark(), self.runtime.sleep_until(deadline))
                .await
                .map_err(ClientError::Spool)?;
            if !durable {
                return Err(ClientError::FlushTimeout { remaining: 0 });
            }
        }
        Ok(())
    }

    /// Whether at least one connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.lock().is_connected()
    }

    /// Whether the pool was closed (it may still be finishing).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().pool().is_closing()
    }

    /// The pool's counters (with the `metrics` feature, also published).
    pub(crate) fn stats(&self) -> Stats {
        #[cfg(feature = "metrics")]
        if let Some(stats) = self.publish_metrics(true) {
            return stats;
        }
        self.lock().stats()
    }

    /// Publishes the counters through the `metrics` facade when `force` or when a periodic
    /// publication is due; returns the snapshot published.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self, force: bool) -> Option<Stats> {
        self.metrics.publish_with(force, || {
            let driver = self.lock();
            (driver.stats(), driver.availability())
        })
    }

    /// The pool's availability.
    pub(crate) fn availability(&self) -> Availability {
        self.lock().availability()
    }

    /// Closes the pool without waiting.
    pub(crate) fn close_now(&self) {
        self.command(|driver, now| driver.close(now));
    }

    /// Closes the pool and waits until the driver stopped; hands back the final counters
    /// and what the drain could not deliver. If this future is dropped first, nobody will
    /// take the hand-back: it is named in an ERROR line when the drain ends.
    pub(crate) async fn close(&self) -> CloseReport {
        self.close_now();
        let abandoned = CancelOnDrop::new(|| {
            self.command(|driver, _| driver.log_undelivered_at_stop(Ending::CloseAbandoned));
        });
        self.signals.wait_for(|s| s.stopped).await;
        abandoned.disarm();
        // The final counters (the driver task publishes them too, maybe not yet).
        #[cfg(feature = "metrics")]
        self.publish_metrics(true);
        let report = {
            let mut driver = self.lock();
            let stats = driver.stats();
            let spooled = stats
                .sends_by_type
                .iter()
                .filter(|(_, s)| s.spooled > 0)
                .map(|(kind, s)| (kind.clone(), s.spooled))
                .collect();
            CloseReport {
                stats,
                undelivered: driver.take_undelivered(),
                spooled,
            }
        };
        // What the drain left in the spool is made durable, and the directory let go.
        #[cfg(feature = "spool")]
        {
            let link = self.lock().take_spool();
            if let Some(link) = link {
                crate::spooling::close(link, &*self.runtime).await;
            }
        }
        report
    }

    /// The last handle went away without `close`: close, drain in the background, and log
    /// what could not be delivered.
    pub(crate) fn close_dropped(&self) {
        self.command(|driver, now| {
            driver.log_undelivered_at_stop(Ending::Dropped);
            driver.close(now);
        });
    }

    /// The driver task ended (however: done, dropped by its runtime, panicked). If the client
    /// was not done, nothing will drive it any more: it is ended now ([`Driver::abandon`]).
    /// Then `connect`, `close` and every watcher are told.
    fn driver_exited(&self) {
        let (completed, logs) = {
            let mut driver = self.lock();
            if !driver.is_stopped() {
                driver.abandon(Instant::now());
            }
            let mut completed = Vec::new();
            driver.swap_completed(&mut completed);
            (completed, driver.take_logs())
        };
        complete_all(completed);
        logs.write();
        self.signals.publish(DriverState {
            settled: true,
            stopped: true,
        });
        self.signals.progressed();
    }
}

impl<R: Runtime> Drop for Shared<R> {
    /// The last place that can see what the client could not deliver, however it ended (its
    /// runtime stopped mid-drain, its driver task never ran): names it in one ERROR line
    /// (see [`crate::leftovers`]) and publishes the final metrics.
    fn drop(&mut self) {
        let driver = self.driver.get_mut().unwrap_or_else(PoisonError::into_inner);
        driver.last_words(Instant::now()).write();
        #[cfg(feature = "metrics")]
        {
            let snapshot = (driver.stats(), driver.availability());
            self.metrics.publish_with(true, || snapshot);
        }
    }
}

/// `result`, with whether the driver is gone beside a refusal.
fn gone_or<R: Runtime, T, E>(result: Result<T, E>, driver: &Driver<LiveOf<R>>) -> Result<T, (E, bool)> {
    result.map_err(|e| (e, driver.is_gone()))
}

/// The error for a refused send: [`ClientError::DriverGone`] when the driver task is gone
/// (the pool, closed then, counted it as refused), else the refusal's own.
fn send_refused(refusal: SendRefusal, message: Outgoing, gone: bool) -> ClientError {
    if gone {
        return ClientError::DriverGone;
    }
    ClientError::from(SendError::from_refusal(refusal, message))
}

/// Hands outcomes to their waiters (without the driver's lock).
fn complete_all(completed: impl IntoIterator<Item = (Waiter, Outcome)>) {
    for (waiter, outcome) in completed {
        // The caller may have gone (its future was dropped after the outcome was drawn).
        let _ = waiter.send(outcome);
    }
}

/// The report sink of every connection task: reports go straight into the driver, under its
/// lock, from the task that read them. A reader therefore waits for the driver as long as it
/// handles a frame, which is what pushes back on a fast server. Holds the shared state weakly,
/// so the tasks never keep a dropped client alive, and keeps the buffer its batches' replies
/// are completed through (see [`Shared::handle_reports`]).
pub(crate) struct DirectReports<R: Runtime> {
    shared: Weak<Shared<R>>,
    completed: Vec<(Waiter, Outcome)>,
}

impl<R: Runtime> DirectReports<R> {
    /// A sink into `shared`'s driver.
    pub(crate) fn new(shared: Weak<Shared<R>>) -> Self {
        Self {
            shared,
            completed: Vec::new(),
        }
    }
}

impl<R: Runtime> Clone for DirectReports<R> {
    fn clone(&self) -> Self {
        Self::new(Weak::clone(&self.shared))
    }
}

impl<R: Runtime> ReportSink<LiveWriter> for DirectReports<R> {
    fn report(&mut self, report: Report<LiveWriter>) -> impl Future<Output = bool> + Send {
        let alive = match self.shared.upgrade() {
            Some(shared) => shared.handle_report(report),
            None => false,
        };
        std::future::ready(alive)
    }

    fn report_all(&mut self, batch: &mut Vec<Report<LiveWriter>>) -> impl Future<Output = bool> + Send {
        let alive = match self.shared.upgrade() {
            Some(shared) => shared.handle_reports(batch, &mut self.completed),
            None => {
                batch.clear();
                false
            }
        };
        std::future::ready(alive)
    }
}

/// Marks the driver stopped however its task ends (even by a panic), so `close` never hangs.
/// The driver task holds one for its whole life.
pub(crate) struct StopOnExit<R: Runtime>(pub(crate) Arc<Shared<R>>);

impl<R: Runtime> Drop for StopOnExit<R> {
    fn drop(&mut self) {
        self.0.driver_exited();
    }
}

/// The driver task: sleeps until the next deadline (the runtime's one timer, created anew only
/// when the deadline moves) or a wake-up, and handles timeouts; ends when the client is closed
/// and everything finished. Connection tasks feed their reports directly ([`DirectReports`]),
/// so this task is off the request path.
///
/// The task's stop guard exists before its first poll, so a task its runtime drops without
/// ever running it (a runtime shutting down, a handle to a stopped one) still ends the client
/// and wakes `connect` and `close`.
pub(crate) fn drive<R: Runtime>(shared: Arc<Shared<R>>, runtime: Arc<R>) -> impl Future<Output = ()> + Send {
    let stop = StopOnExit(Arc::clone(&shared));
    async move {
        let _stop = stop;
        drive_until_stopped(shared, runtime).await;
    }
}

async fn drive_until_stopped<R: Runtime>(shared: Arc<Shared<R>>, runtime: Arc<R>) {
    let mut sleep = pin!(None);
    let mut armed: Option<Instant> = None;
    loop {
        let Turn::Sleep(deadline) = shared.turn() else {
            // The final counters.
            #[cfg(feature = "metrics")]
            shared.publish_metrics(true);
            return;
        };
        // Publish when due, and wake for the next publication if nothing else would.
        #[cfg(feature = "metrics")]
        let deadline = {
            shared.publish_metrics(false);
            let due = shared.metrics.next_due(Instant::now());
            Some(deadline.map_or(due, |d| d.min(due)))
        };
        // A new timer only when the deadline changed (or the old one already fired).
        if deadline != armed || (sleep.is_none() && deadline.is_some()) {
            armed = deadline;
            sleep.set(deadline.map(|at| runtime.sleep_until(at)));
        }
        let mut woken = pin!(shared.signals().woken.recv());
        // Biased: wake-ups first, then the timer.
        let fired = poll_fn(|cx| {
            if woken.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            match sleep.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(true),
                _ => Poll::Pending,
            }
        })
        .await;
        if fired {
            sleep.set(None);
        }
    }
}
