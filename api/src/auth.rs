//! API-key authentication: decides who is calling from the key a request presents
//! (`X-Api-Key: KEY` or `Authorization: Bearer KEY`, read by the routes' `caller`
//! extractor). This is the one place that turns a key into a [`Caller`].
//!
//! A presented key is hashed and compared with the configured key's hash, then looked up
//! among stored hashes. Positive lookups are cached briefly so a busy client costs no
//! database round trip per request; a revoked key stops working within that time. Requests
//! presenting one key at the same moment share a single lookup.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use verify_common::db::{DbError, Pool, api_keys};
use verify_common::domain::api_key::hash_api_key;

use crate::error::ApiError;
use crate::expiring::ExpiringMap;

/// How long a key found in the database is trusted without asking again.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Bound on cached keys, so random keys cannot grow memory.
const CACHE_CAPACITY: usize = 10_000;

/// An authenticated client, identified by the hash of its API key.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub key_hash: [u8; 32],
}

/// Checks presented API keys.
pub struct ApiKeys {
    configured: Option<[u8; 32]>,
    pool: Pool,
    /// Whether each recently presented key is active; only active ones are kept.
    verified: ExpiringMap<[u8; 32], Result<bool, DbError>>,
}

impl ApiKeys {
    pub fn new(configured: Option<&SecretString>, pool: Pool) -> Self {
        Self {
            configured: configured.map(|key| hash_api_key(key.expose_secret())),
            pool,
            verified: ExpiringMap::new(CACHE_TTL, CACHE_CAPACITY, |active| {
                matches!(active, Ok(true))
            }),
        }
    }

    /// Accepts or refuses a presented key; an accepted key identifies the caller.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] for a missing or unknown key; [`ApiError::Unavailable`]
    /// when the key store cannot be read.
    pub async fn authenticate(&self, presented: Option<String>) -> Result<Caller, ApiError> {
        let key = presented.ok_or(ApiError::Unauthorized(
            "missing API key: send X-Api-Key or Authorization: Bearer",
        ))?;
        let hash = hash_api_key(&key);
        if let Some(configured) = &self.configured
            && bool::from(configured.ct_eq(&hash))
        {
            return Ok(Caller { key_hash: hash });
        }
        let active = self
            .verified
            .get_or_load(hash, || api_keys::is_active_api_key(&self.pool, &hash))
            .await?;
        if active {
            Ok(Caller { key_hash: hash })
        } else {
            Err(ApiError::Unauthorized("invalid API key"))
        }
    }
}
