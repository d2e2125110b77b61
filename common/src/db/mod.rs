//! Postgres access: the only module that contains SQL.
//!
//! [`connect_pool`] creates the database when missing, builds a bounded pool and takes one
//! connection so a bad URL fails at start-up. [`migrate`] applies the embedded migrations
//! under an advisory lock, so several API replicas can start together. One sub-module per
//! table holds its queries; every state change is a guarded `UPDATE` so concurrent API
//! replicas and workers cannot step on each other. Rows are read by column name, from one
//! column list per table (`rows`). `timeline` reads across tables: one query assembles a
//! verification's life from the rows of all of them.

pub mod abuse;
pub mod api_keys;
pub mod deliveries;
pub mod idempotency;
pub mod notifications;
mod rows;
pub mod starts;
pub mod stats;
pub mod templates;
pub mod timeline;
pub mod verifications;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime, Timeouts};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::DatabaseSettings;

pub use deadpool_postgres::Pool;

/// What can go wrong talking to Postgres.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// Postgres cannot be reached or the pool is exhausted; the caller should retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A guarded `UPDATE` matched no row: the row was not in a state that allows the move.
    #[error("the row is not in a state that allows this change")]
    TransitionRejected,
    /// A stored value could not be read back into its domain type.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database query failed: {}", describe(.0))]
    /// Shared, so one failed statement can be reported to every request it served.
    Query(#[source] Arc<tokio_postgres::Error>),
    /// The database URL or a migration is wrong.
    #[error("database set-up failed: {0}")]
    Setup(String),
}

/// The server's own message when there is one (tokio-postgres' `Display` says only
/// "db error" and keeps the detail in its source).
fn describe(error: &tokio_postgres::Error) -> String {
    error.as_db_error().map_or_else(
        || error.to_string(),
        |db| format!("{}: {}", db.code().code(), db.message()),
    )
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> Self {
        // Errors without a server-side code are connection-level (refused, reset, closed):
        // transient. So are the codes Postgres sends while shutting down or starting up.
        let transient_codes = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ];
        match error.code() {
            None => Self::Unavailable(error.to_string()),
            Some(code) if transient_codes.contains(code) => Self::Unavailable(error.to_string()),
            Some(_) => Self::Query(Arc::new(error)),
        }
    }
}

impl From<PoolError> for DbError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Creates the database named in `settings.url` if it does not exist yet.
///
/// # Errors
/// [`DbError::Setup`] for a malformed URL; other errors when the server refuses.
pub async fn ensure_database_exists(settings: &DatabaseSettings) -> Result<(), DbError> {
    let config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| DbError::Setup(format!("DATABASE_URL is not a valid Postgres URL: {e}")))?;
    let name = config
        .get_dbname()
        .ok_or_else(|| DbError::Setup("DATABASE_URL names no database".to_owned()))?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    admin.connect_timeout(settings.pool_timeout().max(Duration::from_secs(1)));
    let (client, connection) = admin.connect(NoTls).await?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created the database"),
            // Another process created it between our check and our CREATE; concurrent
            // creations can also collide on pg_database's unique index.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Builds a bounded pool for `settings.url` (creating the database if needed) and checks
/// that one connection can be made.
///
/// # Errors
/// [`DbError`] when the URL is malformed or the server cannot be reached.
pub async fn connect_pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    ensure_database_exists(settings).await?;
    let pool = build_pool(settings)?;
    drop(pool.get().await?);
    Ok(pool)
}

/// Builds the pool without connecting (connections are made on first use).
///
/// # Errors
/// [`DbError::Setup`] for a malformed URL.
pub fn build_pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let config = session_config(settings)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A broken connection is detected by the query that uses it and discarded;
            // checking every connection on checkout would cost a round trip per request.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Bounded waits everywhere: an exhausted pool or a dead server becomes a prompt 503,
    // never a hung request.
    let timeout = Some(settings.pool_timeout());
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .timeouts(Timeouts {
            wait: timeout,
            create: timeout,
            recycle: timeout,
        })
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Setup(e.to_string()))
}

