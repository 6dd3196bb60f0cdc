//! The runtime-independent driver: the [`Pool`] plus everything the client keeps beside it
//! (request waiters, the dial/reader task and writer of every connection, event subscribers),
//! and the one place where every [`Output`] is carried out.
//!
//! The driver reaches the outside world through [`Effects`] (the live implementation spawns
//! dials on the client's [`Runtime`](crate::Runtime); the tests record what is asked) and
//! lives in a `Mutex` in [`Shared`](crate::shared::Shared). Every
//! method of [`Driver`] that changes state drains the pool's outputs before it returns, as
//! the core's contract requires, so the lock holder has always done all the work, except
//! handing outcomes to their waiters: those wait in [`Driver::swap_completed`] until the
//! lock is released, so waking a caller never lengthens the lock. Connection tasks
//! hand their [`Report`]s straight to the driver under its lock; the driver task only sleeps
//! until [`Driver::poll_timeout`] and calls [`Driver::handle_timeout`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_channel::oneshot;
use tracing::{debug, trace};
use usageflow_socket_core::{
    Availability, CloseReason, ConnId, DialError, DropReason, EncodedRequest, EncodedSend, Event, FrameError,
    Incoming, Input, MessageFate, MessageId, Outcome, Output, Pool, RequestError, RequestId,
    RequestIdBuildHasher, RequestOptions, SendOptions, SendRefusal, Stats, Undelivered,
};

use crate::io::{Report, WriteCommand};
use crate::leftovers::{abandon, Ending, Leftovers};
use crate::log_limit::{DropLimiter, DropLog, SkipLimiter, SkipLog, DROP_WARN_WINDOW, SKIP_WARN_WINDOW};
use crate::logs::{LogLine, Logs};
use crate::ClientError;

/// What subscribers of a client receive.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Something the pool reported (connected, disconnected, reconnect scheduled, attempts
    /// exhausted, frame skipped, message dropped, availability changed).
    Pool(Event),
    /// A frame that answered no pending request (late, duplicate, stray, push).
    Unsolicited {
        /// The connection it came on.
        conn: ConnId,
        /// The frame.
        frame: Incoming,
    },
    /// The client closed and its driver stopped; no further events follow.
    Stopped,
}

/// What the driver does to the outside world: hand outcomes over, spawn and abort connection
/// tasks, queue writes, publish events. Every method is called with the driver's lock held,
/// so none may block or await. (Outcomes are handed to their waiters after the lock is
/// released: see [`Driver::swap_completed`].)
pub(crate) trait Effects {
    /// The sending half of a request's oneshot channel.
    type Waiter;
    /// Handle of a connection's task (dial, then read). Aborting it drops the socket.
    type Task;
    /// Handle of a connection's writer task (its command channel and abort handle).
    type Writer;

    /// Spawns the task of `conn`: dial, report [`Report::Connected`] (with a spawned writer)
    /// or `Input::ConnectFailed`, then read (see [`crate::io::run_connection`]).
    fn dial(&mut self, conn: ConnId) -> Self::Task;
    /// Aborts a connection's task (drops its socket, or abandons its dial).
    fn abort(&mut self, task: Self::Task);
    /// Queues a command on a writer; `false` if the writer is gone (its task already
    /// reported why).
    fn write(&mut self, writer: &Self::Writer, command: WriteCommand) -> bool;
    /// Aborts a writer task.
    fn abort_writer(&mut self, writer: Self::Writer);
    /// Stops a writer: it starts no more writes. Returns the number of the first write it
    /// never started (writes are numbered from 1 per connection), or `None` when unknown.
    fn stop_writes(&mut self, writer: &Self::Writer) -> Option<u64>;
    /// Broadcasts an event to subscribers (ignore the absence of subscribers).
    fn publish(&mut self, event: ClientEvent);
}

struct Link<R: Effects> {
    task: R::Task,
    writer: R::Writer,
}

/// What a send does with its spool record once the lock is released
/// ([`Driver::durable_send_mark`]): write it through, or wait until it is durable.
#[cfg(feature = "spool")]
pub(crate) type DurableSend = crate::spooling::SendMark;
/// A send's wait for durability: none without the `spool` feature.
#[cfg(not(feature = "spool"))]
pub(crate) type DurableSend = std::convert::Infallible;

/// Blocks until `mark` (from [`Driver::durable_send_mark`]) is durable, bounded; at once
/// without one.
pub(crate) fn wait_durable_send(mark: Option<DurableSend>) -> Result<(), ClientError> {
    match mark {
        None => Ok(()),
        #[cfg(feature = "spool")]
        Some(mark) => mark.settle(),
        #[cfg(not(feature = "spool"))]
        Some(never) => match never {},
    }
}

