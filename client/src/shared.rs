//! [`Shared`]: the state every client handle, request guard and driver task of a client
//! shares — the [`Driver`] behind a lock, plus its [`Signals`] — and the client operations
//! over it. `Client`'s methods are one-line calls into this module; connection tasks hand
//! their reports straight to the driver through [`DirectReports`] (no hop through another
//! task); the driver task ([`drive`]) only calls [`Shared::turn`] and sleeps until the next
//! deadline or a wake-up.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::Instant;

use futures_channel::oneshot;
use usageflow_socket_core::{
    Availability, EncodedRequest, EncodedSend, Incoming, Outcome, Outgoing, Pool, RequestOptions, SendError,
    Stats,
};

use crate::driver::Driver;
use crate::events::EventSubscriber;
use crate::io::{CancelOnDrop, Report, ReportSink};
use crate::live::{Live, LiveWriter, Waiter};
use crate::{ClientError, ClientOptions, Runtime};

/// Most events the event stream holds for a subscriber; a subscriber that falls further
/// behind loses the oldest events (and is told how many). The unsolicited frames among them
/// are also bounded in bytes ([`ClientOptions::max_unsolicited_bytes`]).
pub const EVENT_CAPACITY: usize = 1024;

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

/// What the driver task does after a [`Shared::turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Sleep until this deadline (or forever, `None`), or until a report or a wake-up.
    Sleep(Option<Instant>),
    /// The driver stopped: the task ends.
    Stop,
}

/// The driver behind its lock, and the client's signals. See the [module docs](self).
pub(crate) struct Shared<R: Runtime> {
    driver: Mutex<Driver<Live<R>>>,
    signals: Signals,
}

impl<R: Runtime> Shared<R> {
    /// Builds the pool of `options` (with its seed) over the live effects `live`.
    pub(crate) fn new(options: &ClientOptions, live: Live<R>, signals: Signals) -> Self {
        let config = options.config();
        tracing::debug!(
            url = ?config.url_redacted(),
            pool_size = config.pool_size(),
            "usageflow-socket: starting client"
        );
        let pool = Pool::new(config.clone(), options.resolve_seed(), Instant::now());
        Self {
            driver: Mutex::new(Driver::new(pool, live)),
            signals,
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, Driver<Live<R>>> {
        self.driver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an application command on the driver, hands the outcomes it completed to their
    /// waiters once the lock is released, then wakes the driver task if the command moved the
    /// next deadline earlier (or closed the pool).
    pub(crate) fn command<T>(&self, f: impl FnOnce(&mut Driver<Live<R>>, Instant) -> T) -> T {
        self.command_with(&mut Vec::new(), f)
    }

    /// [`Shared::command`], with `completed` (empty) as the buffer the completed outcomes are
    /// handed over in; it is left empty, with its allocation, for the next call.
    fn command_with<T>(
        &self,
        completed: &mut Vec<(Waiter, Outcome)>,
        f: impl FnOnce(&mut Driver<Live<R>>, Instant) -> T,
    ) -> T {
        // The clock is read before the lock, to keep the lock short; a `now` a little older
        // than one another holder already gave the pool is taken as that one.
        let now = Instant::now();
        let (result, wake) = {
            let mut driver = self.lock();
            let result = f(&mut driver, now);
            driver.swap_completed(completed);
            (result, driver.needs_wake())
        };
        complete_all(completed.drain(..));
        if wake {
            self.signals.wake();
        }
        result
    }

    /// The driver task's turn: handles a passed deadline (trusting the clock, not the sleep),
    /// stops the driver if everything is done, publishes its state, and arms the next deadline.
    pub(crate) fn turn(&self) -> Turn {
        let (state, deadline, completed) = {
            let mut driver = self.lock();
            let now = Instant::now();
            if driver.poll_timeout().is_some_and(|t| t <= now) {
                driver.handle_timeout(now);
            }
            let stopped = driver.check_stopped();
            let settled = driver.first_dials_settled();
            let mut completed = Vec::new();
            driver.swap_completed(&mut completed);
            (DriverState { settled, stopped }, driver.arm(), completed)
        };
        complete_all(completed);
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
    /// was refused because of the API key (401/403), closes the pool (the caller gets no
    /// handle, so nothing may keep running) and fails with [`ClientError::Rejected`].
    pub(crate) async fn settled_or_rejected(&self) -> Result<(), ClientError> {
        self.settled().await;
        let rejection = self.lock().pool().rejection();
        match rejection {
            Some(status) => {
                self.close().await;
                Err(ClientError::Rejected { status })
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
        let (waiter, outcome) = oneshot::channel();
        // Encoding is the costliest part of a request: do it before taking the lock.
        let request = EncodedRequest::new(&message);
        // The frame is all the request needs from here: free the message now rather than
        // keep it in this future's state until the reply.
        drop(message);
        let id = self.command(|driver, now| driver.request(now, request, options, waiter))?;
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
    pub(crate) fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        // Encoding is most of a send's cost: do it before taking the lock.
        let encoded = EncodedSend::new(&message);
        let result = self.command(|driver, now| driver.send(now, encoded));
        result.map_err(|refusal| ClientError::from(SendError::from_refusal(refusal, message)))
    }

    /// Whether at least one connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.lock().is_connected()
    }

    /// Whether the pool was closed (it may still be finishing).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().pool().is_closing()
    }

    /// The pool's counters.
    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// The pool's availability.
    pub(crate) fn availability(&self) -> Availability {
        self.lock().availability()
    }

    /// Closes the pool without waiting.
    pub(crate) fn close_now(&self) {
        self.command(|driver, now| driver.close(now));
    }

    /// Closes the pool and waits until the driver stopped.
    pub(crate) async fn close(&self) {
        self.close_now();
        self.signals.wait_for(|s| s.stopped).await;
    }
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
        self.0.signals.publish(DriverState {
            settled: true,
            stopped: true,
        });
    }
}

/// The driver task: sleeps until the next deadline (the runtime's one timer, created anew only
/// when the deadline moves) or a wake-up, and handles timeouts; ends when the client is closed
/// and everything finished. Connection tasks feed their reports directly ([`DirectReports`]),
/// so this task is off the request path.
pub(crate) async fn drive<R: Runtime>(shared: Arc<Shared<R>>, runtime: Arc<R>) {
    let _stop = StopOnExit(Arc::clone(&shared));
    let mut sleep = pin!(None);
    let mut armed: Option<Instant> = None;
    loop {
        let Turn::Sleep(deadline) = shared.turn() else {
            return;
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