/// How every session of ours connects: `settings.url`, the pool's connect timeout and
/// [`SESSION_OPTIONS`].
///
/// # Errors
/// [`DbError::Setup`] for a malformed URL.
fn session_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| DbError::Setup(format!("DATABASE_URL is not a valid Postgres URL: {e}")))?;
    config.connect_timeout(settings.pool_timeout());
    add_session_options(&mut config);
    Ok(config)
}

/// Settings of every pooled session, passed when it starts (no extra round trip).
///
/// Every statement is planned for the values it runs with. Left alone, Postgres switches a
/// prepared statement to one generic plan after five runs and keeps it for the session.
/// Ours are prepared when a fresh database's tables are nearly empty, where a sequential
/// scan is the cheapest plan, and that scan then stays while the tables grow: nothing
/// replaces it unless an ANALYZE happens to invalidate it, and where autovacuum is off
/// none does. Measured with `scripts/bench` (scenario c, 1,000 verifications/s), the kept
/// scans took Postgres from 0.55 to a full core; planning each run costs far less.
const SESSION_OPTIONS: &str = "-c plan_cache_mode=force_custom_plan";

/// Adds [`SESSION_OPTIONS`] before any `options` the URL gives, so an operator's own
/// settings (which come later) still win.
fn add_session_options(config: &mut tokio_postgres::Config) {
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{SESSION_OPTIONS} {own}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config.options(&options);
}

/// The schema, in order. Embedded so binaries need no files at run time.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "api_keys",
        include_str!("../../../migrations/V1__api_keys.sql"),
    ),
    (
        2,
        "templates",
        include_str!("../../../migrations/V2__templates.sql"),
    ),
    (
        3,
        "verifications",
        include_str!("../../../migrations/V3__verifications.sql"),
    ),
    (
        4,
        "sms_deliveries",
        include_str!("../../../migrations/V4__sms_deliveries.sql"),
    ),
    (
        5,
        "idempotency_keys",
        include_str!("../../../migrations/V5__idempotency_keys.sql"),
    ),
    (
        6,
        "start_verifications",
        include_str!("../../../migrations/V6__start_verifications.sql"),
    ),
    (
        7,
        "one_send_path",
        include_str!("../../../migrations/V7__one_send_path.sql"),
    ),
    (
        8,
        "abuse_controls",
        include_str!("../../../migrations/V8__abuse_controls.sql"),
    ),
    (
        9,
        "start_signals",
        include_str!("../../../migrations/V9__start_signals.sql"),
    ),
    (
        10,
        "velocity_limits",
        include_str!("../../../migrations/V10__velocity_limits.sql"),
    ),
    (
        11,
        "blocks",
        include_str!("../../../migrations/V11__blocks.sql"),
    ),
    (
        12,
        "lighter_start",
        include_str!("../../../migrations/V12__lighter_start.sql"),
    ),
    (
        13,
        "velocity_generic_plans",
        include_str!("../../../migrations/V13__velocity_generic_plans.sql"),
    ),
    (
        14,
        "delivery_receipts",
        include_str!("../../../migrations/V14__delivery_receipts.sql"),
    ),
    (
        15,
        "webhooks",
        include_str!("../../../migrations/V15__webhooks.sql"),
    ),
    (
        16,
        "counter_shards",
        include_str!("../../../migrations/V16__counter_shards.sql"),
    ),
    (
        17,
        "announce_revocations",
        include_str!("../../../migrations/V17__announce_revocations.sql"),
    ),
    (
        18,
        "stats_rollups",
        include_str!("../../../migrations/V18__stats_rollups.sql"),
    ),
    (
        19,
        "expiry_sweeps",
        include_str!("../../../migrations/V19__expiry_sweeps.sql"),
    ),
    (
        20,
        "verification_checks",
        include_str!("../../../migrations/V20__verification_checks.sql"),
    ),
    (
        21,
        "send_traces",
        include_str!("../../../migrations/V21__send_traces.sql"),
    ),
    (
        22,
        "stats_folding",
        include_str!("../../../migrations/V22__stats_folding.sql"),
    ),
    (
        23,
        "webhook_relay_transaction",
        include_str!("../../../migrations/V23__webhook_relay_transaction.sql"),
    ),
    (
        24,
        "stats_periods_without_time_zones",
        include_str!("../../../migrations/V24__stats_periods_without_time_zones.sql"),
    ),
];

