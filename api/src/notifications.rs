//! Following what other processes announce: one Postgres session per API process hears
//! every announcement (`verify_common::db::notifications`) and hands each to what it is
//! about: key revocations to the key cache (`auth`), changes of the rules, the allow list
//! or the blocks to the abuse controls (`abuse`). When the session is lost, both stop
//! relying on it until a new one listens.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::config::DatabaseSettings;
use verify_common::db::api_keys::Revocation;
use verify_common::db::notifications::{self, Channel};

use crate::abuse::AbuseControls;
use crate::auth::ApiKeys;

/// Waits between attempts to re-open the session: from the first to the last, doubling.
const RELISTEN_FIRST_WAIT: Duration = Duration::from_millis(100);
const RELISTEN_LAST_WAIT: Duration = Duration::from_secs(5);

/// Follows announcements until `shutdown`, opening a new session whenever one is lost,
/// with growing waits while Postgres cannot be reached.
pub(crate) async fn follow(
    database: DatabaseSettings,
    api_keys: Arc<ApiKeys>,
    abuse: Arc<AbuseControls>,
    shutdown: CancellationToken,
) {
    let mut wait = RELISTEN_FIRST_WAIT;
    loop {
        let listener = tokio::select! {
            listener = notifications::listen(&database) => listener,
            () = shutdown.cancelled() => return,
        };
        match listener {
            Ok(mut listener) => {
                api_keys.listening_started();
                if let Err(error) = abuse.listening_started().await {
                    tracing::warn!(%error, "could not read the abuse rules; polling for changes");
                }
                wait = RELISTEN_FIRST_WAIT;
                tracing::debug!("listening for announcements");
                loop {
                    let heard = tokio::select! {
                        heard = listener.next() => heard,
                        () = shutdown.cancelled() => return,
                    };
                    let Some(heard) = heard else { break };
                    match heard.channel {
                        Channel::KeyRevocations => {
                            api_keys.revoked(Revocation::from_payload(&heard.payload));
                        }
                        Channel::AbuseRules => {
                            if let Err(error) = abuse.reload().await {
                                // Heard but not applied: fall back to polling until the
                                // rules can be read, rather than miss the change.
                                abuse.listening_lost();
                                tracing::warn!(%error, "could not reload the abuse rules; polling for changes");
                            }
                        }
                        Channel::AbuseBlocks => {
                            if let Err(error) = abuse.reload_blocks().await {
                                abuse.listening_lost();
                                tracing::warn!(%error, "could not reload the abuse blocks; polling for changes");
                            }
                        }
                    }
                }
                api_keys.listening_lost();
                abuse.listening_lost();
                tracing::warn!(
                    "lost the session that hears announcements; every API key is checked in Postgres and rule changes are polled for until it is back"
                );
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?wait, "cannot listen for announcements");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = (wait * 2).min(RELISTEN_LAST_WAIT);
    }
}
