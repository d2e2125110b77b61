//! `verify-api keys …`: create, list and revoke stored API keys.

use anyhow::Context;
use uuid::Uuid;
use verify_common::config::DatabaseSettings;
use verify_common::db::{self, api_keys};
use verify_common::domain::api_key::generate_api_key;

/// Creates a key and returns it; only its hash is stored, so it cannot be shown again.
///
/// # Errors
/// When the name is invalid or Postgres fails.
pub async fn create_key(database: &DatabaseSettings, name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    anyhow::ensure!(
        (1..=100).contains(&name.chars().count()),
        "--name must be 1 to 100 characters"
    );
    let pool = connect(database).await?;
    let (key, hash) = generate_api_key()?;
    api_keys::insert_api_key(&pool, Uuid::now_v7(), name, &hash).await?;
    Ok(key)
}

/// Lists keys as printable lines.
///
/// # Errors
/// When Postgres fails.
pub async fn list_keys(database: &DatabaseSettings) -> anyhow::Result<Vec<String>> {
    let pool = connect(database).await?;
    Ok(api_keys::list_api_keys(&pool)
        .await?
        .into_iter()
        .map(|key| {
            let state = key
                .revoked_at
                .map_or_else(|| "active".to_owned(), |at| format!("revoked {at}"));
            format!(
                "{}  {:<30}  created {}  {state}",
                key.id, key.name, key.created_at
            )
        })
        .collect())
}

/// Revokes a key by id.
///
/// # Errors
/// When no active key has that id, or Postgres fails.
pub async fn revoke_key(database: &DatabaseSettings, id: Uuid) -> anyhow::Result<()> {
    let pool = connect(database).await?;
    anyhow::ensure!(
        api_keys::revoke_api_key(&pool, id).await?,
        "no active key has id {id}"
    );
    Ok(())
}

async fn connect(database: &DatabaseSettings) -> anyhow::Result<db::Pool> {
    let pool = db::connect_pool(database)
        .await
        .context("connecting to Postgres")?;
    db::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}
