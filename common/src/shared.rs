//! [`Shared`]: the state every client handle, request guard and driver task of an adapter
//! shares — the [`Driver`] behind a lock, plus the adapter's [`Signals`] — and the client
//! operations written once over it. An adapter's `Client` methods are one-line calls into
//! this module; connection tasks hand their reports straight to the driver through
//! [`DirectReports`] (no hop through another task); the driver task only calls
//! [`Shared::turn`] and sleeps until the next deadline or a wake-up.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use usageflow_socket_core::{
    frame, redact_url, Availability, EncodedRequest, Incoming, Outcome, Outgoing, Pool, RequestOptions,
    SendError, Stats,
};

use crate::io::{CancelOnDrop, Report, ReportSink};
use crate::{ClientError, ClientOptions, Driver, Runtime};

/// Most events the event stream holds for a subscriber; a subscriber that falls further
/// behind loses the oldest events (and is told how many). The unsolicited frames among them
/// are also bounded in bytes ([`ClientOptions::max_unsolicited_bytes`]).
pub const EVENT_CAPACITY: usize = 1024;

/// What the driver task tells the waiters of `connect` and `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverState {
    /// Every slot's first dial settled.
    pub settled: bool,
    /// The driver stopped (closed, or its task ended).
    pub stopped: bool,
}

/// The adapter's wake-ups: how application commands wake the driver task, and how the driver
/// task tells `connect` and `close` where it is. Called without the driver's lock held.
pub trait Signals: Send + Sync {
    /// Wakes the driver task; a wake-up given while it is busy is kept for its next wait.
    fn wake(&self);
    /// Publishes the driver's state (waking the waiters when it changed).
    fn publish(&self, state: DriverState);
    /// Waits until the published state satisfies `pred`.
    fn wait_for(&self, pred: fn(&DriverState) -> bool) -> impl Future<Output = ()> + Send;
}

/// What the driver task does after a [`Shared::turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Sleep until this deadline (or forever, `None`), or until a report or a wake-up.
    Sleep(Option<Instant>),
    /// The driver stopped: the task ends.
    Stop,
}

/// The driver behind its lock, and the adapter's signals. See the [module docs](self).
pub struct Shared<R: Runtime, S> {
    driver: Mutex<Driver<R>>,
    signals: S,
}

impl<R: Runtime, S: Signals> Shared<R, S> {
    /// Builds the pool of `options` (with its seed) over `runtime`.
    pub fn new(options: &ClientOptions, runtime: R, signals: S) -> Self {
        let config = options.config();
        tracing::debug!(
            url = ?config.url_redacted(),
            pool_size = config.pool_size(),
            "usageflow-socket: starting client"
        );
        let pool = Pool::new(config.clone(), options.resolve_seed(), Instant::now());
        Self {
            driver: Mutex::new(Driver::new(pool, runtime)),
            signals,
        }
    }

    /// The adapter's signals.
    pub fn signals(&self) -> &S {
        &self.signals
    }

    /// Locks the driver. Never held across an `.await`. A panic while locked (a bug) does not
    /// make every later call panic too. For reading: calls that change the driver go through
    /// [`Shared::command`] or [`Shared::turn`], which hand completed outcomes to their waiters
    /// after unlocking.
    pub fn lock(&self) -> MutexGuard<'_, Driver<R>> {
        self.driver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an application command on the driver, hands the outcomes it completed to their
    /// waiters once the lock is released, then wakes the driver task if the command moved the
    /// next deadline earlier (or closed the pool).
    pub fn command<T>(&self, f: impl FnOnce(&mut Driver<R>, Instant) -> T) -> T {
        self.command_with(&mut Vec::new(), f)
    }

    /// [`Shared::command`], with `completed` (empty) as the buffer the completed outcomes are
    /// handed over in; it is left empty, with its allocation, for the next call.
    fn command_with<T>(
        &self,
        completed: &mut Vec<(R::Waiter, Outcome)>,
        f: impl FnOnce(&mut Driver<R>, Instant) -> T,
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
        complete_all::<R>(completed.drain(..));
        if wake {
            self.signals.wake();
        }
        result
    }

