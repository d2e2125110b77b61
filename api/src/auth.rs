//! API-key authentication: `X-Api-Key: KEY` or `Authorization: Bearer KEY`.
//!
//! A presented key is hashed and compared with the configured key's hash, then looked up
//! among stored hashes. Positive lookups are cached briefly so a busy client costs no
//! database round trip per request; a revoked key stops working within that time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use verify_common::db::{Pool, api_keys};
use verify_common::domain::api_key::hash_api_key;
use warp::Filter;

use crate::error::ApiError;

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
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl ApiKeys {
    pub fn new(configured: Option<&SecretString>, pool: Pool) -> Self {
        Self {
            configured: configured.map(|key| hash_api_key(key.expose_secret())),
            pool,
            verified: Mutex::new(HashMap::new()),
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
        if self.recently_verified(&hash) {
            return Ok(Caller { key_hash: hash });
        }
        if api_keys::is_active_api_key(&self.pool, &hash).await? {
            self.remember(hash);
            return Ok(Caller { key_hash: hash });
        }
        Err(ApiError::Unauthorized("invalid API key"))
    }

    fn recently_verified(&self, hash: &[u8; 32]) -> bool {
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(hash).is_some_and(|at| at.elapsed() < CACHE_TTL)
    }

    fn remember(&self, hash: [u8; 32]) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, at| at.elapsed() < CACHE_TTL);
        }
        if cache.len() < CACHE_CAPACITY {
            cache.insert(hash, Instant::now());
        }
    }
}

/// Extracts the presented key, if any, from either header. Never rejects: handlers decide.
pub fn presented_key() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("x-api-key")
        .or(warp::any().map(|| None))
        .unify()
        .and(
            warp::header::optional::<String>("authorization")
                .or(warp::any().map(|| None))
                .unify(),
        )
        .map(|api_key: Option<String>, authorization: Option<String>| {
            api_key.map(|k| k.trim().to_owned()).or_else(|| {
                authorization.and_then(|value| {
                    let (scheme, token) = value.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| token.trim().to_owned())
                })
            })
        })
}
