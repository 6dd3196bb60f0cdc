//! `ufsock serve`: the local UsageFlow-compatible server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use usageflow_socket_server::{FaultConfig, ReplyStyle, Server, ServerOptions, TlsOptions};

use crate::shared::SecretArg;

/// Options of `ufsock serve`. `Debug` never shows the key.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: SocketAddr,
    /// The accepted API key (`x-usage-key`). Without it any non-empty key is accepted.
    #[arg(long, env = "USAGEFLOW_API_KEY", hide_env_values = true)]
    key: Option<SecretArg>,
    /// How replies are correlated: reply-to (replyTo = request id, fresh id), both
    /// (replyTo = id = request id) or id-only (id = request id, no replyTo).
    #[arg(long, default_value = "reply-to")]
    reply_style: ReplyStyle,
    /// Serve wss:// with a freshly generated self-signed certificate for localhost.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
    /// Serve wss:// with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Maximum frame and message size accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame_size: usize,
    /// Print the counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,

    /// Fault: delay every reply by this many milliseconds.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    delay_ms: u64,
    /// Fault: add a random 0..=N ms to each reply's delay.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    jitter_ms: u64,
    /// Fault: drop every k-th reply.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    drop_every: u64,
    /// Fault: send every reply twice.
    #[arg(long, help_heading = "Faults")]
    duplicate: bool,
    /// Fault: send a non-JSON text frame after every n-th reply.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    garbage_every: u64,
    /// Fault: send a binary frame after every n-th reply.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    binary_every: u64,
    /// Fault: send a reply to an unknown id after every n-th reply.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    stray_every: u64,
    /// Fault: never answer pings.
    #[arg(long, help_heading = "Faults")]
    no_pongs: bool,
    /// Fault: a connection stops reading and writing (socket kept open) after N messages.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    freeze_after: u64,
    /// Fault: a connection freezes this many milliseconds after it opened.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    freeze_after_ms: u64,
    /// Fault: never read from connections (clients' writes stall).
    #[arg(long, help_heading = "Faults")]
    stop_reading: bool,
    /// Fault: send a close frame after N messages on a connection.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    close_after: u64,
    /// Code of the close frames of --close-after.
    #[arg(long, default_value_t = 1000, help_heading = "Faults")]
    close_code: u16,
    /// Fault: drop the TCP connection (no close frame) after N messages on a connection.
    #[arg(long, default_value_t = 0, help_heading = "Faults")]
    drop_after: u64,
    /// Fault: reject every upgrade with 401.
    #[arg(long, help_heading = "Faults")]
    reject_all: bool,
    /// Fault: answer every upgrade with this HTTP status instead of 101 (e.g. 503 or 429).
    #[arg(long, value_name = "STATUS", default_value_t = 0, help_heading = "Faults")]
    handshake_status: u16,
    /// With --handshake-status: send `Retry-After: SECS` (0 = no header).
    #[arg(long, value_name = "SECS", default_value_t = 0, help_heading = "Faults")]
    retry_after: u64,
    /// Send a ping to every connection every MS milliseconds (0 = off).
    #[arg(long, value_name = "MS", default_value_t = 0, help_heading = "Faults")]
    ping_every_ms: u64,
    /// Fault: send every connection, every MS milliseconds, unsolicited pongs carrying every
    /// small counter in both byte orders (a peer guessing ping payloads; 0 = off).
    #[arg(long, value_name = "MS", default_value_t = 0, help_heading = "Faults")]
    forge_pongs_every_ms: u64,
    /// Fault: accept TCP connections but never answer the upgrade.
    #[arg(long, help_heading = "Faults")]
    hang_handshake: bool,
    /// Fault (one-shot): drop the TCP connection (no close frame, no reply) that receives the
    /// first message containing TEXT, e.g. a request's allocationId; the message is counted.
    #[arg(long, value_name = "TEXT", help_heading = "Faults")]
    drop_once_on: Option<String>,
    /// Fault (one-shot): the first connection sends N unsolicited frames (type "push", an id
    /// that answers no request) as soon as it opens.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Faults")]
    push: u64,
    /// Payload length of each frame of --push, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024, help_heading = "Faults")]
    push_size: u64,
    /// Fault (one-shot): once N messages (requests and fire-and-forget, all connections) have
    /// been received, abort every connection (TCP reset, no close frame, unread messages lost);
    /// the listener stays up.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Faults")]
    abort_after: u64,
    /// Fault: abort every connection every MS milliseconds (TCP reset, no close frame, unread
    /// messages lost); the listener stays up (0 = off).
    #[arg(long, value_name = "MS", default_value_t = 0, help_heading = "Faults")]
    abort_every_ms: u64,
    /// Fault: pause reading a connection for US microseconds after each message it receives,
    /// so fast clients fill the socket buffers (0 = off).
    #[arg(long, value_name = "US", default_value_t = 0, help_heading = "Faults")]
    read_delay_us: u64,
}

