//! HTTP `CONNECT` proxies: the proxy URL ([`Proxy::parse`]), the choice of a proxy from the
//! environment ([`proxy_from_env`], curl's variables and `NO_PROXY` rules), and the `CONNECT`
//! exchange ([`connect_tunnel`]) over the runtime's TCP stream, before TLS and the upgrade.
//!
//! The exchange is a small state machine: [`HeadReader`] takes the proxy's answer a few bytes
//! at a time (never more than can still belong to the head, so nothing after the head is read)
//! and [`parse_status`] reads its status line. Credentials are only ever shown redacted.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

use futures_io::{AsyncRead, AsyncWrite};
use usageflow_socket_core::{redact_url, DialError, DialStage};

use crate::handshake::io_error;

/// The largest response head accepted from a proxy (status line and headers).
pub(crate) const MAX_HEAD: usize = 8 << 10;

/// The port of a proxy URL without one (curl's default).
pub(crate) const DEFAULT_PROXY_PORT: u16 = 1080;

/// A parsed HTTP proxy: where to connect and what to authenticate with. `Debug` hides the
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// Host name or IP address (IPv6 without brackets).
    pub(crate) host: String,
    /// Port (1080 when the URL has none, as curl).
    pub(crate) port: u16,
    /// The `Proxy-Authorization` value (`Basic base64(user:pass)`), when the URL had a userinfo.
    authorization: Option<String>,
    /// The URL with its credentials redacted, for messages.
    redacted: String,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.redacted)
            .field("credentials", &self.authorization.is_some())
            .finish()
    }
}

impl Proxy {
    /// Parses `http://[user[:pass]@]host[:port][/]`. With `scheme_optional` (a value from the
    /// environment, as curl), a URL without a scheme is taken as `http://`. User and password
    /// are percent-decoded. Errors name the URL redacted.
    pub(crate) fn parse(url: &str, scheme_optional: bool) -> Result<Self, String> {
        let redacted = redact_url(url);
        let url = url.trim();
        let rest = match url.find("://") {
            Some(i) => {
                let scheme = &url[..i];
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(format!(
                        "proxy {redacted:?}: unsupported scheme {scheme:?} (only http:// CONNECT proxies are supported)"
                    ));
                }
                &url[i + 3..]
            }
            None if scheme_optional => url,
            None => {
                return Err(format!(
                "proxy {redacted:?}: expected http://host:port (only http:// CONNECT proxies are supported)"
            ))
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "proxy {redacted:?}: a proxy URL has no path, query or fragment"
            ));
        }
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| format!("proxy {redacted:?}: invalid host or port"))?;
        if host.is_empty() {
            return Err(format!("proxy {redacted:?}: no host"));
        }
        let authorization = match userinfo {
            None => None,
            Some(info) => {
                let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                let user = percent_decode(user)
                    .ok_or_else(|| format!("proxy {redacted:?}: invalid percent-encoding in the user"))?;
                let pass = percent_decode(pass)
                    .ok_or_else(|| format!("proxy {redacted:?}: invalid percent-encoding in the password"))?;
                let mut plain = user;
                plain.push(b':');
                plain.extend_from_slice(&pass);
                Some(format!("Basic {}", BASE64.encode(&plain)))
            }
        };
        Ok(Self {
            host: host.to_owned(),
            port: port.unwrap_or(DEFAULT_PROXY_PORT),
            authorization,
            redacted,
        })
    }

    /// The URL with its credentials redacted.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }
}

/// Splits `host[:port]` or `[v6][:port]`. A bare IPv6 literal (several colons, no brackets)
/// has no port. `None` on an invalid port or brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(inner) = s.strip_prefix('[') {
        let close = inner.find(']')?;
        let host = &inner[..close];
        let after = &inner[close + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host, port));
    }
    match s.matches(':').count() {
        0 => Some((s, None)),
        1 => {
            let (host, port) = s.split_once(':')?;
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((host, Some(port.parse().ok()?)))
        }
        _ => Some((s, None)),
    }
}

