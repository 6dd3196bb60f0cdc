//! [`DialIoError`]: a dial's I/O failure kept whole (its stage, its target, the
//! [`io::Error`] with its kind and `source()` chain), so a host can tell a refused connection
//! from a timeout or a TLS certificate error without reading a string.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Which step of a dial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum DialStage {
    /// Resolving the host and connecting TCP to it.
    Connect,
    /// Connecting TCP to the HTTP proxy, or the `CONNECT` exchange with it.
    Proxy,
    /// The TLS handshake.
    Tls,
    /// The WebSocket upgrade (HTTP/1.1 over the stream).
    Upgrade,
}

impl fmt::Display for DialStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DialStage::Connect => "TCP connect to",
            DialStage::Proxy => "the proxy exchange with",
            DialStage::Tls => "TLS handshake with",
            DialStage::Upgrade => "WebSocket upgrade with",
        })
    }
}

/// A dial's I/O failure: where it happened, to whom, and the [`io::Error`] itself, whose
/// [`io::ErrorKind`] says what happened (refused, timed out, ...) and whose `source()` chain
/// leads to the cause (for TLS, the `rustls::Error`, such as an unknown issuer).
///
/// Displayed as `"{stage} {target} failed: {error}"`. Cheap to clone (the error is shared);
/// two are equal when stage, target, kind and message are.
#[derive(Debug, Clone)]
pub struct DialIoError {
    stage: DialStage,
    target: String,
    error: Arc<io::Error>,
}

impl DialIoError {
    /// The failure of `stage` towards `target` (`host:port`) with `error`.
    pub fn new(stage: DialStage, target: impl Into<String>, error: io::Error) -> Self {
        Self {
            stage,
            target: target.into(),
            error: Arc::new(error),
        }
    }

    /// Which step failed.
    pub fn stage(&self) -> DialStage {
        self.stage
    }

    /// To whom: `host:port` of the server or of the proxy.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What happened: the I/O error's kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.error.kind()
    }

    /// The I/O error itself (its `get_ref()` and `source()` lead to the cause).
    pub fn io_error(&self) -> &io::Error {
        &self.error
    }
}

impl fmt::Display for DialIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} failed: {}", self.stage, self.target, self.error)
    }
}

impl std::error::Error for DialIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

impl PartialEq for DialIoError {
    fn eq(&self, other: &Self) -> bool {
        self.stage == other.stage
            && self.target == other.target
            && self.kind() == other.kind()
            && self.error.to_string() == other.error.to_string()
    }
}

impl Eq for DialIoError {}

#[cfg(feature = "fuzzing")]
impl<'a> arbitrary::Arbitrary<'a> for DialIoError {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const KINDS: [io::ErrorKind; 4] = [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut,
            io::ErrorKind::InvalidData,
            io::ErrorKind::ConnectionReset,
        ];
        let kind = *u.choose(&KINDS)?;
        Ok(Self::new(
            DialStage::arbitrary(u)?,
            String::arbitrary(u)?,
            kind.into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn keeps_kind_and_source_chain() {
        let inner = io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        let e = DialIoError::new(DialStage::Tls, "localhost:443", inner);
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.stage(), DialStage::Tls);
        assert_eq!(e.target(), "localhost:443");
        assert_eq!(
            e.to_string(),
            "TLS handshake with localhost:443 failed: invalid peer certificate: UnknownIssuer"
        );
        let source = e.source().unwrap();
        assert!(source.downcast_ref::<io::Error>().is_some());
        assert_eq!(e, e.clone());
        let other = DialIoError::new(
            DialStage::Connect,
            "localhost:443",
            io::ErrorKind::ConnectionRefused.into(),
        );
        assert_ne!(e, other);
    }
}
