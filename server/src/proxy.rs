//! An HTTP `CONNECT` proxy for tests: [`ProxyThread`] listens on its own thread and Tokio
//! runtime, accepts `CONNECT host:port`, optionally requires basic credentials, can answer a
//! fixed status instead, and otherwise tunnels bytes both ways; [`ProxyCounters`] tell what it
//! did.
//!
//! ```
//! use usageflow_socket_server::{ProxyOptions, ProxyThread};
//!
//! let proxy = ProxyThread::spawn(ProxyOptions {
//!     credentials: Some(("user".into(), "pass".into())),
//!     ..Default::default()
//! })?;
//! let _url = proxy.url_with_credentials("user", "pass"); // http://user:pass@127.0.0.1:PORT
//! assert_eq!(proxy.counters().tunnels_opened(), 0);
//! # Ok::<(), usageflow_socket_server::ServerError>(())
//! ```

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::ServerError;

/// What a [`ProxyThread`] does.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where to listen (default `127.0.0.1:0`: an ephemeral port).
    pub addr: SocketAddr,
    /// Basic credentials `(user, password)` every `CONNECT` must carry in
    /// `Proxy-Authorization`; without them, or with others, the answer is 407. Default none.
    pub credentials: Option<(String, String)>,
    /// A status to answer every (authenticated) `CONNECT` with instead of tunnelling, for
    /// example 403 or 502. Also switchable at run time with [`ProxyThread::set_status`].
    pub status: Option<u16>,
    /// Most bytes of a request head (default 8 KiB); a longer one is answered 431.
    pub max_head: usize,
    /// How long a client has to send its whole request head (default 5 s).
    pub head_timeout: Duration,
    /// How long connecting to the target may take (default 5 s); failure is answered 502.
    pub connect_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            credentials: None,
            status: None,
            max_head: 8 << 10,
            head_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What a proxy did, counted since it started.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    accepted: AtomicU64,
    tunnels_opened: AtomicU64,
    tunnels_refused: AtomicU64,
    auth_required: AtomicU64,
    bad_requests: AtomicU64,
    tls_tunnels: AtomicU64,
    last_target: Mutex<Option<String>>,
}

