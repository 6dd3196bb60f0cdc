//! Happy Eyeballs against a name that resolves to a black-holed address and a reachable one,
//! all on 127.0.0.1. The black hole is a listener whose accept queue is full (backlog 0, one
//! connection never accepted): the kernel drops further SYNs, so a connect to it hangs, as
//! to an address whose packets vanish. A runtime over smol resolves `multi.test` to
//! `[black hole, server]`, and connects to that name the way system resolvers' callers do
//! (one address after the other), so a dial that does not race its addresses hangs.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use usageflow_socket_client::{Client, ClientError, ClientOptions, Config, Runtime, UsageFlowApi};
use usageflow_socket_server::{ServerOptions, ServerThread};

const NAME: &str = "multi.test";

/// smol, with `multi.test` resolving to `addrs`.
struct Resolving {
    addrs: Arc<Vec<SocketAddr>>,
}

impl Runtime for Resolving {
    type Tcp = smol::net::TcpStream;

    fn current() -> Result<Self, ClientError> {
        Err(ClientError::InvalidOptions("use connect_on".into()))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        smol::spawn(task).detach();
    }

    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> + Send + 'static {
        let timer = smol::Timer::at(at);
        async move {
            timer.await;
        }
    }

    async fn connect(&self, host: &str, port: u16) -> io::Result<Self::Tcp> {
        if host != NAME {
            return smol::net::TcpStream::connect((host, port)).await;
        }
        // One address after the other, as `TcpStream::connect` does with a name.
        let mut last = io::Error::other("no address");
        for addr in self.addrs.iter() {
            match smol::net::TcpStream::connect(*addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if host == NAME {
            Ok(self.addrs.to_vec())
        } else {
            smol::net::resolve((host, port)).await
        }
    }
}

/// A listening socket on 127.0.0.1 whose accept queue is full, and the connection filling it.
fn black_hole() -> (Socket, StdTcpStream, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
    // The premise: a further connect gets no answer.
    let probe = StdTcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert!(probe.is_err(), "the black hole answered: {probe:?}");
    (socket, filler, addr)
}

fn server() -> ServerThread {
    ServerThread::spawn(ServerOptions {
        key: Some("k".into()),
        ..Default::default()
    })
    .unwrap()
}

/// Connects to `ws://multi.test:<port>/ws` with `options`, `multi.test` resolving to
/// `addrs`; returns whether a request went through.
fn connects(addrs: Vec<SocketAddr>, port: u16, options: impl Fn(Config) -> ClientOptions) -> bool {
    let config = Config::builder(format!("ws://{NAME}:{port}/ws"), "k")
        .pool_size(1)
        .handshake_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let runtime = Resolving {
        addrs: Arc::new(addrs),
    };
    smol::block_on(async {
        let client = Client::connect_on(runtime, options(config)).await.unwrap();
        let ok = client.is_connected() && client.get_application_policies().await.is_ok();
        client.close().await;
        ok
    })
}

#[test]
fn a_black_holed_address_costs_one_stagger_not_the_handshake() {
    let server = server();
    let (_hole, _filler, hole) = black_hole();
    let port = server.addr().port();
    let good = SocketAddr::from(([127, 0, 0, 1], port));
    // The black hole first: the second address starts 250 ms later and wins.
    assert!(connects(vec![hole, good], port, ClientOptions::from));
    server.kill();
}

#[test]
fn the_attempt_timeout_moves_on_before_the_stagger() {
    let server = server();
    let (_hole, _filler, hole) = black_hole();
    let port = server.addr().port();
    let good = SocketAddr::from(([127, 0, 0, 1], port));
    // A stagger (2 s) longer than the handshake (1.5 s): only the attempt timeout (200 ms)
    // gets to the second address in time.
    let fast = |config| {
        ClientOptions::builder(config)
            .connect_attempt_delay(Duration::from_secs(2))
            .connect_attempt_timeout(Duration::from_millis(200))
            .build()
    };
    assert!(connects(vec![hole, good], port, fast));
    // With the default attempt timeout (2 s) the handshake ends first: no connection.
    let slow = |config| {
        ClientOptions::builder(config)
            .connect_attempt_delay(Duration::from_secs(2))
            .build()
    };
    assert!(!connects(vec![hole, good], port, slow));
    server.kill();
}