/// [`wait_durable_send`] for async callers: waits on the runtime's timer instead of blocking
/// the thread.
pub(crate) async fn wait_durable_send_async<R: crate::Runtime>(
    mark: Option<DurableSend>,
    runtime: &R,
) -> Result<(), ClientError> {
    match mark {
        None => Ok(()),
        #[cfg(feature = "spool")]
        Some(mark) => {
            let deadline = Instant::now() + crate::spooling::EVERY_SEND_WAIT;
            mark.settle_async(runtime.sleep_until(deadline)).await
        }
        #[cfg(not(feature = "spool"))]
        Some(never) => {
            let _ = runtime;
            match never {}
        }
    }
}

/// The pool and the client state beside it. See the [module docs](self).
pub(crate) struct Driver<R: Effects> {
    pool: Pool,
    rt: R,
    waiters: HashMap<RequestId, R::Waiter, RequestIdBuildHasher>,
    /// Outcomes drawn but not yet handed to their waiters (see [`Driver::swap_completed`]).
    completed: Vec<(R::Waiter, Outcome)>,
    dialing: BTreeMap<ConnId, R::Task>,
    open: BTreeMap<ConnId, Link<R>>,
    /// Connections closing gracefully; the pool bounds how long (it aborts them after the
    /// write wait), so this map holds no deadline of its own.
    closing: BTreeMap<ConnId, Link<R>>,
    /// Slots whose first dial has not settled yet (for `connect`).
    first_dials: BTreeSet<u16>,
    /// The deadline the driver task currently sleeps until.
    armed: Option<Instant>,
    /// Whether the driver task's last turn saw every first dial settled (and published it).
    settled_seen: bool,
    stopped: bool,
    /// The rate limit of skipped-frame warnings.
    skips: SkipLimiter,
    /// The rate limit of dropped-message warnings.
    drops: DropLimiter,
    /// Log lines to write once the lock is released (see [`Driver::take_logs`]).
    logs: Vec<LogLine>,
    /// Waiters of messages sent with `notify` ([`Driver::send_tracked`]), by message id: at
    /// most one per live message (each leaves when its message ends), so bounded as they are.
    settle_waiters: HashMap<u64, oneshot::Sender<MessageFate>>,
    /// Nobody will take what the close drain could not deliver (the client was dropped, or
    /// its `close` abandoned): name it in an ERROR line when the driver stops.
    log_undelivered: Option<Ending>,
    /// The driver task ended without the client closing (see [`Driver::abandon`]).
    gone: bool,
    /// Per slot, the HTTP proxy's refusal (4xx) of its most recent dial, if it was one.
    proxy_refusals: Vec<Option<u16>>,
    /// The client's URL, credentials redacted, for the lines that name a client.
    url: Arc<str>,
    /// The spool, once opened: carries out the pool's keeps and releases.
    #[cfg(feature = "spool")]
    spool: Option<crate::spooling::SpoolLink>,
    /// A spool was opened: what is left at the end stays in it (see [`crate::leftovers`]).
    spool_opened: bool,
}

impl<R: Effects> Driver<R> {
    /// A driver over `pool` (not yet connected: call [`Driver::connect`]).
    pub(crate) fn new(pool: Pool, rt: R) -> Self {
        let config = pool.config();
        let first_dials = (0..config.pool_size()).collect();
        let proxy_refusals = vec![None; usize::from(config.pool_size())];
        let url = Arc::from(config.url_redacted());
        Self {
            pool,
            rt,
            waiters: HashMap::default(),
            completed: Vec::new(),
            dialing: BTreeMap::new(),
            open: BTreeMap::new(),
            closing: BTreeMap::new(),
            first_dials,
            armed: None,
            settled_seen: false,
            stopped: false,
            skips: SkipLimiter::new(SKIP_WARN_WINDOW),
            drops: DropLimiter::new(DROP_WARN_WINDOW),
            logs: Vec::new(),
            settle_waiters: HashMap::new(),
            log_undelivered: None,
            gone: false,
            proxy_refusals,
            url,
            #[cfg(feature = "spool")]
            spool: None,
            spool_opened: false,
        }
    }

    /// Opens the spool of `options` and hands what an earlier process left to the pool,
    /// which sends it first. Before the first send and before `connect`.
    #[cfg(feature = "spool")]
    pub(crate) fn open_spool(
        &mut self,
        options: &crate::spool::SpoolOptions,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.spool = Some(crate::spooling::SpoolLink::open(options, &mut self.pool, now)?);
        self.spool_opened = true;
        self.drain(now);
        Ok(())
    }

    /// The spool, if open.
    #[cfg(feature = "spool")]
    pub(crate) fn spool(&self) -> Option<&crate::spooling::SpoolLink> {
        self.spool.as_ref()
    }