impl ServeArgs {
    fn faults(&self) -> FaultConfig {
        FaultConfig {
            reply_delay_ms: self.delay_ms,
            reply_jitter_ms: self.jitter_ms,
            drop_every: self.drop_every,
            duplicate_replies: self.duplicate,
            garbage_every: self.garbage_every,
            binary_every: self.binary_every,
            stray_every: self.stray_every,
            no_pongs: self.no_pongs,
            freeze: false,
            freeze_after_messages: self.freeze_after,
            freeze_after_ms: self.freeze_after_ms,
            stop_reading: self.stop_reading,
            close_after_messages: self.close_after,
            close_code: self.close_code,
            drop_after_messages: self.drop_after,
            reject_handshakes: self.reject_all,
            handshake_status: self.handshake_status,
            retry_after_secs: self.retry_after,
            ping_every_ms: self.ping_every_ms,
            forge_pongs_every_ms: self.forge_pongs_every_ms,
            hang_handshakes: self.hang_handshake,
            drop_once_on: self.drop_once_on.clone(),
            push_frames: self.push,
            push_size: self.push_size,
            abort_after_messages: self.abort_after,
            abort_every_ms: self.abort_every_ms,
            read_delay_us: self.read_delay_us,
        }
    }

    fn options(&self) -> Result<ServerOptions, Box<dyn std::error::Error>> {
        let tls = if self.tls_self_signed {
            Some(TlsOptions::self_signed()?.0)
        } else if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            Some(TlsOptions::from_pem_files(cert, key)?)
        } else {
            None
        };
        Ok(ServerOptions {
            addr: self.addr,
            key: self.key.as_ref().map(|key| key.expose().to_owned()),
            reply_style: self.reply_style,
            faults: self.faults(),
            tls,
            max_frame_size: self.max_frame_size,
            ..ServerOptions::default()
        })
    }
}

/// Runs the server until Ctrl-C, then shuts it down gracefully and prints the counters.
pub(crate) fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let options = args.options()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = Server::start(options).await?;
        eprintln!("ufsock: serving on {}", server.url());
        let counters = server.counters();
        let every = Duration::from_secs(args.stats_every.max(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                r = &mut ctrl_c => {
                    r?;
                    break;
                }
                _ = ticker.tick(), if args.stats_every > 0 => {
                    eprintln!("ufsock: {:?}", counters.snapshot());
                }
            }
        }
        eprintln!("ufsock: shutting down");
        server.shutdown().await;
        eprintln!("ufsock: {:#?}", counters.snapshot());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::{assert_hidden, parse};

    #[test]
    fn serve_args_debug_hides_key() {
        let args: ServeArgs = parse(&["--key", "secret-123", "--addr", "127.0.0.1:0"]);
        assert_hidden("ServeArgs' Debug", &format!("{args:?}"));
        assert_hidden("ServeArgs' pretty Debug", &format!("{args:#?}"));
        assert!(format!("{args:?}").contains("127.0.0.1:0"));
        // The server still gets the key.
        assert_eq!(args.options().unwrap().key.as_deref(), Some("secret-123"));
    }

    #[test]
    fn serve_args_set_the_connection_faults() {
        let args: ServeArgs = parse(&[
            "--no-pongs",
            "--abort-after",
            "500",
            "--abort-every-ms",
            "250",
            "--read-delay-us",
            "100",
        ]);
        let faults = args.faults();
        assert!(faults.no_pongs);
        assert_eq!(faults.abort_after_messages, 500);
        assert_eq!(faults.abort_every_ms, 250);
        assert_eq!(faults.read_delay_us, 100);
        let defaults: ServeArgs = parse(&[]);
        let faults = defaults.faults();
        assert!(!faults.no_pongs);
        assert_eq!(
            (
                faults.abort_after_messages,
                faults.abort_every_ms,
                faults.read_delay_us
            ),
            (0, 0, 0)
        );
    }
}
