//! API-key authentication: decides who is calling from the key a request presents
//! (`X-Api-Key: KEY` or `Authorization: Bearer KEY`, read by the routes' `caller`
//! extractor). This is the one place that turns a key into a [`Caller`].
//!
//! A presented key is hashed and compared with the configured key's hash, then looked up
//! among stored hashes. Positive lookups are cached so a busy client costs no database
//! round trip per request; requests presenting one key at the same moment share a single
//! lookup.
//!
//! A cached key must not outlive its revocation: every API process hears revocations on
//! its listener session (`crate::notifications`) and drops a key the moment its
//! revocation is announced ([`ApiKeys::revoked`]), so a revoked key stops working
//! everywhere within the time a notification takes (milliseconds). The cache is trusted
//! only while that session listens; while it is down every request asks Postgres, and
//! whenever it is lost or re-established the cache is emptied, since announcements made in
//! between were missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use verify_common::db::api_keys::{self, Revocation};
use verify_common::db::{DbError, Pool};
use verify_common::domain::abuse::CONFIGURED_KEY;
use verify_common::domain::api_key::hash_api_key;

use crate::error::ApiError;
use crate::expiring::ExpiringMap;

/// How long a key found in the database is trusted without asking again. Revocations
/// reach the cache at once; this bounds only what a lost announcement could leave.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Bound on cached keys, so random keys cannot grow memory.
const CACHE_CAPACITY: usize = 10_000;

/// An authenticated client, identified by the hash of its API key, and the key's stored
/// id (`None` for the key configured with `VERIFY_API_KEY`, which is not stored).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub key_hash: [u8; 32],
    pub key_id: Option<Uuid>,
}

impl Caller {
    /// The key as the abuse rules name it: its stored id, or `configured`.
    pub(crate) fn key_name(&self) -> String {
        self.key_id
            .map_or_else(|| CONFIGURED_KEY.to_owned(), |id| id.to_string())
    }
}

/// Checks presented API keys.
pub(crate) struct ApiKeys {
    configured: Option<[u8; 32]>,
    pool: Pool,
    /// The id of each recently presented key that is active; only active ones are kept.
    verified: ExpiringMap<[u8; 32], Result<Option<Uuid>, DbError>>,
    /// Whether revocations are being heard, so `verified` may be used.
    listening: AtomicBool,
}

impl ApiKeys {
    pub(crate) fn new(configured: Option<&SecretString>, pool: Pool) -> Self {
        Self {
            configured: configured.map(|key| hash_api_key(key.expose_secret())),
            pool,
            verified: ExpiringMap::new(CACHE_TTL, CACHE_CAPACITY, |active| {
                matches!(active, Ok(Some(_)))
            }),
            listening: AtomicBool::new(false),
        }
    }

    /// Accepts or refuses a presented key; an accepted key identifies the caller.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] for a missing or unknown key; [`ApiError::Unavailable`]
    /// when the key store cannot be read.
    pub(crate) async fn authenticate(&self, presented: Option<String>) -> Result<Caller, ApiError> {
        let key = presented.ok_or(ApiError::Unauthorized(
            "missing API key: send X-Api-Key or Authorization: Bearer",
        ))?;
        let hash = hash_api_key(&key);
        if let Some(configured) = &self.configured
            && bool::from(configured.ct_eq(&hash))
        {
            return Ok(Caller {
                key_hash: hash,
                key_id: None,
            });
        }
        let lookup = || api_keys::find_active_api_key(&self.pool, &hash);
        let active = if self.listening.load(Ordering::Acquire) {
            self.verified.get_or_load(hash, lookup).await
        } else {
            lookup().await
        }?;
        match active {
            Some(id) => Ok(Caller {
                key_hash: hash,
                key_id: Some(id),
            }),
            None => Err(ApiError::Unauthorized("invalid API key")),
        }
    }

    /// The listener session now hears revocations. In this order: a key read before it
    /// listened may have been revoked unheard, and one read from now on is either still
    /// active or its revocation will be heard.
    pub(crate) fn listening_started(&self) {
        self.listening.store(true, Ordering::Release);
        self.verified.clear();
    }

    /// A revocation was announced: the key (or, if the announcement names none, every
    /// key) is looked up again.
    pub(crate) fn revoked(&self, revocation: Revocation) {
        match revocation {
            Revocation::Key(hash) => self.verified.remove(&hash),
            Revocation::Unreadable => self.verified.clear(),
        }
    }

    /// The listener session is lost: revocations may go unheard, so the cache is emptied
    /// and not used until a session listens again.
    pub(crate) fn listening_lost(&self) {
        self.listening.store(false, Ordering::Release);
        self.verified.clear();
    }
}
