//! The smol adapter under test.

use std::future::Future;
use std::time::Duration;

use async_broadcast::RecvError;
use usageflow_socket_smol::{Client, Subscription};

use crate::{Adapter, Availability, ClientError, ClientEvent, ClientOptions, Stats};

/// `usageflow-socket-smol`: the test body runs under `smol::block_on`, the client's tasks on
/// smol's global executor.
pub struct SmolAdapter;

impl Adapter for SmolAdapter {
    const NAME: &'static str = "smol";
    type Client = Client;
    type Subscription = Subscription;

    fn block_on<F: Future>(f: F) -> F::Output {
        smol::block_on(f)
    }

    async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        Client::connect(options).await
    }

    fn start(options: ClientOptions) -> Result<Client, ClientError> {
        Client::start(options)
    }

    async fn sleep(d: Duration) {
        smol::Timer::after(d).await;
    }

    fn stats(client: &Client) -> Stats {
        client.stats()
    }

    fn is_connected(client: &Client) -> bool {
        client.is_connected()
    }

    fn availability(client: &Client) -> Availability {
        client.availability()
    }

    async fn close(client: &Client) {
        client.close().await;
    }

    fn subscribe(client: &Client) -> Subscription {
        client.subscribe()
    }

    async fn recv_event(sub: &mut Subscription) -> Option<Result<ClientEvent, u64>> {
        match sub.recv().await {
            Ok(event) => Some(Ok(event)),
            Err(RecvError::Overflowed(n)) => Some(Err(n)),
            Err(RecvError::Closed) => None,
        }
    }

    fn user_agent() -> String {
        usageflow_socket_smol::default_user_agent()
    }
}
