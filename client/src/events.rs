//! The client's event stream: an `async-broadcast` channel
//! bounded in events ([`EVENT_CAPACITY`]) and in the bytes of the unsolicited frames it holds
//! ([`ClientOptions::max_unsolicited_bytes`]).
//!
//! The channel holds an event until every subscriber has received it. A subscriber that stops
//! reading would therefore make the client hold up to [`EVENT_CAPACITY`] unsolicited frames of
//! up to `max_frame_size` each (about 1 GiB with the defaults). The [`EventPublisher`] counts
//! the bytes of the unsolicited frames still in the channel and, before a frame would take
//! them over the budget, drops the oldest events for every subscriber, as the channel does
//! when it holds [`EVENT_CAPACITY`] events. Either way a subscriber that missed events is told
//! how many on its next receive ([`RecvError::Lagged`](crate::RecvError::Lagged)), then
//! receives the oldest event still held.
//!
//! The accounting adds nothing notable to a publish: an event with no subscriber goes
//! nowhere, and the channel's length is read only when the bytes counted since the last
//! reading could exceed the budget.
//!
//! [`ClientOptions::max_unsolicited_bytes`]: crate::ClientOptions::max_unsolicited_bytes

use std::collections::VecDeque;
use std::fmt;

use async_broadcast::{InactiveReceiver, Receiver, Sender};

use crate::ClientEvent;

/// Most events the event stream holds for a subscriber; a subscriber that falls further
/// behind loses the oldest events (and is told how many). The unsolicited frames among them
/// are also bounded in bytes ([`ClientOptions::max_unsolicited_bytes`]).
///
/// [`ClientOptions::max_unsolicited_bytes`]: crate::ClientOptions::max_unsolicited_bytes
pub const EVENT_CAPACITY: usize = 1024;

/// The default of [`ClientOptions::max_unsolicited_bytes`]: 4 MiB.
///
/// [`ClientOptions::max_unsolicited_bytes`]: crate::ClientOptions::max_unsolicited_bytes
pub const DEFAULT_MAX_UNSOLICITED_BYTES: usize = 4 << 20;

/// The sending end of the event channel, owned by the driver's runtime. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct EventPublisher {
    sender: Sender<ClientEvent>,
    /// Most bytes of unsolicited frames the channel may hold (plus the one being published).
    budget: usize,
    /// Events the channel accepted so far: the position of the next one. The channel holds the
    /// last `sender.len()` of them (it only ever drops its oldest).
    accepted: u64,
    /// The unsolicited frames that may still be in the channel, oldest first: (position, bytes).
    frames: VecDeque<(u64, usize)>,
    /// The sum of `frames`' bytes.
    held: usize,
}

impl EventPublisher {
    /// A channel whose unsolicited frames hold at most `budget` bytes (plus one frame): the
    /// publisher (for the driver's runtime) and the subscriber (for `Client::subscribe`).
    pub(crate) fn with_budget(budget: usize) -> (Self, EventSubscriber) {
        let (mut sender, receiver) = async_broadcast::broadcast(EVENT_CAPACITY);
        // A subscriber that falls behind loses the oldest events (and is told how many).
        sender.set_overflow(true);
        let publisher = Self {
            sender,
            budget,
            accepted: 0,
            frames: VecDeque::new(),
            held: 0,
        };
        // Keeps the channel open while nobody subscribes; events then go nowhere.
        let subscriber = EventSubscriber {
            inactive: receiver.deactivate(),
        };
        (publisher, subscriber)
    }

    /// Broadcasts `event` to the current subscribers (none is fine). An unsolicited frame that
    /// would take the channel over its byte budget first drops the oldest events.
    pub(crate) fn publish(&mut self, event: ClientEvent) {
        let bytes = match &event {
            ClientEvent::Unsolicited { frame, .. } => frame.text_len().max(1),
            _ => 0,
        };
        if bytes > 0 {
            self.make_room(bytes);
        }
        // `Inactive`: nobody subscribes. `Closed` cannot happen while this sender lives.
        if self.sender.try_broadcast(event).is_ok() {
            if bytes > 0 {
                self.frames.push_back((self.accepted, bytes));
                self.held += bytes;
            }
            self.accepted += 1;
        }
    }