/// Arbitrary constant identifying Verify's migration lock among advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x5645_5249_4659_0001;

/// Applies every migration not yet applied, each in its own transaction, holding an
/// advisory lock so concurrent starters apply each migration once.
///
/// First it checks that every migration this database has applied is still the file it
/// applied: each applied migration's SHA-256 is recorded, and a file edited since refuses
/// start-up, naming the migration, before anything is applied. A database migrated before
/// checksums were kept has them recorded on the first run, from the files as they are then.
///
/// # Errors
/// [`DbError::Setup`] naming a migration that was edited after it was applied, or one that
/// failed (nothing of that migration is kept); other [`DbError`]s when Postgres fails.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, DbError> {
    migrate_with(pool, MIGRATIONS).await
}

/// [`migrate`] with a given list of migrations.
async fn migrate_with(pool: &Pool, migrations: &[(i32, &str, &str)]) -> Result<Vec<i32>, DbError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = apply_pending_migrations(&mut client, migrations).await;
    // Unlock even after a failure; if the connection itself broke, the lock went with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    result
}

/// The checksum recorded for a migration: the SHA-256 of its text, in hex.
fn checksum(sql: &str) -> String {
    format!("{:x}", Sha256::digest(sql.as_bytes()))
}

async fn apply_pending_migrations(
    client: &mut deadpool_postgres::Client,
    migrations: &[(i32, &str, &str)],
) -> Result<Vec<i32>, DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 checksum text
             );
             -- Tables made before checksums were recorded.
             ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text;",
        )
        .await?;
    let mut applied = HashMap::new();
    for row in client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
    {
        let version: i32 = rows::named(&row, "version")?;
        let recorded: Option<String> = rows::named(&row, "checksum")?;
        applied.insert(version, recorded);
    }
    for &(version, name, sql) in migrations {
        let Some(recorded) = applied.get(&version) else {
            continue;
        };
        let current = checksum(sql);
        match recorded {
            Some(recorded) if *recorded == current => {}
            Some(recorded) => {
                return Err(DbError::Setup(format!(
                    "migration V{version}__{name} was edited after this database applied it \
                     (checksum {recorded} when applied, {current} now): restore the file as \
                     it was and put the change in a new migration"
                )));
            }
            None => {
                client
                    .execute(
                        "UPDATE schema_migrations SET checksum = $2
                         WHERE version = $1 AND checksum IS NULL",
                        &[&version, &current],
                    )
                    .await?;
                tracing::info!(
                    version,
                    name,
                    "recorded the checksum of a migration applied before checksums were kept"
                );
            }
        }
    }
    let mut newly_applied = Vec::new();
    for &(version, name, sql) in migrations {
        if applied.contains_key(&version) {
            continue;
        }
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(sql)
            .await
            .map_err(|e| DbError::Setup(format!("migration V{version}__{name} failed: {e}")))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&version, &name, &checksum(sql)],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(version, name, "applied migration");
        newly_applied.push(version);
    }
    Ok(newly_applied)
}

