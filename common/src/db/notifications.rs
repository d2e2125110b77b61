//! Announcements between processes (`LISTEN`/`NOTIFY`): each API process hears them on
//! one Postgres session of its own, whatever they are about.
//!
//! Writers announce in the statement (or trigger) that makes the change, so Postgres
//! delivers an announcement when the change commits and never for one rolled back. A
//! listener hears only what is committed while it listens: whoever follows a channel must
//! read the state again whenever a listener starts, and distrust what it cached while none
//! was listening.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{DbError, session_config};
use crate::config::DatabaseSettings;

/// What an announcement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An API key was revoked; the payload is its hash in hex.
    KeyRevocations,
    /// The abuse rules or the allow list changed; the payload is their new version.
    AbuseRules,
    /// A block was written, renewed or lifted; the payload is empty.
    AbuseBlocks,
}

impl Channel {
    /// Every channel, in a fixed order: a listener listens on all of them.
    pub const ALL: [Channel; 3] = [Self::KeyRevocations, Self::AbuseRules, Self::AbuseBlocks];

    /// The channel's name in Postgres (also written in the triggers of migrations V8 and
    /// V11).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyRevocations => "verify_api_key_revoked",
            Self::AbuseRules => "verify_abuse_rules",
            Self::AbuseBlocks => "verify_abuse_blocks",
        }
    }
}

/// One announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: Channel,
    pub payload: String,
}

/// The `application_name` of listener sessions, so operators (and tests) can tell them
/// apart in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "verify listener";

/// How often a listener makes sure its session still answers. A session whose server
/// vanished without closing the connection would otherwise look open (and miss every
/// announcement) until TCP gives up, which takes hours.
const LISTENER_HEARTBEAT: Duration = Duration::from_secs(5);

/// A session of its own that hears every announcement committed from now on, on every
/// [`Channel`], by any process. Dropping it closes the session.
pub struct Listener {
    client: tokio_postgres::Client,
    announcements: mpsc::UnboundedReceiver<Notification>,
    heartbeat: tokio::time::Interval,
}

/// Opens a session and listens on every channel. Announcements committed before this
/// returns are not heard: read the state again afterwards.
///
/// # Errors
/// [`DbError`] when Postgres cannot be reached or refuses the session.
pub async fn listen(settings: &DatabaseSettings) -> Result<Listener, DbError> {
    let mut config = session_config(settings)?;
    config.application_name(LISTENER_APPLICATION_NAME);
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, announcements) = mpsc::unbounded_channel();
    // Drives the session and hands its notifications on. It ends with the session (closed
    // by the server, broken, or dropped with the listener), which closes the channel.
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    // Only our channels are listened on; anything else is not ours to read.
                    let Some(channel) = Channel::ALL
                        .into_iter()
                        .find(|channel| channel.as_str() == notification.channel())
                    else {
                        continue;
                    };
                    let heard = Notification {
                        channel,
                        payload: notification.payload().to_owned(),
                    };
                    if sender.send(heard).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the listener's session failed");
                    break;
                }
            }
        }
    });
    let statements: Vec<String> = Channel::ALL
        .iter()
        .map(|channel| format!("LISTEN {}", channel.as_str()))
        .collect();
    client.batch_execute(&statements.join("; ")).await?;
    let mut heartbeat = tokio::time::interval(LISTENER_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.reset();
    Ok(Listener {
        client,
        announcements,
        heartbeat,
    })
}

impl Listener {
    /// The next announcement; `None` once the session is lost (closed, broken, or not
    /// answering its heartbeat within [`LISTENER_HEARTBEAT`]). Announcements are missed
    /// from then on, so every follower must assume anything may have changed.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            tokio::select! {
                heard = self.announcements.recv() => return heard,
                _ = self.heartbeat.tick() => {
                    let answered = tokio::time::timeout(
                        LISTENER_HEARTBEAT,
                        self.client.batch_execute("SELECT 1"),
                    )
                    .await;
                    if !matches!(answered, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }
}