    /// The driver task's turn: handles a passed deadline (trusting the clock, not the sleep),
    /// stops the driver if everything is done, publishes its state, and arms the next deadline.
    pub fn turn(&self) -> Turn {
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
        complete_all::<R>(completed);
        self.signals.publish(state);
        if state.stopped {
            Turn::Stop
        } else {
            Turn::Sleep(deadline)
        }
    }

    /// Feeds one report of a connection's task, waking the driver task when the report moved
    /// the next deadline earlier. Returns false once the driver stopped.
    pub fn handle_report(&self, report: Report<R::Writer>) -> bool {
        self.command(|driver, now| {
            driver.handle_report(now, report);
            !driver.is_stopped()
        })
    }

    /// Feeds a batch of reports of one connection (in order) under one lock, leaving `batch`
    /// empty; the replies it completes are handed over in `completed` (see
    /// [`Driver::swap_completed`]). Returns false once the driver stopped.
    pub fn handle_reports(
        &self,
        batch: &mut Vec<Report<R::Writer>>,
        completed: &mut Vec<(R::Waiter, Outcome)>,
    ) -> bool {
        self.command_with(completed, |driver, now| {
            for report in batch.drain(..) {
                driver.handle_report(now, report);
            }
            !driver.is_stopped()
        })
    }

    /// Arms every slot (the first dials).
    pub fn connect(&self) {
        self.command(|driver, now| driver.connect(now));
    }

    /// Waits until every first dial settled (or the driver stopped).
    pub async fn settled(&self) {
        self.signals.wait_for(|s| s.settled || s.stopped).await;
    }