/// Answers whether Postgres is reachable, for readiness probes.
///
/// # Errors
/// [`DbError::Unavailable`] when it is not.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// Converts a `Duration` to the seconds Postgres' `make_interval(secs => …)` takes.
fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A fingerprint of the embedded schema: changes whenever a migration is added or edited,
/// so cached copies of the schema (test templates) are rebuilt.
pub fn schema_fingerprint() -> u64 {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (version, name, sql) in MIGRATIONS {
        for byte in version
            .to_be_bytes()
            .iter()
            .chain(name.as_bytes())
            .chain(sql.as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;

    const FIRST: (i32, &str, &str) = (1, "first", "CREATE TABLE first (id integer);");
    const SECOND: (i32, &str, &str) = (2, "second", "CREATE TABLE second (id integer);");

    /// A pool on an empty database of its own (no migration applied).
    async fn empty_database() -> Pool {
        let database = TestDatabase::create().await;
        let pool = build_pool(&database.settings).unwrap();
        pool.get()
            .await
            .unwrap()
            .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
            .await
            .unwrap();
        pool
    }

    async fn recorded_checksums(pool: &Pool) -> Vec<Option<String>> {
        pool.get()
            .await
            .unwrap()
            .query(
                "SELECT checksum FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[tokio::test]
    async fn a_migration_edited_after_it_was_applied_refuses_start_up_naming_it() {
        let pool = empty_database().await;
        migrate_with(&pool, &[FIRST]).await.unwrap();
        let edited = (1, "first", "CREATE TABLE first (id bigint);");

        let refused = migrate_with(&pool, &[edited, SECOND]).await;

        let Err(DbError::Setup(message)) = refused else {
            panic!("an edited migration was accepted: {refused:?}");
        };
        assert!(message.contains("V1__first was edited"), "{message}");
        assert_eq!(
            recorded_checksums(&pool).await.len(),
            1,
            "nothing new was applied"
        );
    }

    #[tokio::test]
    async fn the_same_migrations_apply_once_and_then_pass_their_check() {
        let pool = empty_database().await;

        let first_run = migrate_with(&pool, &[FIRST, SECOND]).await.unwrap();
        let second_run = migrate_with(&pool, &[FIRST, SECOND]).await.unwrap();

        assert_eq!(first_run, [1, 2]);
        assert!(second_run.is_empty());
        assert_eq!(
            recorded_checksums(&pool).await,
            [Some(checksum(FIRST.2)), Some(checksum(SECOND.2))]
        );
    }

    #[tokio::test]
    async fn a_database_migrated_before_checksums_were_kept_has_them_recorded_on_the_first_run() {
        let pool = empty_database().await;
        pool.get()
            .await
            .unwrap()
            .batch_execute(&format!(
                "CREATE TABLE schema_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );
                 {}
                 INSERT INTO schema_migrations (version, name) VALUES (1, 'first');",
                FIRST.2
            ))
            .await
            .unwrap();

        let applied = migrate_with(&pool, &[FIRST, SECOND]).await.unwrap();

        assert_eq!(applied, [2]);
        assert_eq!(
            recorded_checksums(&pool).await,
            [Some(checksum(FIRST.2)), Some(checksum(SECOND.2))]
        );
        let edited = (1, "first", "CREATE TABLE first (id bigint);");
        assert!(migrate_with(&pool, &[edited, SECOND]).await.is_err());
    }

    fn options_once_added(url: &str) -> Option<String> {
        let mut config: tokio_postgres::Config = url.parse().expect("a valid URL");
        add_session_options(&mut config);
        config.get_options().map(str::to_owned)
    }

    #[test]
    fn every_session_plans_each_statement_for_its_own_values() {
        assert_eq!(
            options_once_added("postgres://verify@localhost/verify").as_deref(),
            Some("-c plan_cache_mode=force_custom_plan")
        );
    }

    #[test]
    fn options_in_the_url_are_kept_and_come_last_so_they_win() {
        assert_eq!(
            options_once_added(
                "postgres://verify@localhost/verify?options=-c%20plan_cache_mode%3Dauto"
            )
            .as_deref(),
            Some("-c plan_cache_mode=force_custom_plan -c plan_cache_mode=auto")
        );
    }
}
