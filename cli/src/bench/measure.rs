//! What every bench run shares, whichever client it drives: where it goes, its settings and
//! counters, the CPU readings around its timed part, its progress bar and its time limit.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::future::{select, Either};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use usageflow_socket_server::ServerThread;
use usageflow_socket_tokio::{ClientOptions, ClientOptionsBuilder, Config, Stats};

use crate::bench::report::Errors;
use crate::bench::workload::Workload;
use crate::procstat;
use crate::shared::ProxyArgs;

/// Where the runs go.
pub(crate) struct Target {
    /// The URL as given, credentials included: print it through
    /// [`redact_url`](usageflow_socket_core::redact_url).
    pub(crate) url: String,
    pub(crate) key: String,
    /// The embedded server, when there is no --url.
    pub(crate) server: Option<ServerThread>,
    /// How the pooled client reaches it (the bare clients always connect directly).
    pub(crate) proxy: ProxyArgs,
}

impl Target {
    /// The pooled client's options for `config`, with the target's proxy.
    pub(crate) fn client_options(&self, config: Config) -> ClientOptions {
        self.proxy.client_options(config)
    }

    /// The client options' builder for the pooled client, for runs that add more (a spool).
    pub(crate) fn client_options_builder(&self, config: Config) -> ClientOptionsBuilder {
        self.proxy.client_options_builder(config)
    }

    /// Refuses a bare client's run when the pooled client would go through a proxy: the bare
    /// clients connect directly, and a comparison across a proxy would measure the proxy.
    pub(crate) fn check_direct(&self) -> Result<(), String> {
        let config = Config::builder(&self.url, &self.key)
            .build()
            .map_err(|e| e.to_string())?;
        match self.client_options(config).resolve_proxy_redacted() {
            Ok(None) => Ok(()),
            Ok(Some(proxy)) => Err(format!(
                "the bare clients (raw, raw-send, minimal, --compare, --sweep) connect directly and cannot go \
                 through the proxy {proxy}; use --no-proxy-env or measure the pooled client alone"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What every run shares: its settings, the counters its tasks bump, its limit, the server's
/// count at its start.
pub(crate) struct RunCtx<'a> {
    pub(crate) target: &'a Target,
    pub(crate) label: &'static str,
    pub(crate) workload: Workload,
    /// Connections in the pool (and raw connections).
    pub(crate) pool: u16,
    /// Operations in flight.
    pub(crate) concurrency: u64,
    /// Operations in total.
    pub(crate) requests: u64,
    /// Request timeout of the pooled client.
    pub(crate) request_timeout: Duration,
    /// No progress bar (`--json`).
    pub(crate) quiet: bool,
    pub(crate) done: Arc<AtomicU64>,
    pub(crate) errors: Arc<Errors>,
    pub(crate) limit: Duration,
    pub(crate) server_base: Option<u64>,
    /// Send mode: sends wait for room (`send_when_room`) instead of being refused.
    pub(crate) wait_for_room: bool,
    /// Send mode: every message at least once.
    pub(crate) at_least_once: bool,
    /// The pooled client keeps its messages in a spool under this directory (a fresh
    /// subdirectory per run).
    pub(crate) spool: Option<&'a std::path::Path>,
    /// With a spool: whether sends write their records through before they return.
    pub(crate) spool_write_through: bool,
    /// With a spool: its sync policy.
    pub(crate) spool_sync: usageflow_socket_client::spool::SyncPolicy,
}

impl RunCtx<'_> {
    /// Starts the run's progress bar (following [`done`](Self::done)).
    pub(crate) fn progress(&self) -> Progress {
        Progress::start(self.quiet, self.requests, self.label, &self.done)
    }
}

/// What the timed part of a run saw.
pub(crate) struct Measured {
    pub(crate) before: Usage,
    pub(crate) after: Usage,
    pub(crate) elapsed: Duration,
    /// The pooled client's counters at the end.
    pub(crate) stats: Option<Stats>,
}

/// Name prefix of the embedded server's threads (see [`ServerThread::spawn`]).
const SERVER_THREADS: &str = "ufsock-server";

/// CPU readings at one moment.
#[derive(Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) process: Duration,
    pub(crate) server: Duration,
}

impl Usage {
    pub(crate) fn now() -> Usage {
        Usage {
            process: procstat::process_cpu().unwrap_or_default(),
            server: procstat::threads_cpu(SERVER_THREADS)
                .map(|(d, _)| d)
                .unwrap_or_default(),
        }
    }
}

/// A progress bar on stderr, hidden with --json or when stderr is not a terminal. Its
/// position follows `done`, polled every 100 ms by a thread of its own, so it works under
/// either runtime and the hot path only bumps an atomic.
pub(crate) struct Progress {
    bar: ProgressBar,
    /// Dropping the sender stops the ticker thread.
    ticker: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Progress {
    fn start(quiet: bool, total: u64, label: &str, done: &Arc<AtomicU64>) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "  {msg:<9} [{bar:40.cyan/blue}] {pos:>9}/{len:9} {per_sec:>12} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let bar = bar.clone();
            let done = Arc::clone(done);
            std::thread::spawn(move || loop {
                bar.set_position(done.load(Relaxed));
                if stopped.recv_timeout(Duration::from_millis(100)) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
            })
        };
        Progress {
            bar,
            ticker: Some((stop, thread)),
        }
    }

    pub(crate) fn finish(self) {
        if let Some((stop, thread)) = self.ticker {
            drop(stop);
            let _ = thread.join();
        }
        self.bar.finish_and_clear();
    }
}

/// Runs `work` until it ends or `limit` (a sleep of the run's runtime) does; false when the
/// limit came first.
pub(crate) async fn within(limit: impl Future<Output = ()>, work: impl Future<Output = ()>) -> bool {
    matches!(select(pin!(work), pin!(limit)).await, Either::Left(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bare clients connect directly: a run through a proxy refuses them, naming the
    /// proxy without its credentials.
    #[test]
    fn bare_clients_refuse_a_proxy() {
        let target = |proxy: ProxyArgs| Target {
            url: "ws://127.0.0.1:9/ws".into(),
            key: "k".into(),
            server: None,
            proxy,
        };
        let direct = ProxyArgs {
            no_proxy_env: true,
            ..Default::default()
        };
        assert_eq!(target(direct).check_direct(), Ok(()));
        let through = ProxyArgs {
            proxy: Some("http://u:secret@proxy:3128".parse().unwrap()),
            no_proxy_env: false,
        };
        let err = target(through).check_direct().unwrap_err();
        assert!(
            err.contains("cannot go through the proxy http://***@proxy:3128"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }
}