/// Decodes `%XX` escapes; `None` on a broken escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The proxy URL the environment gives for a dial to `host:port` (`tls`: a `wss://` URL), the
/// way curl reads it, through `lookup` (a variable's value, `None` when unset; empty values
/// count as unset):
///
/// - `https_proxy`, then `HTTPS_PROXY` for `wss://`; only lower-case `http_proxy` for
///   `ws://` (curl never reads `HTTP_PROXY`: a CGI-style host sets it from a request's
///   `Proxy:` header, "httpoxy", and over plain `ws://` that proxy would see the API key);
///   then `all_proxy`, then `ALL_PROXY`.
/// - `no_proxy`, then `NO_PROXY`: if it matches the host ([`no_proxy_matches`]), no proxy.
pub(crate) fn proxy_from_env(
    tls: bool,
    host: &str,
    port: u16,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let scheme_vars: &[&str] = if tls {
        &["https_proxy", "HTTPS_PROXY"]
    } else {
        &["http_proxy"]
    };
    let proxy = scheme_vars
        .iter()
        .copied()
        .chain(["all_proxy", "ALL_PROXY"])
        .find_map(get)?;
    let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY"));
    if no_proxy.is_some_and(|list| no_proxy_matches(&list, host, port)) {
        return None;
    }
    Some(proxy.trim().to_owned())
}

/// Whether the `NO_PROXY` list `list` exempts `host:port`, as curl: entries separated by
/// commas or white space; `*` as the whole value exempts every host (inside a list it matches
/// nothing); a name matches itself and its subdomains (`example.com` and `.example.com` both
/// match `example.com` and `api.example.com`, not `badexample.com`); an IP address matches
/// itself, and `addr/bits` a CIDR range; a host that is an IP address is matched only by
/// addresses and ranges, never by a name's tail (`0.1` does not match `10.0.0.1`); an entry
/// with `:port` (`[v6]:port` for IPv6) matches that port only. Case and a trailing dot are
/// ignored.
pub(crate) fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    if list.trim() == "*" {
        return true;
    }
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            let (name, entry_port) = match split_host_port(entry) {
                Some(split) => split,
                None => return false,
            };
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            if let Some((addr, bits)) = name.split_once('/') {
                return match (host_ip, addr.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            if let Some(ip) = host_ip {
                return name.parse::<IpAddr>().is_ok_and(|entry_ip| entry_ip == ip);
            }
            let name = name.trim_start_matches('.');
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            if name.is_empty() {
                return false;
            }
            host == name
                || (host.len() > name.len()
                    && host.ends_with(&name)
                    && host.as_bytes()[host.len() - name.len() - 1] == b'.')
        })
}

/// Whether `ip` is in `net/bits` (same family only).
fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    if bits == 0 {
        return true;
    }
    let shift = u32::from(width - bits);
    (ip >> shift) == (net >> shift)
}

/// The `CONNECT` request for `host:port` (IPv6 in brackets), with the proxy's credentials.
pub(crate) fn connect_request(proxy: &Proxy, host: &str, port: u16) -> String {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(authorization) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// Why a proxy's response head could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Longer than [`MAX_HEAD`] without its end.
    TooLong,
    /// Not an HTTP/1.x status line.
    Malformed(String),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLong => write!(f, "the response head exceeds {MAX_HEAD} bytes"),
            HeadError::Malformed(why) => write!(f, "malformed response: {why}"),
        }
    }
}

/// Accumulates a response head a few bytes at a time, never past its end: [`HeadReader::want`]
/// is at most the bytes that can still belong to the head (4 minus the part of `\r\n\r\n`
/// already seen), so the stream's next byte after the head stays unread.
#[derive(Debug, Default)]
pub(crate) struct HeadReader {
    head: Vec<u8>,
}

impl HeadReader {
    /// How many bytes may be read next (1 to 4), or 0 once the head is complete.
    pub(crate) fn want(&self) -> usize {
        let end = b"\r\n\r\n";
        let matched = (0..=4)
            .rev()
            .find(|&k| self.head.ends_with(&end[..k]))
            .unwrap_or(0);
        4 - matched
    }

    /// Adds bytes read (at most [`HeadReader::want`]); the complete head once it ended.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Option<&[u8]>, HeadError> {
        debug_assert!(bytes.len() <= self.want());
        self.head.extend_from_slice(bytes);
        if self.want() == 0 {
            return Ok(Some(&self.head));
        }
        if self.head.len() >= MAX_HEAD {
            return Err(HeadError::TooLong);
        }
        Ok(None)
    }
}