    /// What a send accepted now does with its spool record before it returns (see
    /// [`crate::spooling::SendMark`]); nothing without a spool (always nothing without the
    /// `spool` feature).
    pub(crate) fn durable_send_mark(&self) -> Option<DurableSend> {
        #[cfg(feature = "spool")]
        return self.spool.as_ref().map(|s| s.send_mark());
        #[cfg(not(feature = "spool"))]
        None
    }

    /// Lets go of the spool (the client stopped): the last handle to it closes it.
    #[cfg(feature = "spool")]
    pub(crate) fn take_spool(&mut self) -> Option<crate::spooling::SpoolLink> {
        self.spool.take()
    }

    /// The pool, for its getters.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The runtime.
    #[cfg(test)]
    pub(crate) fn runtime(&self) -> &R {
        &self.rt
    }

    /// Whether a connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.pool.is_connected()
    }

    /// The pool's counters.
    pub(crate) fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// The pool's availability.
    pub(crate) fn availability(&self) -> Availability {
        self.pool.availability()
    }

    /// Arms every slot.
    pub(crate) fn connect(&mut self, now: Instant) {
        self.pool.connect(now);
        self.drain(now);
    }

    /// Starts a request; `waiter` receives its outcome exactly once (unless the request is
    /// cancelled through [`Driver::cancel`], which drops the waiter).
    pub(crate) fn request(
        &mut self,
        now: Instant,
        request: impl Into<EncodedRequest>,
        options: RequestOptions,
        waiter: R::Waiter,
    ) -> Result<RequestId, ClientError> {
        let result = self.pool.request(now, request, options);
        if let Ok(id) = &result {
            // Before the drain: the outcome may come out of it.
            self.waiters.insert(*id, waiter);
        }
        self.drain(now);
        result.map_err(|e| self.refusal(e))
    }

    /// The error for a request the pool refused: why nothing is open, when that is known to
    /// the driver (its task is gone, the proxy refuses every slot).
    fn refusal(&self, e: RequestError) -> ClientError {
        match e {
            _ if self.gone => ClientError::DriverGone,
            RequestError::NotConnected => match self.proxy_refusal() {
                Some(status) => ClientError::ProxyRefused { status },
                None => ClientError::NotConnected,
            },
            e => ClientError::from(e),
        }
    }

    /// `Some(HTTP status)` while no connection is open because the HTTP proxy refused (4xx)
    /// the most recent dial of every slot: a configuration error, not an outage. A proxy's
    /// 5xx is an outage and never counts.
    pub(crate) fn proxy_refusal(&self) -> Option<u16> {
        if self.pool.is_connected() {
            return None;
        }
        let mut latest = None;
        for refusal in &self.proxy_refusals {
            latest = Some((*refusal)?);
        }
        latest
    }

    /// Whether the driver task ended without the client closing: the client can do no more.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone
    }

    /// Sends a fire-and-forget message already encoded (outside the lock).
    pub(crate) fn send(
        &mut self,
        now: Instant,
        message: EncodedSend<'_>,
        options: SendOptions,
    ) -> Result<MessageId, SendRefusal> {
        let result = self.pool.send_with(now, message, options);
        self.drain(now);
        result
    }

    /// Sends a message whose end `waiter` receives (confirmed, or how else it ended).
    pub(crate) fn send_tracked(
        &mut self,
        now: Instant,
        message: EncodedSend<'_>,
        options: SendOptions,
        waiter: oneshot::Sender<MessageFate>,
    ) -> Result<MessageId, SendRefusal> {
        let result = self.pool.send_with(now, message, options.with_notify(true));
        if let Ok(id) = result {
            // Before the drain: its end may come out of it (never at once, but cheap to be sure).
            self.settle_waiters.insert(id.0, waiter);
        }
        self.drain(now);
        result
    }

    /// Asks for barriers on every connection now; returns the last message id sent so far.
    pub(crate) fn flush(&mut self, now: Instant) -> MessageId {
        let mark = self.pool.flush(now);
        self.drain(now);
        mark
    }

    /// The messages a close could not deliver (once, after the drain).
    pub(crate) fn take_undelivered(&mut self) -> Vec<Undelivered> {
        self.pool.take_undelivered()
    }

    /// Nobody will take the close drain's leftovers (`ending` says why): they are named in an
    /// ERROR line when the driver stops, or now if it already stopped.
    pub(crate) fn log_undelivered_at_stop(&mut self, ending: Ending) {
        if self.stopped {
            self.abandon_undelivered(ending);
        } else {
            self.log_undelivered.get_or_insert(ending);
        }
    }

    /// Hands what the close drain could not deliver to [`abandon`] (and its line to the logs).
    fn abandon_undelivered(&mut self, ending: Ending) {
        let ending = if self.gone { Ending::DriverGone } else { ending };
        let left = Leftovers::handed_back(&self.pool.take_undelivered());
        self.logs
            .extend(abandon(left, ending, &self.url, self.spool_opened).map(LogLine::Abandoned));
    }

    /// The log lines decided since the last call, to write once the lock is released.
    pub(crate) fn take_logs(&mut self) -> Logs {
        if self.logs.is_empty() {
            return Logs::default();
        }
        Logs {
            client: Some(Arc::clone(&self.url)),
            lines: std::mem::take(&mut self.logs),
        }
    }

    /// The driver task ended without the client closing (its runtime stopped, dropped it before
    /// it ran, or it panicked: a Tokio runtime without timers). Nothing will carry out the
    /// pool's outputs or fire its deadlines any more, so the close happens now: the pool closes,
    /// every connection is let go, and the pool's remaining deadlines (drain, linger) are
    /// passed at once, so every message ends (handed back or unconfirmed) and every request
    /// completes. New work is refused ([`ClientError::DriverGone`]).
    pub(crate) fn abandon(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.gone = true;
        self.pool.close(now);
        self.drain(now);
        let mut at = now;
        // Each round ends a phase (the drain, then the lingering closes): a few suffice.
        for _ in 0..16 {
            for conn in self.closing.keys().copied().collect::<Vec<_>>() {
                self.finish_closing(conn);
                let reason = CloseReason::Error("the driver task is gone".into());
                self.pool.handle_input(at, Input::Closed { conn, reason });
            }
            self.drain(at);
            if self.check_stopped(at) {
                return;
            }
            let Some(next) = self.pool.poll_timeout() else {
                break;
            };
            at = at.max(next);
            self.pool.handle_timeout(at);
            self.drain(at);
        }
        // Not reached while the pool keeps its contract; never leave a waiter hanging anyway.
        for (_, link) in std::mem::take(&mut self.open)
            .into_iter()
            .chain(std::mem::take(&mut self.closing))
        {
            self.abort_link(link);
        }
        self.check_stopped(at);
    }

    /// What the client's state still holds as it goes away (see [`crate::leftovers`]): the
    /// lines naming every message not delivered and not handed to anybody, plus the lines not
    /// yet written.
    pub(crate) fn last_words(&mut self, now: Instant) -> Logs {
        let mut left = Leftovers::live(&self.pool.stats());
        left.merge(Leftovers::handed_back(&self.pool.take_undelivered()));
        if let Some(summary) = self.drops.flush(now) {
            self.logs.push(LogLine::DropSummary(summary));
        }
        let ending = if self.gone {
            Ending::DriverGone
        } else {
            Ending::StateDropped
        };
        self.logs
            .extend(abandon(left, ending, &self.url, self.spool_opened).map(LogLine::Abandoned));
        self.take_logs()
    }

    /// Cancels a request whose caller went away; its waiter is dropped. Returns whether it
    /// was still pending.
    pub(crate) fn cancel(&mut self, now: Instant, id: RequestId) -> bool {
        self.waiters.remove(&id);
        let pending = self.pool.cancel(now, id);
        self.drain(now);
        pending
    }

    /// Closes the pool (idempotent). The driver stops once every request ended and every
    /// connection finished closing; see [`Driver::is_stopped`].
    pub(crate) fn close(&mut self, now: Instant) {
        self.pool.close(now);
        self.drain(now);
    }

    /// Feeds one report of a connection's task or writer. Reports about a connection the
    /// pool already let go (after its `Disconnect`) are dropped here, so the pool hears
    /// nothing more about it.
    pub(crate) fn handle_report(&mut self, now: Instant, report: Report<R::Writer>) {
        match report {
            Report::Connected { conn, writer } => match self.dialing.remove(&conn) {
                Some(task) => {
                    self.first_dials.remove(&conn.slot);
                    self.note_dial(conn, None);
                    self.open.insert(conn, Link { task, writer });
                    self.pool.handle_input(now, Input::Connected { conn });
                }
                None => {
                    trace!(%conn, "usageflow-socket: late dial result for an abandoned connection");
                    self.rt.abort_writer(writer);
                }
            },
            Report::Frame { conn, frame } => {
                if self.open.contains_key(&conn) {
                    self.pool.handle_frame(now, conn, frame);
                }
            }
            Report::Io(input) => {
                let conn = input.conn();
                let deliver = match input {
                    Input::ConnectFailed { ref error, .. } => {
                        let dialing = self.dialing.remove(&conn).is_some();
                        if dialing {
                            self.first_dials.remove(&conn.slot);
                            let refusal = match error {
                                DialError::Proxy { status } if (400..500).contains(status) => Some(*status),
                                _ => None,
                            };
                            self.note_dial(conn, refusal);
                        }
                        dialing
                    }
                    // For a connection closing gracefully, its end (the peer answered our
                    // close frame, or the socket ended) ends the pool's linger.
                    Input::WriteFailed { .. } | Input::Closed { .. } => {
                        self.open.contains_key(&conn) || self.finish_closing(conn)
                    }
                    _ => self.open.contains_key(&conn),
                };
                if deliver {
                    self.pool.handle_input(now, input);
                }
            }
            Report::Pong { conn, payload } => {
                if self.open.contains_key(&conn) {
                    self.pool.handle_input(
                        now,
                        Input::Pong {
                            conn,
                            payload: &payload,
                        },
                    );
                }
            }
            Report::CloseWritten { conn } => {
                trace!(%conn, "usageflow-socket: close frame written");
            }
        }
        self.drain(now);
    }

    /// Records how the latest dial of `conn`'s slot ended: refused by the proxy (its 4xx), or
    /// not (`None`).
    fn note_dial(&mut self, conn: ConnId, proxy_refusal: Option<u16>) {
        if let Some(slot) = self.proxy_refusals.get_mut(usize::from(conn.slot)) {
            *slot = proxy_refusal;
        }
    }

    /// Handles the passing of [`Driver::poll_timeout`] (spurious calls do nothing), and logs
    /// the summaries of the frames skipped and the messages dropped since the last warning
    /// once their window has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.pool.poll_timeout().is_some_and(|t| t <= now) {
            self.pool.handle_timeout(now);
        }
        self.drain(now);
        if let Some(summary) = self.skips.poll(now) {
            self.logs.push(LogLine::SkipSummary(summary));
        }
        if let Some(summary) = self.drops.poll(now) {
            self.logs.push(LogLine::DropSummary(summary));
        }
    }

    /// The next deadline (the pool's, or a drop summary's); `None` once stopped.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        match (self.pool.poll_timeout(), self.drops.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records and returns the deadline the driver task is about to sleep until.
    pub(crate) fn arm(&mut self) -> Option<Instant> {
        self.settled_seen = self.first_dials_settled();
        self.armed = self.poll_timeout();
        self.armed
    }

    /// Whether the driver task must be woken after an application command: the next deadline
    /// moved before the one it sleeps until, the last first dial settled (so `connect` is
    /// told at once), or the pool is closing and the task must notice when it is done.
    pub(crate) fn needs_wake(&self) -> bool {
        if self.stopped {
            return false;
        }
        if self.pool.is_closing() {
            return true;
        }
        if !self.settled_seen && self.first_dials_settled() {
            // The last first dial just settled: the task must publish it now, so `connect`
            // returns at once rather than at the next deadline (a backoff, a handshake timeout).
            return true;
        }
        match (self.poll_timeout(), self.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether every slot's first dial has settled (connected or failed).
    pub(crate) fn first_dials_settled(&self) -> bool {
        self.first_dials.is_empty() || self.stopped
    }

    /// Stops the driver if the pool is closed and nothing is left to do: every request
    /// ended and every connection finished closing. Returns whether it is stopped; the
    /// driver task ends then.
    pub(crate) fn check_stopped(&mut self, now: Instant) -> bool {
        if self.stopped {
            return true;
        }
        if !self.pool.is_closed() || self.pool.pending_len() > 0 {
            return false;
        }
        if !self.open.is_empty() || !self.closing.is_empty() {
            return false;
        }
        for (_, task) in std::mem::take(&mut self.dialing) {
            self.rt.abort(task);
        }
        // Every request completed (pending is zero); any waiter left is dropped here.
        self.waiters.clear();
        self.settle_waiters.clear();
        if let Some(summary) = self.drops.flush(now) {
            self.logs.push(LogLine::DropSummary(summary));
        }
        if let Some(ending) = self.log_undelivered {
            self.abandon_undelivered(ending);
        }
        self.first_dials.clear();
        self.stopped = true;
        debug!("usageflow-socket: client closed, driver stopped");
        self.rt.publish(ClientEvent::Stopped);
        true
    }

    /// Whether the driver stopped (the client is closed and everything finished).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Moves the outcomes completed since the last call into `into` (which must be empty),
    /// handing the driver `into`'s allocation for the next ones. The lock holder hands them
    /// over after releasing the lock: that may wake the caller's
    /// task on another thread, which should not happen while every other task waits for the
    /// lock. A reader that passes the same buffer batch after batch completes its replies
    /// without allocating, and without the buffer growing (and moving every outcome) each
    /// time, as a fresh one would.
    pub(crate) fn swap_completed(&mut self, into: &mut Vec<(R::Waiter, Outcome)>) {
        debug_assert!(into.is_empty());
        if !self.completed.is_empty() {
            std::mem::swap(&mut self.completed, into);
        }
    }

    /// Drains every output and carries it out.
    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.pool.poll_output() {
            match output {
                Output::Dial { conn } => {
                    debug!(%conn, url = ?self.pool.config().url_redacted(), "usageflow-socket: dialing");
                    let task = self.rt.dial(conn);
                    if let Some(old) = self.dialing.insert(conn, task) {
                        self.rt.abort(old);
                    }
                }
                Output::Transmit { conn, frame } => {
                    // Replies still to come on this connection mean more requests are likely
                    // to follow at once: let the writer gather them (see `run_writer`).
                    let coalesce = self.pool.in_flight(conn) > 1;
                    self.write(conn, WriteCommand::Text { frame, coalesce })
                }
                Output::Ping { conn, payload } => self.write(conn, WriteCommand::Ping(payload)),
                Output::Settled { id, fate } => {
                    if let Some(waiter) = self.settle_waiters.remove(&id.0) {
                        let _ = waiter.send(fate);
                    }
                }
                Output::Disconnect { conn, graceful } => self.disconnect(now, conn, graceful),
                Output::Completed { id, outcome } => {
                    if let Some(waiter) = self.waiters.remove(&id) {
                        self.completed.push((waiter, outcome));
                    }
                }
                Output::Unsolicited { conn, frame } => {
                    debug!(%conn, kind = %frame.kind, "usageflow-socket: unsolicited frame");
                    self.rt.publish(ClientEvent::Unsolicited { conn, frame });
                }
                Output::Event(event) => {
                    match &event {
                        Event::FrameSkipped { conn, error } => self.log_skipped(now, *conn, error),
                        Event::MessageDropped { kind, reason, count } => {
                            self.log_dropped(now, kind, *reason, *count)
                        }
                        _ => self.logs.push(LogLine::Event(event.clone())),
                    }
                    self.rt.publish(ClientEvent::Pool(event));
                }
                #[cfg(feature = "spool")]
                Output::Keep { record, first_sent } => {
                    if let Some(spool) = &mut self.spool {
                        self.logs.extend(spool.keep(record, first_sent, now));
                    }
                }
                #[cfg(feature = "spool")]
                Output::Release { id, .. } => {
                    if let Some(spool) = &mut self.spool {
                        spool.release(id);
                    }
                }
                other => debug!(?other, "usageflow-socket: ignoring an unknown output"),
            }
        }
    }

    /// Logs a skipped frame under the rate limit: the first of a flood at WARN, the rest at
    /// debug level and in one WARN summary per [`SKIP_WARN_WINDOW`].
    fn log_skipped(&mut self, now: Instant, conn: ConnId, error: &FrameError) {
        match self.skips.skipped(now, conn, error) {
            SkipLog::Warn => self.logs.push(LogLine::Skipped {
                conn,
                error: error.clone(),
            }),
            SkipLog::Quiet => debug!(%conn, %error, "usageflow-socket: skipped a frame"),
            SkipLog::Summary(summary) => self.logs.push(LogLine::SkipSummary(summary)),
        }
    }

    /// Logs dropped messages under the rate limit: the first of a flood at WARN, the rest at
    /// debug level and in one WARN summary (counts per type and reason) per
    /// [`DROP_WARN_WINDOW`], and whatever is counted when the driver stops.
    fn log_dropped(&mut self, now: Instant, kind: &str, reason: DropReason, count: u64) {
        match self.drops.dropped(now, kind, reason, count) {
            DropLog::Warn => self.logs.push(LogLine::Dropped {
                kind: kind.to_owned(),
                reason,
                count,
            }),
            DropLog::Quiet => debug!(kind, %reason, count, "usageflow-socket: message not delivered"),
            DropLog::Summary(summary) => self.logs.push(LogLine::DropSummary(summary)),
        }
    }

    fn write(&mut self, conn: ConnId, command: WriteCommand) {
        match self.open.get(&conn) {
            Some(link) => {
                if !self.rt.write(&link.writer, command) {
                    trace!(%conn, "usageflow-socket: writer gone; its failure report is on the way");
                }
            }
            None => debug!(%conn, "usageflow-socket: write for a connection that is not open"),
        }
    }

    fn disconnect(&mut self, now: Instant, conn: ConnId, graceful: bool) {
        if let Some(task) = self.dialing.remove(&conn) {
            self.first_dials.remove(&conn.slot);
            self.rt.abort(task);
            return;
        }
        // The pool's linger ended before the close handshake did: drop the socket.
        if self.finish_closing(conn) {
            return;
        }
        let Some(link) = self.open.remove(&conn) else {
            return;
        };
        if !graceful {
            // The writes the writer never started cannot have arrived: the pool writes their
            // messages again elsewhere.
            if let Some(first) = self.rt.stop_writes(&link.writer) {
                self.pool.handle_input(now, Input::Unwritten { conn, first });
            }
            self.abort_link(link);
        } else if self.rt.write(&link.writer, WriteCommand::Close) {
            self.closing.insert(conn, link);
        } else {
            // The writer is gone (its failure report will be dropped): the close is over.
            self.abort_link(link);
            let reason = CloseReason::Error("writer ended before the close frame".into());
            self.pool.handle_input(now, Input::Closed { conn, reason });
        }
    }

    /// Ends a graceful close; false when `conn` was not closing.
    fn finish_closing(&mut self, conn: ConnId) -> bool {
        match self.closing.remove(&conn) {
            Some(link) => {
                self.abort_link(link);
                true
            }
            None => false,
        }
    }

    fn abort_link(&mut self, link: Link<R>) {
        self.rt.abort(link.task);
        self.rt.abort_writer(link.writer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;
    use usageflow_socket_core::{frame, Config, Outgoing};

    /// A runtime that records what the driver asks of it.
    #[derive(Default)]
    struct Fake {
        dials: Vec<ConnId>,
        aborted_tasks: Vec<u32>,
        aborted_writers: Vec<u32>,
        writes: Vec<(u32, WriteCommand)>,
        events: Vec<ClientEvent>,
        next_task: u32,
    }

    impl Effects for Fake {
        type Waiter = u32;
        type Task = u32;
        type Writer = u32;
        fn dial(&mut self, conn: ConnId) -> u32 {
            self.dials.push(conn);
            self.next_task += 1;
            self.next_task
        }
        fn abort(&mut self, task: u32) {
            self.aborted_tasks.push(task);
        }
        fn write(&mut self, writer: &u32, command: WriteCommand) -> bool {
            self.writes.push((*writer, command));
            true
        }
        fn abort_writer(&mut self, writer: u32) {
            self.aborted_writers.push(writer);
        }
        fn stop_writes(&mut self, _writer: &u32) -> Option<u64> {
            None
        }
        fn publish(&mut self, event: ClientEvent) {
            self.events.push(event);
        }
    }

    fn driver(now: Instant) -> Driver<Fake> {
        let config = Config::builder("ws://localhost:9000/ws", "k")
            .pool_size(1)
            .backoff_jitter(0.0)
            .build()
            .unwrap();
        Driver::new(Pool::new(config, 1, now), Fake::default())
    }

    /// The outcomes completed since the last call.
    fn completed_now(d: &mut Driver<Fake>) -> Vec<(u32, Outcome)> {
        let mut completed = Vec::new();
        d.swap_completed(&mut completed);
        completed
    }

    fn sent_id(driver: &Driver<Fake>) -> String {
        let (_, WriteCommand::Text { frame, .. }) = driver.runtime().writes.last().unwrap() else {
            panic!("no text write");
        };
        let v: Value = serde_json::from_str(frame).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    #[test]
    fn request_round_trip_stale_reports_and_close() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        d.connect(t0);
        assert!(!d.first_dials_settled());
        let conn = d.runtime().dials[0];
        d.handle_report(t0, Report::Connected { conn, writer: 70 });
        assert!(d.first_dials_settled());
        assert!(d.is_connected());

        let id = d
            .request(
                t0,
                Outgoing::new("echo", Value::Null),
                RequestOptions::default(),
                5,
            )
            .unwrap();
        let wire = sent_id(&d);
        assert_eq!(wire, id.to_string());
        d.handle_report(t0, Report::Io(Input::Flushed { conn, writes: 1 }));
        // A report naming another generation is dropped before the pool.
        let stale = ConnId {
            slot: 0,
            generation: conn.generation + 9,
        };
        let reply = format!(r#"{{"type":"success","replyTo":"{wire}"}}"#);
        d.handle_report(
            t0,
            Report::Frame {
                conn: stale,
                frame: frame::decode(&reply, 1 << 20),
            },
        );
        assert!(completed_now(&mut d).is_empty());
        d.handle_report(
            t0,
            Report::Frame {
                conn,
                frame: frame::decode(&reply, 1 << 20),
            },
        );
        // A reader's own buffer takes the outcome; the driver keeps that buffer's allocation.
        let mut completed = Vec::with_capacity(8);
        d.swap_completed(&mut completed);
        assert!(matches!(completed[..], [(5, Outcome::Reply(_))]));
        assert!(d.completed.capacity() >= 8);
        completed.clear();
        d.swap_completed(&mut completed);
        assert!(completed.is_empty(), "nothing new completed");

        // A cancelled request drops its waiter: nothing is completed for it.
        let id = d
            .request(
                t0,
                Outgoing::new("echo", Value::Null),
                RequestOptions::default(),
                6,
            )
            .unwrap();
        assert!(d.cancel(t0, id));
        assert!(completed_now(&mut d).is_empty());
        d.handle_report(t0, Report::Io(Input::Flushed { conn, writes: 2 }));

        // Close: a close frame, then the peer's answer ends the connection.
        d.close(t0);
        assert!(d.needs_wake());
        assert_eq!(d.runtime().writes.last().unwrap(), &(70, WriteCommand::Close));
        assert!(!d.check_stopped(t0));
        d.handle_report(t0, Report::CloseWritten { conn });
        d.handle_report(
            t0,
            Report::Io(Input::Closed {
                conn,
                reason: CloseReason::Frame {
                    code: 1000,
                    reason: String::new(),
                },
            }),
        );
        assert_eq!(d.runtime().aborted_writers, vec![70]);
        assert!(d.check_stopped(t0));
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.runtime().events.last(), Some(&ClientEvent::Stopped));
    }

    #[test]
    fn skipped_frames_warn_under_the_rate_limit_and_are_all_published() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        d.connect(t0);
        let conn = d.runtime().dials[0];
        d.handle_report(t0, Report::Connected { conn, writer: 70 });
        let garbage = |d: &mut Driver<Fake>, at: Instant| {
            d.handle_report(
                at,
                Report::Frame {
                    conn,
                    frame: frame::decode("not JSON {", 1 << 20),
                },
            );
            d.handle_report(at, Report::Io(Input::Binary { conn, len: 4 }));
        };
        for i in 0..50 {
            garbage(&mut d, t0 + Duration::from_millis(i * 10));
        }
        let skipped = |d: &Driver<Fake>| {
            let events = &d.runtime().events;
            events
                .iter()
                .filter(|e| matches!(e, ClientEvent::Pool(Event::FrameSkipped { .. })))
                .count()
        };
        // Every skipped frame is still an event; only the first was a WARN, the rest wait
        // for the summary.
        assert_eq!(skipped(&d), 100);
        assert_eq!(d.stats().skipped_frames, 100);
        let summary = d.skips.clone().poll(t0 + SKIP_WARN_WINDOW).unwrap();
        assert_eq!(summary.count, 99);
        assert!(matches!(summary.error, FrameError::Binary { len: 4 }));
        // The driver's timeout turn after the window logs that summary and opens a new window,
        // which passes without a skipped frame.
        d.handle_timeout(t0 + SKIP_WARN_WINDOW);
        assert_eq!(d.skips.poll(t0 + SKIP_WARN_WINDOW * 2), None, "summarized once");
    }

    #[test]
    fn the_last_first_dial_wakes_the_task_once() {
        let t0 = Instant::now();
        // Handshake deadline 1 s, backoff 5 s: the failure moves no deadline earlier.
        let config = Config::builder("ws://localhost:9000/ws", "k")
            .pool_size(1)
            .handshake_timeout(Duration::from_secs(1))
            .backoff_base(Duration::from_secs(5))
            .backoff_jitter(0.0)
            .build()
            .unwrap();
        let mut d = Driver::new(Pool::new(config, 1, t0), Fake::default());
        d.connect(t0);
        assert_eq!(d.arm(), Some(t0 + Duration::from_secs(1)));
        assert!(!d.needs_wake());
        let conn = d.runtime().dials[0];
        let error = DialError::Rejected { status: 401 };
        d.handle_report(t0, Report::Io(Input::ConnectFailed { conn, error }));
        assert!(d.first_dials_settled());
        assert!(
            d.needs_wake(),
            "`connect` must hear now, not at the next deadline"
        );
        d.arm();
        assert!(!d.needs_wake(), "once published, no more wake-ups for it");
    }

    #[test]
    fn late_dial_result_is_dropped_and_closing_is_bounded() {
        let t0 = Instant::now();
        let mut d = driver(t0);
        d.connect(t0);
        let conn = d.runtime().dials[0];
        // Handshake deadline passes: the pool aborts the dial and schedules a reconnect.
        let deadline = d.poll_timeout().unwrap();
        d.handle_timeout(deadline);
        assert_eq!(d.runtime().aborted_tasks, vec![1]);
        assert!(d.first_dials_settled());
        // The dial finishes late: its writer is aborted, the pool hears nothing.
        d.handle_report(deadline, Report::Connected { conn, writer: 9 });
        assert_eq!(d.runtime().aborted_writers, vec![9]);
        assert!(!d.is_connected());

        // Next dial succeeds; close; the peer never answers the close frame.
        let next = d.poll_timeout().unwrap();
        d.handle_timeout(next);
        let conn = *d.runtime().dials.last().unwrap();
        d.handle_report(next, Report::Connected { conn, writer: 10 });
        assert!(d.is_connected());
        d.close(next);
        assert!(!d.check_stopped(t0));
        let linger = d.poll_timeout().unwrap();
        d.handle_timeout(linger);
        assert!(d.runtime().aborted_writers.contains(&10));
        assert!(d.check_stopped(t0));
    }
}
