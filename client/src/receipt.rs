//! [`Receipt`]: what a caller awaits for one fire-and-forget message's end, as a producer's
//! delivery future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;
use usageflow_socket_core::{MessageFate, MessageId};

use crate::ClientError;

/// The end of one message sent with [`Client::send_with_receipt`](crate::Client::send_with_receipt):
/// a future that completes once the message reached a final state.
///
/// It resolves to the message's id once it was delivered (confirmed by a pong for a ping
/// written after it; with confirmation off, written), to [`ClientError::NotDelivered`] with
/// its [`MessageFate`] when it ended otherwise (unconfirmed, expired, handed back by close),
/// and to [`ClientError::Closed`] only if the client stopped without ending it (never
/// expected: a close ends every message).
///
/// Bounded: the client keeps one small channel per live message (the messages themselves
/// are bounded by the outbox and the unconfirmed windows), freed when the message ends.
/// Dropping the receipt does not affect the message; await it with a timeout of your own to
/// bound the wait (a message may wait in the outbox up to its TTL during an outage).
#[derive(Debug)]
#[must_use = "a receipt does nothing unless awaited; use `send_with` when the end does not matter"]
pub struct Receipt {
    id: MessageId,
    fate: oneshot::Receiver<MessageFate>,
}

impl Receipt {
    pub(crate) fn new(id: MessageId, fate: oneshot::Receiver<MessageFate>) -> Self {
        Self { id, fate }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }
}

impl Future for Receipt {
    type Output = Result<MessageId, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        Pin::new(&mut self.fate).poll(cx).map(|fate| match fate {
            Ok(fate) if fate.is_delivered() => Ok(id),
            Ok(fate) => Err(ClientError::NotDelivered(fate)),
            // The driver dropped the waiter: it stopped before the message ended.
            Err(_) => Err(ClientError::Closed),
        })
    }
}
