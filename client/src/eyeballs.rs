//! Happy Eyeballs (RFC 8305) for the dial's TCP connect: the host's addresses are tried in
//! families alternated (IPv6 first), a new attempt every `delay` while none has connected
//! (at once when one fails), each bounded by its own timeout, and the first to connect wins;
//! the others are dropped (cancelled). A black-holed address so costs one `delay`, not the
//! whole handshake budget.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::Runtime;

/// The timing of the attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eyeballs {
    /// Between the starts of two attempts while neither has ended.
    pub(crate) delay: Duration,
    /// The most one attempt may take.
    pub(crate) attempt_timeout: Duration,
}

/// [`Runtime::resolve`]'s default: an IP address as is; a name through the system's resolver
/// on a thread of its own (the call blocks), handed back over a oneshot channel.
pub(crate) fn resolve_on_thread(
    host: &str,
    port: u16,
) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static {
    let host = host.to_owned();
    async move {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        std::thread::Builder::new()
            .name("usageflow-resolve".into())
            .spawn(move || {
                let _ = tx.send((host.as_str(), port).to_socket_addrs().map(Iterator::collect));
            })?;
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the resolver thread ended without an answer")))
    }
}

/// RFC 8305 §4: the addresses with the families alternated, starting with IPv6 when there is
/// one; within a family the resolver's order is kept.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    loop {
        match (v6.next(), v4.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Every attempt of a dial failed: each address with its error. As an [`io::Error`] it has
/// the kind of the last failure, and that failure as its `source()`.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectAttemptsFailed {
    /// Each address tried, with why it failed, in the order the attempts ended.
    pub attempts: Vec<(SocketAddr, io::Error)>,
}

impl fmt::Display for ConnectAttemptsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} addresses failed", self.attempts.len())?;
        for (addr, error) in &self.attempts {
            write!(f, "; {addr}: {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectAttemptsFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.attempts.last().map(|(_, e)| e as _)
    }
}

/// Resolves `host` on `runtime` and connects to one of its addresses with Happy Eyeballs:
/// the stream and the address it reached. One address is one attempt (its error as is); several that all fail give an error of the
/// last failure's kind carrying [`ConnectAttemptsFailed`].
pub(crate) async fn connect<R: Runtime>(
    runtime: &R,
    host: &str,
    port: u16,
    timing: Eyeballs,
) -> io::Result<(R::Tcp, SocketAddr)> {
    let addrs = runtime.resolve(host, port).await?;
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ));
    }
    let mut queue = interleave(addrs).into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut failed: Vec<(SocketAddr, io::Error)> = Vec::new();
    let mut next_start = Instant::now();
    loop {
        if attempts.is_empty() || Instant::now() >= next_start {
            match queue.next() {
                Some(addr) => {
                    attempts.push(Box::pin(attempt(runtime, addr, timing.attempt_timeout)));
                    next_start = Instant::now() + timing.delay;
                }
                None if attempts.is_empty() => return Err(all_failed(failed)),
                None => {}
            }
        }
        let ended = if queue.len() == 0 {
            attempts.next().await
        } else {
            let stagger = pin!(runtime.sleep_until(next_start));
            match select(attempts.next(), stagger).await {
                Either::Left((ended, _)) => ended,
                Either::Right(((), _)) => continue,
            }
        };
        match ended {
            Some((addr, Ok(tcp))) => return Ok((tcp, addr)),
            Some((addr, Err(error))) => {
                tracing::debug!(%addr, %error, "usageflow-socket: connect attempt failed");
                failed.push((addr, error));
                // The next address goes at once.
                next_start = Instant::now();
            }
            None => {}
        }
    }
}

/// One TCP connect to `addr`, failing with `TimedOut` after `timeout`.
async fn attempt<R: Runtime>(
    runtime: &R,
    addr: SocketAddr,
    timeout: Duration,
) -> (SocketAddr, io::Result<R::Tcp>) {
    let ip = addr.ip().to_string();
    let connect = pin!(runtime.connect(&ip, addr.port()));
    let expiry = pin!(runtime.sleep_until(Instant::now() + timeout));
    let result = match select(connect, expiry).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within the connect attempt timeout ({timeout:?})"),
        )),
    };
    (addr, result)
}

fn all_failed(mut failed: Vec<(SocketAddr, io::Error)>) -> io::Error {
    if failed.len() == 1 {
        return failed
            .pop()
            .map(|(_, e)| e)
            .unwrap_or_else(|| io::Error::other("no address"));
    }
    let kind = failed.last().map_or(io::ErrorKind::Other, |(_, e)| e.kind());
    io::Error::new(kind, ConnectAttemptsFailed { attempts: failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_ipv6_first() {
        let addrs = vec![
            a("10.0.0.1:1"),
            a("10.0.0.2:1"),
            a("[::1]:1"),
            a("10.0.0.3:1"),
            a("[::2]:1"),
        ];
        assert_eq!(
            interleave(addrs),
            vec![
                a("[::1]:1"),
                a("10.0.0.1:1"),
                a("[::2]:1"),
                a("10.0.0.2:1"),
                a("10.0.0.3:1")
            ]
        );
        assert_eq!(interleave(vec![a("10.0.0.1:1")]), vec![a("10.0.0.1:1")]);
        assert!(interleave(Vec::new()).is_empty());
    }

    #[test]
    fn all_failed_keeps_kind_and_source() {
        let one = all_failed(vec![(a("127.0.0.1:1"), io::ErrorKind::ConnectionRefused.into())]);
        assert_eq!(one.kind(), io::ErrorKind::ConnectionRefused);
        let two = all_failed(vec![
            (a("[::1]:1"), io::ErrorKind::ConnectionRefused.into()),
            (a("127.0.0.1:1"), io::Error::new(io::ErrorKind::TimedOut, "slow")),
        ]);
        assert_eq!(two.kind(), io::ErrorKind::TimedOut);
        let text = two.to_string();
        assert!(
            text.contains("[::1]:1") && text.contains("127.0.0.1:1: slow"),
            "{text}"
        );
        let inner = std::error::Error::source(two.get_ref().unwrap()).unwrap();
        assert_eq!(inner.to_string(), "slow");
    }
}
