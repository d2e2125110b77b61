//! `verify-sink`: a fake SMS provider for developing and testing Verify.
//!
//! The sink speaks enough of two wire formats for Verify's senders to use it in place of a
//! real provider:
//!
//! - Twilio's Messages API (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`), with
//!   Basic auth, Twilio's error codes for missing fields and a Message resource on success;
//! - a generic JSON API (`POST /send` with `{"to", "from", "text"}`).
//!
//! Every accepted message is recorded in memory, where tests read it back, either through
//! [`Sink::messages`] in-process or through `GET /messages?to=…` over HTTP. Latency and
//! failures (a status, a fixed number of initial failures, a random fraction, or a hang)
//! can be injected at start-up and changed at runtime through `PUT /control`, which is how
//! chaos tests open and close provider outage windows. `GET /stats` counts what happened.
//!
//! Sends that ask for delivery receipts (Twilio's `StatusCallback`, the generic API's
//! `callback_url`) get them, after a delay, signed as Twilio signs them; shares of them can
//! be undelivered, duplicated or out of order.
//!
//! It is also a producer's webhook endpoint (`POST /webhooks`), which counts Verify's
//! events by id and type, checks their signatures once given the secret, and can be
//! taken down and brought back through `PUT /webhooks/control`.
//!
//! What it is not: it delivers nothing, checks no number for validity, keeps nothing
//! across restarts, and is not hardened for exposure beyond a test network. Message bodies carry one-time codes, so it never logs them, and
//! logs recipients only masked and only at debug level.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use tokio_util::sync::CancellationToken;
//! use verify_sink::{Sink, SinkSettings};
//!
//! let sink = Sink::bind(SinkSettings::from_flags(&["--addr", "127.0.0.1:0"])?).await?;
//! let messages = sink.messages();
//! let url = sink.base_url();
//! let shutdown = CancellationToken::new();
//! tokio::spawn(sink.run_until_stopped(shutdown.clone()));
//! // ... point the sender at `url`, then:
//! let sent = messages.to("+14155550100");
//! shutdown.cancel();
//! # let _ = (url, sent);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod body;
mod faults;
mod generic;
mod number;
mod provider;
mod receipts;
mod reply;
mod routes;
mod settings;
mod store;
mod twilio;
mod webhooks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::settings::{FailureMode, SettingsError, SinkSettings};
pub use crate::store::{MessageLog, RecordedMessage};

use crate::faults::{FaultSettings, Faults};
use crate::provider::Provider;
use crate::receipts::{ReceiptSettings, Receipts};
use crate::routes::AppState;
use crate::twilio::Credentials;
use crate::webhooks::WebhookInbox;

/// How long shutdown waits for open connections once injected waits have been cut short;
/// only a client stalling mid-request can use it up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound, not yet serving, sink.
///
/// Binding and serving are separate so a caller can learn the port (and hand out
/// [`MessageLog`] handles) before any request can arrive.
#[derive(Debug)]
pub struct Sink {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<AppState>,
    stopping: CancellationToken,
}

impl Sink {
    /// Validates `settings` and binds the listener; port 0 picks a free port.
    pub async fn bind(settings: SinkSettings) -> anyhow::Result<Sink> {
        settings.validate()?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding verify-sink to {}", settings.addr))?;
        let local_addr = listener
            .local_addr()
            .context("reading verify-sink's bound address")?;
        let stopping = CancellationToken::new();
        let provider = Provider::new(
            MessageLog::new(settings.max_messages),
            Faults::new(FaultSettings::from(&settings)),
            stopping.clone(),
        );
        let receipts = Receipts::start(ReceiptSettings::from(&settings), stopping.clone())
            .context("starting verify-sink's receipt sender")?;
        let state = Arc::new(AppState {
            provider: Arc::new(provider),
            twilio: Arc::new(Credentials::from_settings(&settings)),
            receipts: Arc::new(receipts),
            webhooks: Arc::new(WebhookInbox::default()),
        });
        Ok(Sink {
            listener,
            local_addr,
            state,
            stopping,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients should use, e.g. `http://127.0.0.1:41234`.
    ///
    /// A wildcard bind address is replaced by loopback, since `0.0.0.0` is not somewhere
    /// a client can connect to.
    pub fn base_url(&self) -> String {
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.local_addr.port()))
    }

    /// A handle to the recorded messages that stays valid after the sink stops.
    pub fn messages(&self) -> MessageLog {
        self.state.provider.log.clone()
    }

    /// Serves requests until `shutdown` is cancelled, then stops accepting connections,
    /// cuts injected latency and hangs short, and lets in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let routes = routes::all(Arc::clone(&self.state));
        let stopping = self.stopping.clone();
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                stopping.cancel();
            }
        };
        let server = warp::serve(routes)
            .incoming(self.listener)
            .graceful(signal)
            .run();
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        tokio::select! {
            () = server => {}
            () = drain_deadline => {
                tracing::warn!(
                    timeout = ?DRAIN_TIMEOUT,
                    "verify-sink stopped with connections still open"
                );
            }
        }
        Ok(())
    }
}
