//! Drives the sans-IO core from one plain thread with blocking tungstenite: proof that the
//! core embeds anywhere, with no async runtime at all.
//!
//! Start a server, then run the example:
//!
//! ```sh
//! cargo run -p ufsock -- serve --addr 127.0.0.1:9000 --key dev-key &
//! cargo run -p usageflow-socket-core --example blocking -- ws://127.0.0.1:9000/ws dev-key
//! ```
//!
//! One connection (pool size 1) keeps the example short: the loop waits on that one socket
//! with a read timeout equal to the pool's next deadline, which is all the "event loop" a
//! sans-IO core needs.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};
use usageflow_socket_core::{
    messages, CloseReason, Config, ConnId, DialError, Input, Outcome, Output, Pool, RequestOptions,
};

type Socket = WebSocket<TcpStream>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:9000/ws".into());
    let key = args.next().unwrap_or_else(|| "dev-key".into());
    let config = Config::builder(&url, &key).pool_size(1).build()?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut pool = Pool::new(config, seed, Instant::now());
    let mut socket: Option<(ConnId, Socket, u64)> = None;
    let (mut issued, mut answered, goal) = (0, 0, 5);

    pool.connect(Instant::now());
    loop {
        // Carry out every output (the drain rule); inputs fed on the way are drained too.
        while let Some(output) = pool.poll_output() {
            match output {
                Output::Dial { conn } => {
                    let input = match dial(&pool, &url) {
                        Ok(ws) => {
                            socket = Some((conn, ws, 0));
                            Input::Connected { conn }
                        }
                        Err(error) => Input::ConnectFailed { conn, error },
                    };
                    pool.handle_input(Instant::now(), input);
                }
                Output::Transmit { conn, frame } => write(&mut pool, &mut socket, conn, Message::text(frame)),
                Output::Ping { conn, payload } => write(
                    &mut pool,
                    &mut socket,
                    conn,
                    Message::Ping(payload.to_vec().into()),
                ),
                Output::Disconnect { conn, graceful } => {
                    if let Some((c, mut ws, _)) = socket.take() {
                        if c == conn && graceful {
                            let _ = ws.close(None);
                            let _ = ws.flush();
                        } else if c != conn {
                            socket = Some((c, ws, 0));
                        }
                    }
                }
                Output::Completed { id, outcome } => {
                    answered += 1;
                    match outcome {
                        Outcome::Reply(frame) => println!("{id}: {} {}", frame.kind, frame.payload),
                        Outcome::Denied(frame) => println!("{id}: denied: {}", frame.denial_text()),
                        Outcome::Failed(failure) => println!("{id}: failed: {failure}"),
                    }
                }
                Output::Event(event) => println!("event: {event:?}"),
                other => println!("{other:?}"),
            }
        }

        // The application's work: a few requests, then close.
        if pool.is_connected() && issued < goal {
            issued += 1;
            let message = messages::RequestForAllocation {
                alias: "ledger-1".into(),
                amount: 1.0,
                ..Default::default()
            }
            .to_message();
            if let Err(e) = pool.request(Instant::now(), message, RequestOptions::default()) {
                println!("refused: {e}");
            }
            continue;
        }
        if answered == goal && !pool.is_closing() {
            pool.close(Instant::now());
            continue;
        }
        if pool.is_closed() {
            println!("stats: {:?}", pool.stats());
            return Ok(());
        }

        // Wait for the socket or the next deadline, whichever comes first.
        let wait = pool
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        match socket.as_mut() {
            Some((conn, ws, _)) => {
                let conn = *conn;
                ws.get_mut().set_read_timeout(Some(wait))?;
                let input = match ws.read() {
                    Ok(Message::Text(text)) => {
                        pool.handle_input(Instant::now(), Input::Text { conn, text: &text });
                        None
                    }
                    Ok(Message::Binary(data)) => Some(Input::Binary {
                        conn,
                        len: data.len(),
                    }),
                    Ok(Message::Pong(data)) => {
                        pool.handle_input(Instant::now(), Input::Pong { conn, payload: &data });
                        None
                    }
                    Ok(Message::Close(frame)) => Some(Input::Closed {
                        conn,
                        reason: frame.map_or(CloseReason::Eof, |f| CloseReason::Frame {
                            code: f.code.into(),
                            reason: f.reason.to_string(),
                        }),
                    }),
                    Ok(_) => None,
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        None
                    }
                    Err(e) => Some(Input::Closed {
                        conn,
                        reason: CloseReason::Error(e.to_string()),
                    }),
                };
                if let Some(input) = input {
                    pool.handle_input(Instant::now(), input);
                }
            }
            None => std::thread::sleep(wait),
        }
        pool.handle_timeout(Instant::now());
    }
}

/// Dials with the `x-usage-key` header, bounded by the handshake timeout.
fn dial(pool: &Pool, url: &str) -> Result<Socket, DialError> {
    let timeout = pool.config().handshake_timeout();
    let mut request = url
        .into_client_request()
        .map_err(|e| DialError::Network(e.to_string()))?;
    let key = pool
        .config()
        .api_key()
        .expose()
        .parse()
        .map_err(|_| DialError::Network("bad key".into()))?;
    request.headers_mut().insert("x-usage-key", key);
    let host = request.uri().host().unwrap_or("localhost").to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| DialError::Network(e.to_string()))?
        .next()
        .ok_or_else(|| DialError::Network("no address".into()))?;
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| DialError::Network(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| DialError::Network(e.to_string()))?;
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(DialError::Rejected {
                status: response.status().as_u16(),
            })
        }
        Err(e) => Err(DialError::Network(e.to_string())),
    }
}

/// Writes one message and reports the result; a blocking write is flushed when it returns.
fn write(pool: &mut Pool, socket: &mut Option<(ConnId, Socket, u64)>, conn: ConnId, message: Message) {
    let Some((c, ws, writes)) = socket.as_mut().filter(|(c, ..)| *c == conn) else {
        return;
    };
    let input = match ws.send(message) {
        Ok(()) => {
            *writes += 1;
            Input::Flushed {
                conn: *c,
                writes: *writes,
            }
        }
        Err(e) => Input::WriteFailed {
            conn: *c,
            error: e.to_string(),
        },
    };
    pool.handle_input(Instant::now(), input);
}