impl ProxyCounters {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Relaxed)
    }

    /// Tunnels opened (answered 200 and connected to the target).
    pub fn tunnels_opened(&self) -> u64 {
        self.tunnels_opened.load(Relaxed)
    }

    /// `CONNECT`s answered with a non-2xx status (407, the fixed status, 502 when the target
    /// could not be reached, 4xx for bad requests).
    pub fn tunnels_refused(&self) -> u64 {
        self.tunnels_refused.load(Relaxed)
    }

    /// `CONNECT`s answered 407 (credentials missing or wrong).
    pub fn auth_required(&self) -> u64 {
        self.auth_required.load(Relaxed)
    }

    /// Requests that were not a well-formed `CONNECT` within the size and time limits.
    pub fn bad_requests(&self) -> u64 {
        self.bad_requests.load(Relaxed)
    }

    /// Tunnels whose first byte from the client was a TLS handshake record (`0x16`): TLS runs
    /// end to end through the tunnel, not with the proxy.
    pub fn tls_tunnels(&self) -> u64 {
        self.tls_tunnels.load(Relaxed)
    }

    /// The `host:port` of the latest `CONNECT` request.
    pub fn last_target(&self) -> Option<String> {
        self.last_target.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An HTTP `CONNECT` proxy on a thread and Tokio runtime of its own (usable from any test).
/// Dropping it stops it and drops every tunnel.
#[derive(Debug)]
pub struct ProxyThread {
    addr: SocketAddr,
    counters: Arc<ProxyCounters>,
    status: Arc<AtomicU32>,
    rt: Option<Runtime>,
}

impl ProxyThread {
    /// Binds `options.addr` and starts accepting on a one-worker runtime of its own.
    pub fn spawn(options: ProxyOptions) -> Result<Self, ServerError> {
        let bind = |source| ServerError::Bind {
            addr: options.addr,
            source,
        };
        let listener = std::net::TcpListener::bind(options.addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ufsock-proxy")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let listener = {
            let _enter = rt.enter();
            TcpListener::from_std(listener).map_err(bind)?
        };
        let counters = Arc::new(ProxyCounters::default());
        let status = Arc::new(AtomicU32::new(options.status.map_or(0, u32::from)));
        let shared = Arc::new(Shared {
            expected_authorization: options
                .credentials
                .as_ref()
                .map(|(user, pass)| format!("Basic {}", BASE64.encode(format!("{user}:{pass}")))),
            options,
            counters: counters.clone(),
            status: status.clone(),
        });
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                shared.counters.accepted.fetch_add(1, Relaxed);
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(shared.clone(), tcp));
            }
        });
        Ok(Self {
            addr,
            counters,
            status,
            rt: Some(rt),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the proxy URL for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:pass@127.0.0.1:PORT` (no percent-encoding: pass plain ASCII names).
    pub fn url_with_credentials(&self, user: &str, pass: &str) -> String {
        format!("http://{user}:{pass}@{}", self.addr)
    }

    /// Its counters (shared: they keep counting).
    pub fn counters(&self) -> Arc<ProxyCounters> {
        self.counters.clone()
    }

    /// Answers every later authenticated `CONNECT` with `status` instead of tunnelling
    /// (`None`: tunnel again).
    pub fn set_status(&self, status: Option<u16>) {
        self.status.store(status.map_or(0, u32::from), Relaxed);
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Shared {
    options: ProxyOptions,
    expected_authorization: Option<String>,
    counters: Arc<ProxyCounters>,
    status: Arc<AtomicU32>,
}

/// Why a request head was refused.
enum HeadFailure {
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads a request head (up to `\r\n\r\n`) within the size and time limits; the head and
/// any bytes read past it.
async fn read_head(shared: &Shared, tcp: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), HeadFailure> {
    let max = shared.options.max_head;
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = tcp.read(&mut chunk).await.map_err(|_| HeadFailure::Closed)?;
            if n == 0 {
                return Err(HeadFailure::Closed);
            }
            let searched_from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf[searched_from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = searched_from + i + 4;
                if end > max {
                    return Err(HeadFailure::TooLarge);
                }
                let rest = buf.split_off(end);
                return Ok((buf, rest));
            }
            if buf.len() >= max {
                return Err(HeadFailure::TooLarge);
            }
        }
    };
    tokio::time::timeout(shared.options.head_timeout, read)
        .await
        .unwrap_or(Err(HeadFailure::TimedOut))
}

/// Serves one client connection.
async fn serve(shared: Arc<Shared>, mut tcp: TcpStream) {
    let counters = &shared.counters;
    let (head, rest) = match read_head(&shared, &mut tcp).await {
        Ok(read) => read,
        Err(failure) => {
            counters.bad_requests.fetch_add(1, Relaxed);
            match failure {
                HeadFailure::TooLarge => refuse(&shared, &mut tcp, 431).await,
                HeadFailure::TimedOut => refuse(&shared, &mut tcp, 408).await,
                HeadFailure::Closed => {}
            }
            return;
        }
    };
    let Some((target, authorization)) = parse_connect(&head) else {
        counters.bad_requests.fetch_add(1, Relaxed);
        refuse(&shared, &mut tcp, 400).await;
        return;
    };
    *counters.last_target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.clone());
    if let Some(expected) = &shared.expected_authorization {
        if authorization.as_deref() != Some(expected.as_str()) {
            counters.auth_required.fetch_add(1, Relaxed);
            refuse(&shared, &mut tcp, 407).await;
            return;
        }
    }
    let fixed = shared.status.load(Relaxed);
    if fixed != 0 {
        refuse(&shared, &mut tcp, u16::try_from(fixed).unwrap_or(502)).await;
        return;
    }
    let connect = tokio::time::timeout(shared.options.connect_timeout, TcpStream::connect(&target)).await;
    let Ok(Ok(mut upstream)) = connect else {
        refuse(&shared, &mut tcp, 502).await;
        return;
    };
    let _ = upstream.set_nodelay(true);
    if tcp
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    counters.tunnels_opened.fetch_add(1, Relaxed);
    // The client's first bytes: a TLS handshake record when TLS runs end to end.
    let mut first = rest;
    if first.is_empty() {
        let mut chunk = [0u8; 1024];
        match tcp.read(&mut chunk).await {
            Ok(n) if n > 0 => first.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    if first[0] == 0x16 {
        counters.tls_tunnels.fetch_add(1, Relaxed);
    }
    if upstream.write_all(&first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
}

/// Answers `status` and closes, counting a refused tunnel.
async fn refuse(shared: &Shared, tcp: &mut TcpStream, status: u16) {
    shared.counters.tunnels_refused.fetch_add(1, Relaxed);
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Refused",
    };
    let mut answer = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n");
    if status == 407 {
        answer.push_str("Proxy-Authenticate: Basic realm=\"usageflow-socket-test\"\r\n");
    }
    answer.push_str("\r\n");
    let _ = tcp.write_all(answer.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

/// The target (`host:port`, as given) and the `Proxy-Authorization` value of a `CONNECT`
/// head; `None` when it is not one.
fn parse_connect(head: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, target, version) = (request_line.next()?, request_line.next()?, request_line.next()?);
    if method != "CONNECT" || !version.starts_with("HTTP/1.") || request_line.next().is_some() {
        return None;
    }
    let (host, port) = target.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    Some((target.to_owned(), authorization))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_heads() {
        assert_eq!(
            parse_connect(
                b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nproxy-authorization: Basic dTpw\r\n\r\n"
            ),
            Some(("h:443".into(), Some("Basic dTpw".into())))
        );
        assert_eq!(
            parse_connect(b"CONNECT [::1]:80 HTTP/1.1\r\n\r\n"),
            Some(("[::1]:80".into(), None))
        );
        assert_eq!(parse_connect(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_connect(b"CONNECT h HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_connect(b"CONNECT h:99999 HTTP/1.1\r\n\r\n"), None);
        assert_eq!(BASE64.encode(b"user:pass"), "dXNlcjpwYXNz");
    }

    /// A blocking client of the proxy: sends `request`, returns the proxy's whole answer.
    fn exchange(proxy: &ProxyThread, request: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(request).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn refusals_and_a_tunnel() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut s, _)) = echo.accept() {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let proxy = ProxyThread::spawn(ProxyOptions {
            credentials: Some(("u".into(), "p".into())),
            max_head: 256,
            head_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .unwrap();
        let c = proxy.counters();
        let connect = format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n");
        let answer = exchange(&proxy, format!("{connect}\r\n").as_bytes());
        assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
        let answer = exchange(
            &proxy,
            format!("{connect}Proxy-Authorization: Basic eDp5\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
        assert_eq!(c.auth_required(), 2);
        let answer = exchange(&proxy, &[b'x'; 600]);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let answer = exchange(&proxy, b"CONNECT slow");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert_eq!(c.bad_requests(), 2);
        proxy.set_status(Some(403));
        let good = format!("{connect}Proxy-Authorization: Basic dTpw\r\n\r\n");
        let answer = exchange(&proxy, good.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
        proxy.set_status(None);
        {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(proxy.addr()).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tcp.write_all(good.as_bytes()).unwrap();
            let expected = b"HTTP/1.1 200 Connection established\r\n\r\n";
            let mut answer = vec![0u8; expected.len()];
            tcp.read_exact(&mut answer).unwrap();
            assert_eq!(&answer[..], expected);
            tcp.write_all(b"\x16hello").unwrap();
            let mut echoed = [0u8; 6];
            tcp.read_exact(&mut echoed).unwrap();
            assert_eq!(&echoed, b"\x16hello");
        }
        assert_eq!(c.tunnels_opened(), 1);
        assert_eq!(c.tls_tunnels(), 1);
        assert_eq!(c.tunnels_refused(), 5);
        assert_eq!(c.last_target(), Some(echo_addr.to_string()));
    }
}