/// The status code of a response head (`HTTP/1.x SSS reason`).
pub(crate) fn parse_status(head: &[u8]) -> Result<u16, HeadError> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| HeadError::Malformed("the status line is not UTF-8".into()))?
        .trim_end_matches('\r');
    let shown = || line.chars().take(80).collect::<String>();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(HeadError::Malformed(format!("status line {:?}", shown())));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Malformed(format!("status line {:?}", shown())));
    }
    code.parse()
        .map_err(|_| HeadError::Malformed(format!("status line {:?}", shown())))
}

/// Reads what is there (at most `buf.len()` bytes); 0 at the end of the stream.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, buf)).await
}

/// Writes all of `buf` and flushes.
async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *stream).poll_flush(cx)).await
}

/// Opens a tunnel to `host:port` through `proxy` over `stream` (a TCP connection to the
/// proxy): writes the `CONNECT`, reads the response head (bounded, nothing past it), and
/// succeeds on 2xx. A non-2xx answer is [`DialError::Proxy`]; anything else is
/// [`DialError::Io`] for an I/O error, [`DialError::Network`] for a malformed answer. No deadline here: the core's handshake deadline abandons the dial.
pub(crate) async fn connect_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), DialError> {
    let at = || format!("{}:{}", proxy.host, proxy.port);
    let request = connect_request(proxy, host, port);
    write_all(stream, request.as_bytes())
        .await
        .map_err(|e| io_error(DialStage::Proxy, &proxy.host, proxy.port, e))?;
    let mut reader = HeadReader::default();
    let mut buf = [0u8; 4];
    loop {
        let want = reader.want();
        let n = read_some(stream, &mut buf[..want])
            .await
            .map_err(|e| io_error(DialStage::Proxy, &proxy.host, proxy.port, e))?;
        if n == 0 {
            return Err(DialError::Network(format!(
                "the proxy {} closed the connection before answering CONNECT",
                at()
            )));
        }
        let pushed = reader
            .push(&buf[..n])
            .map_err(|e| DialError::Network(format!("the proxy {}: {e}", at())))?;
        if let Some(head) = pushed {
            let status =
                parse_status(head).map_err(|e| DialError::Network(format!("the proxy {}: {e}", at())))?;
            return if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(DialError::Proxy { status })
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn parse_proxy_urls() {
        let p = Proxy::parse("http://proxy.corp:3128", false).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.authorization, None);
        let p = Proxy::parse("HTTP://proxy.corp/", false).unwrap();
        assert_eq!(p.port, DEFAULT_PROXY_PORT);
        let p = Proxy::parse("http://[::1]:8080", false).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        let p = Proxy::parse("http://alice:s%40cret@10.0.0.1:8080", false).unwrap();
        assert_eq!(p.authorization.as_deref(), Some("Basic YWxpY2U6c0BjcmV0"));
        assert_eq!(p.redacted(), "http://***@10.0.0.1:8080");
        let debug = format!("{p:?}");
        assert!(!debug.contains("cret") && !debug.contains("YWxp"), "{debug}");
        // An environment value may omit the scheme.
        assert_eq!(Proxy::parse("proxy:3128", true).unwrap().port, 3128);
        for bad in [
            "https://proxy:443",
            "socks5://u:hunter2@proxy:1080",
            "proxy:3128",
            "http://proxy:99999",
            "http://proxy:x",
            "http://:80",
            "http://proxy:80/path",
            "http://u:%zz@proxy:80",
        ] {
            let err = Proxy::parse(bad, false).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
        }
        assert!(Proxy::parse("socks5://proxy", false)
            .unwrap_err()
            .contains("unsupported scheme"));
    }

    #[test]
    fn base64_encodes() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(BASE64.encode(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn env_variables_by_scheme_and_precedence() {
        let e = env(&[
            ("https_proxy", "http://s:1"),
            ("HTTPS_PROXY", "http://S:1"),
            ("http_proxy", "http://p:1"),
            ("ALL_PROXY", "http://all:1"),
        ]);
        assert_eq!(proxy_from_env(true, "h", 443, &e).as_deref(), Some("http://s:1"));
        assert_eq!(proxy_from_env(false, "h", 80, &e).as_deref(), Some("http://p:1"));
        let e = env(&[("HTTPS_PROXY", "http://S:1"), ("HTTP_PROXY", "http://P:1")]);
        assert_eq!(proxy_from_env(true, "h", 443, &e).as_deref(), Some("http://S:1"));
        // As curl: upper-case HTTP_PROXY is never read (a CGI host sets it from a request's
        // `Proxy:` header, httpoxy), so a ws:// dial falls through to all_proxy or none.
        assert_eq!(proxy_from_env(false, "h", 80, &e), None, "HTTP_PROXY is not read");
        let e = env(&[("HTTP_PROXY", "http://P:1"), ("ALL_PROXY", "http://all:1")]);
        assert_eq!(
            proxy_from_env(false, "h", 80, &e).as_deref(),
            Some("http://all:1")
        );
        let e = env(&[
            ("https_proxy", ""),
            ("all_proxy", " http://a:1 "),
            ("ALL_PROXY", "x"),
        ]);
        assert_eq!(proxy_from_env(true, "h", 443, &e).as_deref(), Some("http://a:1"));
        assert_eq!(proxy_from_env(false, "h", 80, &e).as_deref(), Some("http://a:1"));
        assert_eq!(proxy_from_env(true, "h", 443, env(&[])), None);
        let e = env(&[
            ("https_proxy", "http://s:1"),
            ("no_proxy", "h"),
            ("NO_PROXY", "*"),
        ]);
        assert_eq!(proxy_from_env(true, "h", 443, &e), None);
        assert_eq!(
            proxy_from_env(true, "other", 443, &e).as_deref(),
            Some("http://s:1"),
            "lower-case no_proxy first"
        );
        let e = env(&[("https_proxy", "http://s:1"), ("NO_PROXY", "*")]);
        assert_eq!(proxy_from_env(true, "x", 443, &e), None);
    }

    #[test]
    fn no_proxy_rules() {
        let m = no_proxy_matches;
        assert!(m("*", "anything.example", 443));
        assert!(m(" * ", "anything.example", 443));
        // As curl: `*` is the whole value or nothing; inside a list it matches no host.
        assert!(!m("foo, *", "anything.example", 443));
        assert!(!m("*, foo", "anything.example", 443));
        assert!(!m("*.example.com", "api.example.com", 443));
        // A name entry never tail-matches an IP address, which is compared whole.
        assert!(!m("0.1", "10.0.0.1", 443));
        assert!(!m(".0.0.1", "10.0.0.1", 443));
        assert!(!m("1", "10.0.0.1", 443));
        assert!(!m("0.1", "::0.1", 443));
        assert!(!m("", "example.com", 443));
        assert!(m("example.com", "example.com", 443));
        assert!(m("example.com", "api.example.com", 443));
        assert!(m(".example.com", "example.com", 443));
        assert!(m(".example.com", "a.b.example.com", 443));
        assert!(!m("example.com", "badexample.com", 443));
        assert!(!m(".example.com", "badexample.com", 443));
        assert!(m("EXAMPLE.com.", "Api.Example.COM.", 443));
        assert!(m("foo, bar ,example.com", "example.com", 443));
        assert!(m("foo bar\texample.com", "example.com", 443));
        assert!(m("example.com:443", "example.com", 443));
        assert!(!m("example.com:8443", "example.com", 443));
        assert!(m("127.0.0.1", "127.0.0.1", 9000));
        assert!(!m("127.0.0.1", "127.0.0.2", 9000));
        assert!(m("10.0.0.0/8", "10.1.2.3", 80));
        assert!(!m("10.0.0.0/8", "11.1.2.3", 80));
        assert!(!m("10.0.0.0/8", "ten.example", 80));
        assert!(m("::1", "::1", 80));
        assert!(m("[::1]", "[::1]", 80));
        assert!(m("[::1]:80", "::1", 80));
        assert!(!m("[::1]:81", "::1", 80));
        assert!(m("fd00::/8", "fd12::1", 80));
        assert!(!m("fd00::/8", "127.0.0.1", 80));
        assert!(m("0.0.0.0/0", "1.2.3.4", 80));
        assert!(!m("1.2.3.4/33", "1.2.3.4", 80));
        assert!(!m("localhost", "127.0.0.1", 80), "names are not resolved");
        assert!(!m(".", "example.com", 80));
    }

    #[test]
    fn connect_request_text() {
        let p = Proxy::parse("http://u:p@proxy:3128", false).unwrap();
        assert_eq!(
            connect_request(&p, "api.usageflow.io", 443),
            "CONNECT api.usageflow.io:443 HTTP/1.1\r\nHost: api.usageflow.io:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
        );
        let p = Proxy::parse("http://proxy:3128", false).unwrap();
        assert_eq!(
            connect_request(&p, "::1", 9000),
            "CONNECT [::1]:9000 HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n"
        );
    }

    /// Feeds `bytes` in reads of at most `chunk` bytes (and at most `want`); the head's status
    /// and how many bytes were consumed.
    fn feed(bytes: &[u8], chunk: usize) -> (Result<Option<u16>, HeadError>, usize) {
        let mut r = HeadReader::default();
        let mut at = 0;
        while at < bytes.len() {
            let n = r.want().min(chunk).min(bytes.len() - at);
            assert!(n > 0);
            let pushed = r.push(&bytes[at..at + n]);
            at += n;
            match pushed {
                Ok(Some(head)) => return (parse_status(head).map(Some), at),
                Ok(None) => {}
                Err(e) => return (Err(e), at),
            }
        }
        (Ok(None), at)
    }

    #[test]
    fn head_reader_partial_reads_stop_at_the_head() {
        let answer = b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\nTLS-BYTES";
        let head_len = answer.len() - "TLS-BYTES".len();
        for chunk in 1..=4 {
            let (status, consumed) = feed(answer, chunk);
            assert_eq!(status, Ok(Some(200)));
            assert_eq!(consumed, head_len, "nothing past the head (chunk {chunk})");
        }
        assert_eq!(feed(b"HTTP/1.0 200 OK\r\n\r\n", 4).0, Ok(Some(200)));
        // Incomplete: no status yet.
        assert_eq!(feed(b"HTTP/1.1 200 OK\r\n", 4).0, Ok(None));
        // Bare `\n\n` is not the end (the proxy must speak HTTP/1.1).
        assert_eq!(feed(b"HTTP/1.1 200 OK\n\n", 4).0, Ok(None));
    }

    #[test]
    fn head_reader_refuses_an_oversize_head() {
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        while answer.len() < 2 * MAX_HEAD {
            answer.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        answer.extend_from_slice(b"\r\n");
        let (status, consumed) = feed(&answer, 4);
        assert_eq!(status, Err(HeadError::TooLong));
        assert!(consumed <= MAX_HEAD + 4, "{consumed}");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Ok(407)
        );
        assert_eq!(parse_status(b"HTTP/1.1 403\r\n\r\n"), Ok(403));
        assert_eq!(parse_status(b"HTTP/1.0 502 Bad Gateway\r\n\r\n"), Ok(502));
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(
                matches!(parse_status(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// A scripted stream: reads come from `input` in pieces of at most `piece` bytes; writes
    /// are kept.
    struct Script {
        input: Vec<u8>,
        at: usize,
        piece: usize,
        written: Vec<u8>,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.piece).min(self.input.len() - self.at);
            let at = self.at;
            buf[..n].copy_from_slice(&self.input[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.written.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn tunnel(answer: &[u8], piece: usize) -> (Result<(), DialError>, Script) {
        let proxy = Proxy::parse("http://user:hunter2@proxy:3128", false).unwrap();
        let mut s = Script {
            input: answer.to_vec(),
            at: 0,
            piece,
            written: Vec::new(),
        };
        let r = smol::block_on(connect_tunnel(&mut s, &proxy, "example.com", 443));
        (r, s)
    }

    #[test]
    fn tunnel_exchange() {
        let (r, s) = tunnel(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03", 7);
        assert_eq!(r, Ok(()));
        assert_eq!(&s.input[s.at..], b"\x16\x03", "the tunnel's bytes stay unread");
        assert!(s.written.starts_with(b"CONNECT example.com:443 HTTP/1.1\r\n"));
        let (r, _) = tunnel(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", 100);
        assert_eq!(r, Err(DialError::Proxy { status: 407 }));
        let (r, _) = tunnel(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 1);
        assert_eq!(r, Err(DialError::Proxy { status: 403 }));
        let (r, _) = tunnel(b"HTTP/1.1 502 Bad Gateway\r\n\r\n", 3);
        assert_eq!(r, Err(DialError::Proxy { status: 502 }));
        for answer in [&b"HTTP/1.1 200 OK\r\n"[..], b"", b"garbage\r\n\r\n"] {
            let (r, _) = tunnel(answer, 4);
            let Err(DialError::Network(message)) = r else {
                panic!("{r:?}")
            };
            assert!(
                message.contains("proxy:3128") && !message.contains("hunter2"),
                "{message}"
            );
        }
    }
}
