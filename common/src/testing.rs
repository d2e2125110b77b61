//! Test support (feature `test-support`): a fresh database per test and unique queue names.
//!
//! Each test gets its own database, created with `CREATE DATABASE … TEMPLATE` from a
//! template database migrated once per schema version, so creating one costs a file copy
//! instead of a migration run. Template creation is guarded by an advisory lock so
//! parallel test processes do not race. Databases are named `test_<unix time>_<random>`;
//! each test process sweeps only `test_` databases more than an hour old, so concurrent
//! runs never drop each other's, and it sweeps beside its tests rather than in front of
//! them. When Postgres or RabbitMQ is missing, tests fail loudly with the
//! address they tried: they never skip.
//!
//! [`exposition`] reads scraped Prometheus metrics, for the API's and workers' tests.

pub mod exposition;

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::{DatabaseSettings, FromFlags, RabbitSettings, redact_url};
use crate::db;

/// Key of the advisory lock serialising template creation across test processes.
const TEMPLATE_LOCK_KEY: i64 = 0x5645_5249_4659_7e57;

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub settings: DatabaseSettings,
}

fn admin_config(base: &DatabaseSettings) -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config = base.url.parse().unwrap_or_else(|e| {
        panic!(
            "DATABASE_URL {:?} is not a Postgres URL: {e}",
            redact_url(&base.url)
        )
    });
    config.dbname("postgres");
    config.connect_timeout(Duration::from_secs(5));
    config
}

async fn admin_client(base: &DatabaseSettings) -> tokio_postgres::Client {
    let (client, connection) = admin_config(base).connect(NoTls).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach Postgres at {} ({e}); start it with scripts/services",
            redact_url(&base.url)
        )
    });
    tokio::spawn(connection);
    client
}

fn with_dbname(base: &DatabaseSettings, name: &str) -> DatabaseSettings {
    let mut url = base.url.clone();
    // Replace the path component (the database name), keeping any query string.
    let (head, query) = match url.find('?') {
        Some(i) => (url[..i].to_owned(), url[i..].to_owned()),
        None => (url.clone(), String::new()),
    };
    let without_db = match head.rfind('/') {
        Some(i) if i > "postgres://".len() => &head[..i],
        _ => head.as_str(),
    };
    url = format!("{without_db}/{name}{query}");
    DatabaseSettings {
        url,
        pool_size: 4,
        pool_timeout_ms: base.pool_timeout_ms,
        // Tests must fail fast when Postgres is missing, not wait for it.
        startup_wait_secs: 0,
    }
}

impl TestDatabase {
    /// Creates a migrated database for one test.
    ///
    /// # Panics
    /// When Postgres cannot be reached or refuses: a test without its database must fail.
    pub async fn create() -> Self {
        let base = DatabaseSettings::from_flags(&[])
            .unwrap_or_else(|e| panic!("the database settings do not parse: {e}"));
        let admin = admin_client(&base).await;
        let template = format!("verify_test_template_{:016x}", db::schema_fingerprint());
        ensure_template(&admin, &base, &template).await;
        start_sweeping_stale_databases(&base);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let name = format!("test_{now}_{}", uuid::Uuid::new_v4().simple());
        create_from_template(&admin, &name, &template).await;
        Self {
            settings: with_dbname(&base, &name),
            name,
        }
    }
}

async fn create_from_template(admin: &tokio_postgres::Client, name: &str, template: &str) {
    // The template may still have a closing connection from its migration run; Postgres
    // refuses to copy a database in use, so retry briefly.
    for _ in 0..50 {
        match admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .await
        {
            Ok(()) => return,
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot create test database {name}: {e}"),
        }
    }
    panic!("template database {template} stayed in use; cannot create {name}");
}

async fn ensure_template(admin: &tokio_postgres::Client, base: &DatabaseSettings, template: &str) {
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK_KEY])
        .await
        .expect("taking the template lock");
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("looking up the template database")
        .is_some();
    if !exists {
        let building = format!("{template}_building");
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
            ))
            .await
            .expect("dropping a half-built template");
        admin
            .batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .expect("creating the template database");
        let settings = with_dbname(base, &building);
        let pool = db::build_pool(&settings).expect("building the template pool");
        db::migrate(&pool)
            .await
            .expect("migrating the template database");
        pool.close();
        drop(pool);
        // Renaming only once migrated means a crash mid-way never leaves a template that
        // looks complete.
        for attempt in 0..50 {
            match admin
                .batch_execute(&format!(
                    "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 49 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot finish the template database: {e}"),
            }
        }
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK_KEY])
        .await
        .expect("releasing the template lock");
}

/// Starts, once per test process, a sweep of the `test_` databases more than an hour old,
/// oldest first, on a thread of its own. Every `DROP DATABASE` waits for a checkpoint, so
/// with hundreds of leftovers a sweep takes minutes; done in front of each test (as it
/// was), it held every test of a process up for all of them. Whatever is left when the
/// process exits is the next process's to drop. Best effort: a sweep that cannot connect
/// fails no test.
fn start_sweeping_stale_databases(base: &DatabaseSettings) {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let config = admin_config(base);
        let sweeper = std::thread::Builder::new()
            .name("stale-test-databases".to_owned())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok((admin, connection)) = config.connect(NoTls).await else {
                        return;
                    };
                    tokio::spawn(connection);
                    sweep_stale_databases(&admin).await;
                });
            });
        // Without a thread there is no sweep this time; the tests go on regardless.
        drop(sweeper);
    });
}

async fn sweep_stale_databases(admin: &tokio_postgres::Client) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // The names start with their creation time, all with the same number of digits, so
    // name order is age order: the oldest go first.
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%' ORDER BY datname",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(1)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(created) <= 3_600 {
            continue;
        }
        // Best effort: another process may be sweeping the same database.
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

/// A queue prefix no other test run uses.
pub fn unique_queue_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Rabbit settings for one test: a unique prefix, and queues that delete themselves
/// when unused so test runs do not litter the broker.
///
/// # Panics
/// When RabbitMQ cannot be reached: a test without its broker must fail.
pub async fn test_rabbit_settings() -> RabbitSettings {
    let prefix = unique_queue_prefix();
    let settings =
        RabbitSettings::from_flags(&["--queue-prefix", &prefix, "--queue-expires-secs", "600"])
            .unwrap_or_else(|e| panic!("the RabbitMQ settings do not parse: {e}"));
    if let Err(e) = crate::queue::connect(&settings.url, "verify-test-probe").await {
        panic!(
            "cannot reach RabbitMQ at {} ({e}); start it with scripts/services",
            redact_url(&settings.url)
        );
    }
    settings
}
