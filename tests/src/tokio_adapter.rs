//! The Tokio adapter under test.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use usageflow_socket_tokio::{Client, Subscription};

use crate::{Adapter, Availability, ClientError, ClientEvent, ClientOptions, Stats};

/// `usageflow-socket-tokio` on a two-worker multi-thread runtime.
pub struct TokioAdapter;

impl Adapter for TokioAdapter {
    const NAME: &'static str = "tokio";
    type Client = Client;
    type Subscription = Subscription;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime")
            .block_on(f)
    }

    async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        Client::connect(options).await
    }

    fn start(options: ClientOptions) -> Result<Client, ClientError> {
        Client::start(options)
    }

    async fn sleep(d: Duration) {
        tokio::time::sleep(d).await;
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
            Err(RecvError::Lagged(n)) => Some(Err(n)),
            Err(RecvError::Closed) => None,
        }
    }

    fn user_agent() -> String {
        usageflow_socket_tokio::default_user_agent()
    }
}
