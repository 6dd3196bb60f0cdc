//! [`Runtime`]: the one seam between the client and an async executor.
//!
//! The client needs three things from an executor: to run tasks, to sleep until an instant,
//! and to open a TCP connection. Everything above TCP (TLS with `futures-rustls`, the WebSocket
//! upgrade with `async-tungstenite`, channels, wake-ups, cancellation) is written once in this
//! crate over `futures` traits, so implementing [`Runtime`] is all it takes to run the client
//! on another executor. `usageflow-socket-tokio` and `usageflow-socket-smol` are two such
//! implementations of a few lines each.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

use crate::ClientError;

/// An async executor as the client sees it: run tasks, sleep until an instant, open a TCP
/// connection. Everything above TCP (TLS with `futures-rustls`, the WebSocket upgrade with
/// `async-tungstenite`, channels, wake-ups, cancellation) is written once in this crate over
/// `futures` traits, so implementing this trait is all it takes to run the client on another
/// executor.
///
/// A client holds its runtime for its whole life and calls it from its own tasks (and, for
/// [`Runtime::spawn`], from the task that creates the client): an implementation is usually
/// a handle on an executor (Tokio's `Handle`) or a unit struct for a global one (smol).
///
/// None of these methods is on the path of a request or a reply: a request takes the client's
/// lock, runs the core and queues its frame on a runtime-neutral channel; only dials (two
/// spawns and a connect per connection) and the driver task's one timer reach the runtime.
///
/// ```
/// use std::future::Future;
/// use std::time::Instant;
/// use usageflow_socket_client::{ClientError, Runtime};
///
/// /// smol's global executor (what `usageflow-socket-smol` does).
/// struct Smol;
///
/// impl Runtime for Smol {
///     type Tcp = smol::net::TcpStream;
///
///     fn current() -> Result<Self, ClientError> {
///         Ok(Smol)
///     }
///
///     fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
///         smol::spawn(task).detach();
///     }
///
///     fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
///         async move {
///             smol::Timer::at(deadline).await;
///         }
///     }
///
///     async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Tcp> {
///         let tcp = smol::net::TcpStream::connect((host, port)).await?;
///         tcp.set_nodelay(true)?;
///         Ok(tcp)
///     }
/// }
/// ```
pub trait Runtime: Send + Sync + Sized + 'static {
    /// A connected TCP stream, read and written through the `futures-io` traits.
    type Tcp: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// The `User-Agent` the client's upgrade requests carry, `crate/version` ([PROTOCOL.md](https://github.com/usageflow/usageflow-socket/blob/main/docs/PROTOCOL.md)):
    /// an adapter names itself so the service can tell its clients apart.
    const USER_AGENT: &'static str = concat!("usageflow-socket-client/", env!("CARGO_PKG_VERSION"));

    /// The runtime to start a client on from the calling context, for `Client::connect` and
    /// `Client::start` (which take no runtime argument): Tokio's current runtime, smol's global
    /// executor. Fails with [`ClientError::InvalidOptions`] when there is none (Tokio outside a
    /// runtime); `Client::start_on` takes an explicit runtime instead.
    fn current() -> Result<Self, ClientError>;

    /// Whether this runtime can run a client, checked when a client starts: an error here
    /// fails `Client::start` and `Client::connect` (Tokio: a runtime built without timers,
    /// which would kill the driver task). The default accepts.
    fn check(&self) -> Result<(), ClientError> {
        Ok(())
    }

    /// Runs `task` to completion in the background (detached: the client never joins it). The
    /// client spawns one driver task, and per connection a dial-then-read task and a writer
    /// task. It cancels them itself (they are wrapped in `futures` `Abortable`s and end at
    /// their next poll once aborted), so the runtime needs no abort handle.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static);

    /// A future that completes at `deadline` (at once if it passed): the driver task's one
    /// timer, which fires every deadline of the core (handshake, write, read, request,
    /// backoff, ping). Created anew only when the next deadline moves. Also called from the
    /// caller's context for the waits of `flush`, `send_confirmed` and `send_when_room`,
    /// possibly outside the runtime (a plain thread): create the timer in the runtime's own
    /// context. `deadline` may be decades away (a `Duration::MAX` timeout saturates).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;

    /// Opens a TCP connection to `host:port` (a name to resolve, or an IP address, IPv6
    /// without brackets). Should set `TCP_NODELAY`: the client writes small frames that must
    /// go out at once. No timeout is needed: the core's handshake deadline abandons a dial that
    /// takes too long.
    fn connect(&self, host: &str, port: u16) -> impl Future<Output = io::Result<Self::Tcp>> + Send;

    /// Resolves `host` (a name, or an IP address, IPv6 without brackets) to the addresses to
    /// try for `port`, in the resolver's order. The client then connects to them with Happy
    /// Eyeballs (RFC 8305), through [`Runtime::connect`] with each IP address, so a host with
    /// a black-holed address still connects through another.
    ///
    /// The default reads an IP address as is and resolves a name with the system's resolver
    /// (`ToSocketAddrs`) on a thread of its own, so the executor never blocks; an adapter
    /// overrides it with its runtime's resolver (Tokio's `lookup_host`, smol's `resolve`).
    fn resolve(&self, host: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send {
        crate::eyeballs::resolve_on_thread(host, port)
    }

    /// Most times a connection's writer yields to the executor, while other tasks may still
    /// queue frames, before it flushes (one syscall for many requests). Worth tuning per
    /// executor: a yield is cheap on Tokio (8 measured best) but may wake another thread on
    /// smol's (1 measured best). The default is 1.
    fn writer_yields(&self) -> u32 {
        1
    }
}