    /// The bytes of the unsolicited frames the channel holds now (not yet received by every
    /// subscriber).
    #[cfg(test)]
    pub(crate) fn held_bytes(&mut self) -> usize {
        self.forget_received();
        self.held
    }

    /// Forgets the frames every subscriber received (or lost).
    fn forget_received(&mut self) {
        let oldest = self.accepted - self.sender.len() as u64;
        while let Some(&(position, bytes)) = self.frames.front() {
            if position >= oldest {
                break;
            }
            self.frames.pop_front();
            self.held -= bytes;
        }
    }

    /// Drops the oldest events until a frame of `bytes` fits in the budget (or nothing is left).
    fn make_room(&mut self, bytes: usize) {
        // `held` only overstates what the channel holds (subscribers may have received some
        // since): when even that fits, there is no need to look at the channel. The second
        // bound keeps `frames` to about as many entries as the channel holds events.
        if self.held + bytes <= self.budget && self.frames.len() < EVENT_CAPACITY {
            return;
        }
        self.forget_received();
        let mut through = None;
        while self.held + bytes > self.budget {
            let Some((position, dropped)) = self.frames.pop_front() else {
                break;
            };
            self.held -= dropped;
            through = Some(position);
        }
        let Some(position) = through else {
            return;
        };
        // A sender cannot pop, but shrinking the capacity drops the oldest events for every
        // subscriber: keep those after `position`, then restore the capacity. Only this
        // publisher adds events, and receivers only remove the oldest, so the newest `keep`
        // are the ones to keep even if a subscriber receives meanwhile.
        let keep = usize::try_from(self.accepted - position - 1).unwrap_or(EVENT_CAPACITY);
        self.sender.set_capacity(keep);
        self.sender.set_capacity(EVENT_CAPACITY);
    }
}

/// What subscribes to the event channel; keeps it open while nobody does.
#[derive(Clone)]
pub(crate) struct EventSubscriber {
    inactive: InactiveReceiver<ClientEvent>,
}

impl EventSubscriber {
    /// A new subscription: it receives the events published from now on.
    pub(crate) fn subscribe(&self) -> Receiver<ClientEvent> {
        self.inactive.activate_cloned()
    }
}

