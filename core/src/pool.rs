//! The pool state machine.
use std::time::Instant;

use crate::config::Config;
use crate::frame::Outgoing;
use crate::io::*;
use crate::stats::Stats;

/// The pool.
pub struct Pool {
    config: Config,
}

#[allow(unused_variables, missing_docs)]
impl Pool {
    pub fn new(config: Config, seed: u64, now: Instant) -> Pool { todo!() }
    pub fn config(&self) -> &Config { &self.config }
    pub fn is_connected(&self) -> bool { todo!() }
    pub fn stats(&self) -> Stats { todo!() }
    pub fn availability(&self) -> Availability { todo!() }
    pub fn slot_state(&self, slot: u16) -> Option<SlotState> { todo!() }
    pub fn pending_len(&self) -> usize { todo!() }
    pub fn is_closed(&self) -> bool { todo!() }
    pub fn connect(&mut self, now: Instant) { todo!() }
    pub fn request(&mut self, now: Instant, message: Outgoing, options: RequestOptions) -> Result<RequestId, RequestError> { todo!() }
    pub fn send(&mut self, now: Instant, message: Outgoing) -> Result<(), SendError> { todo!() }
    pub fn cancel(&mut self, now: Instant, id: RequestId) -> bool { todo!() }
    pub fn close(&mut self, now: Instant) { todo!() }
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) { todo!() }
    pub fn handle_timeout(&mut self, now: Instant) { todo!() }
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> { todo!() }
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> { todo!() }
}