    /// Waits until every first dial settled, as [`Shared::settled`]; when every one of them
    /// was refused because of the API key (401/403), closes the pool (the caller gets no
    /// handle, so nothing may keep running) and fails with [`ClientError::Rejected`].
    pub async fn settled_or_rejected(&self) -> Result<(), ClientError> {
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

    /// Starts a request whose outcome goes to `waiter` and comes back through `outcome`
    /// (the two ends of a oneshot channel), and waits for it. Dropping the future cancels
    /// the request; a closed channel (the driver stopped) is [`ClientError::Closed`].
    pub async fn request<E>(
        &self,
        message: Outgoing,
        options: RequestOptions,
        waiter: R::Waiter,
        outcome: impl Future<Output = Result<Outcome, E>>,
    ) -> Result<Incoming, ClientError> {
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
    pub fn send(&self, message: Outgoing) -> Result<(), ClientError> {
        // Encoding is most of a send's cost: do it before taking the lock.
        let frame = frame::encode(&message, None);
        self.command(|driver, now| driver.send_encoded(now, &message.kind, frame))
            .map_err(|refusal| ClientError::from(SendError::from_refusal(refusal, message)))
    }

    /// Whether at least one connection is open.
    pub fn is_connected(&self) -> bool {
        self.lock().is_connected()
    }

    /// Whether the pool was closed (it may still be finishing).
    pub fn is_closed(&self) -> bool {
        self.lock().pool().is_closing()
    }

    /// The pool's counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// The pool's availability.
    pub fn availability(&self) -> Availability {
        self.lock().availability()
    }

    /// Closes the pool without waiting.
    pub fn close_now(&self) {
        self.command(|driver, now| driver.close(now));
    }

    /// Closes the pool and waits until the driver stopped.
    pub async fn close(&self) {
        self.close_now();
        self.signals.wait_for(|s| s.stopped).await;
    }
}

/// Hands outcomes to their waiters (without the driver's lock).
fn complete_all<R: Runtime>(completed: impl IntoIterator<Item = (R::Waiter, Outcome)>) {
    for (waiter, outcome) in completed {
        R::complete(waiter, outcome);
    }
}

/// The report sink of every connection task: reports go straight into the driver, under its
/// lock, from the task that read them. A reader therefore waits for the driver as long as it
/// handles a frame, which is what pushes back on a fast server. Holds the shared state weakly,
/// so the tasks never keep a dropped client alive, and keeps the buffer its batches' replies
/// are completed through (see [`Shared::handle_reports`]).
pub struct DirectReports<R: Runtime, S> {
    shared: Weak<Shared<R, S>>,
    completed: Vec<(R::Waiter, Outcome)>,
}

impl<R: Runtime, S> DirectReports<R, S> {
    /// A sink into `shared`'s driver.
    pub fn new(shared: Weak<Shared<R, S>>) -> Self {
        Self {
            shared,
            completed: Vec::new(),
        }
    }
}

impl<R: Runtime, S> Clone for DirectReports<R, S> {
    fn clone(&self) -> Self {
        Self::new(Weak::clone(&self.shared))
    }
}

impl<R: Runtime, S: Signals> ReportSink<R::Writer> for DirectReports<R, S>
where
    Shared<R, S>: Send + Sync,
    R::Waiter: Send,
{
    fn report(&mut self, report: Report<R::Writer>) -> impl Future<Output = bool> + Send {
        let alive = match self.shared.upgrade() {
            Some(shared) => shared.handle_report(report),
            None => false,
        };
        std::future::ready(alive)
    }

    fn report_all(&mut self, batch: &mut Vec<Report<R::Writer>>) -> impl Future<Output = bool> + Send
    where
        R::Writer: Send,
    {
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

/// An adapter's `Client`: a cheap `Clone` handle on the shared state that closes the pool
/// when the last handle goes away, with the slot this handle's requests lean to
/// ([`RequestOptions::affinity`]). Each handle leans to the next slot (the first to slot 0),
/// so tasks that each keep a clone spread over the pool, one connection each while it is
/// balanced.
pub struct ClientHandle<R: Runtime, S: Signals> {
    inner: Arc<HandleInner<R, S>>,
    affinity: u32,
}

/// What every handle of one client shares.
struct HandleInner<R: Runtime, S: Signals> {
    shared: Arc<Shared<R, S>>,
    /// The client's URL with its credentials redacted, for `Debug`.
    url: String,
    /// The next handle's slot.
    affinities: AtomicU32,
}

impl<R: Runtime, S: Signals> ClientHandle<R, S> {
    /// The first handle on `shared`, for a client of `url` (its `Debug` shows `url` with its
    /// credentials redacted).
    pub fn new(shared: Arc<Shared<R, S>>, url: &str) -> Self {
        let inner = HandleInner {
            shared,
            url: redact_url(url),
            affinities: AtomicU32::new(0),
        };
        Self::on(Arc::new(inner))
    }

    /// A new handle on `inner`, leaning to the next slot.
    fn on(inner: Arc<HandleInner<R, S>>) -> Self {
        let affinity = inner.affinities.fetch_add(1, Relaxed);
        Self { inner, affinity }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared<R, S>> {
        &self.inner.shared
    }

    /// [`Shared::request`], leaning to this handle's slot unless `options` name one.
    pub async fn request<E>(
        &self,
        message: Outgoing,
        mut options: RequestOptions,
        waiter: R::Waiter,
        outcome: impl Future<Output = Result<Outcome, E>>,
    ) -> Result<Incoming, ClientError> {
        options.affinity.get_or_insert(self.affinity);
        self.shared().request(message, options, waiter, outcome).await
    }
}

impl<R: Runtime, S: Signals> Clone for ClientHandle<R, S> {
    fn clone(&self) -> Self {
        Self::on(Arc::clone(&self.inner))
    }
}

impl<R: Runtime, S: Signals> Drop for HandleInner<R, S> {
    fn drop(&mut self) {
        self.shared.close_now();
    }
}

impl<R: Runtime, S: Signals> fmt::Debug for ClientHandle<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// Marks the driver stopped however its task ends (even by a panic), so `close` never hangs.
/// The driver task holds one for its whole life.
pub struct StopOnExit<R: Runtime, S: Signals>(pub Arc<Shared<R, S>>);

impl<R: Runtime, S: Signals> Drop for StopOnExit<R, S> {
    fn drop(&mut self) {
        self.0.signals.publish(DriverState {
            settled: true,
            stopped: true,
        });
    }
}