impl fmt::Debug for EventSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSubscriber").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_broadcast::TryRecvError;
    use usageflow_socket_core::{frame, ConnId, Event};

    const CONN: ConnId = ConnId {
        slot: 0,
        generation: 1,
    };

    /// An unsolicited frame of exactly `size` bytes (`Incoming::text_len`), numbered `n`.
    fn unsolicited(n: usize, size: usize) -> ClientEvent {
        let padding = "x".repeat(size - "push".len() - 8 - 2);
        let text = format!(r#"{{"type":"push","payload":"{padding}","id":"{n:08}"}}"#);
        let frame = frame::decode(&text, 1 << 20).unwrap();
        assert_eq!(frame.text_len(), size);
        ClientEvent::Unsolicited { conn: CONN, frame }
    }

    fn number(event: &ClientEvent) -> usize {
        match event {
            ClientEvent::Unsolicited { frame, .. } => frame.id.as_deref().unwrap().parse().unwrap(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    /// Every event still held for `rx`, and how many it was told it lost.
    fn drain(rx: &mut Receiver<ClientEvent>) -> (Vec<ClientEvent>, u64) {
        let (mut events, mut lost) = (Vec::new(), 0);
        loop {
            match rx.try_recv() {
                Ok(event) => events.push(event),
                Err(TryRecvError::Overflowed(n)) => lost += n,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return (events, lost),
            }
        }
    }

    #[test]
    fn nobody_subscribed_holds_nothing() {
        let (mut publisher, _subscriber) = EventPublisher::with_budget(1000);
        for n in 0..50 {
            publisher.publish(unsolicited(n, 400));
        }
        assert_eq!(publisher.held_bytes(), 0);
        assert!(publisher.frames.is_empty());
    }

    #[test]
    fn a_subscriber_that_keeps_up_loses_nothing() {
        let (mut publisher, subscriber) = EventPublisher::with_budget(1000);
        let mut rx = subscriber.subscribe();
        for n in 0..100 {
            publisher.publish(unsolicited(n, 400));
            publisher.publish(ClientEvent::Pool(Event::Connected { conn: CONN }));
            let (events, lost) = drain(&mut rx);
            assert_eq!((events.len(), lost), (2, 0));
            assert_eq!(number(&events[0]), n);
        }
        assert_eq!(publisher.held_bytes(), 0);
    }

    #[test]
    fn many_small_frames_to_a_subscriber_that_keeps_up_keep_the_accounting_small() {
        let (mut publisher, subscriber) = EventPublisher::with_budget(DEFAULT_MAX_UNSOLICITED_BYTES);
        let mut rx = subscriber.subscribe();
        for n in 0..5 * EVENT_CAPACITY {
            publisher.publish(unsolicited(n, 20));
            assert!(publisher.frames.len() <= EVENT_CAPACITY);
            let (events, lost) = drain(&mut rx);
            assert_eq!((events.len(), lost), (1, 0));
        }
        assert_eq!(publisher.held_bytes(), 0);
    }

    #[test]
    fn a_stalled_subscriber_holds_at_most_the_budget_and_loses_the_oldest() {
        let (mut publisher, subscriber) = EventPublisher::with_budget(1000);
        let mut stalled = subscriber.subscribe();
        let mut reader = subscriber.subscribe();
        for n in 0..100 {
            publisher.publish(unsolicited(n, 300));
            // A pool event between frames goes with them when they are dropped.
            publisher.publish(ClientEvent::Pool(Event::Connected { conn: CONN }));
            assert!(publisher.held_bytes() <= 1000, "{}", publisher.held_bytes());
            // The other subscriber keeps up and loses nothing.
            let (events, lost) = drain(&mut reader);
            assert_eq!((events.len(), lost), (2, 0));
        }
        assert_eq!(publisher.held_bytes(), 900);
        let (events, lost) = drain(&mut stalled);
        let frames: Vec<usize> = events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Unsolicited { .. }))
            .map(number)
            .collect();
        assert_eq!(frames, [97, 98, 99], "the newest frames are kept");
        assert_eq!(
            lost + events.len() as u64,
            200,
            "every event is received or counted"
        );
        assert_eq!(publisher.held_bytes(), 0);
    }

    #[test]
    fn a_frame_over_the_budget_is_held_alone() {
        let (mut publisher, subscriber) = EventPublisher::with_budget(100);
        let mut rx = subscriber.subscribe();
        for n in 0..5 {
            publisher.publish(unsolicited(n, 150));
            assert_eq!(publisher.held_bytes(), 150);
        }
        let (events, lost) = drain(&mut rx);
        assert_eq!((events.len(), lost), (1, 4));
        assert_eq!(number(&events[0]), 4);
    }

    #[test]
    fn the_count_bound_still_applies() {
        let (mut publisher, subscriber) = EventPublisher::with_budget(usize::MAX);
        let mut rx = subscriber.subscribe();
        for n in 0..EVENT_CAPACITY + 10 {
            publisher.publish(unsolicited(n, 20));
        }
        assert_eq!(publisher.held_bytes(), EVENT_CAPACITY * 20);
        let (events, lost) = drain(&mut rx);
        assert_eq!((events.len(), lost), (EVENT_CAPACITY, 10));
        assert_eq!(number(&events[0]), 10);
        assert_eq!(publisher.held_bytes(), 0);
    }
}
