//! A private PostgreSQL cluster on a spare port, created for the run and deleted after it,
//! so the suite can stop, restart and cut it without touching the machine's own server.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::process::{as_user_if_root, is_root, run_checked};

/// The database the system under test uses inside the private cluster.
pub const DATABASE: &str = "verify";

/// A throwaway cluster owned by this run.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a fresh cluster under `dir` (initdb, trust authentication, default durability).
    ///
    /// # Errors
    /// When no PostgreSQL binaries are found or initdb fails.
    pub async fn create(dir: &Path, port: u16, bin: Option<PathBuf>) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(bin) => bin,
            None => newest_postgres_bin()?,
        };
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&socket_dir)?;
        // initdb and the server refuse to run as root: hand the directory to `postgres`.
        if is_root() {
            run_checked(Command::new("chown").arg("-R").arg("postgres:").arg(dir)).await?;
        }
        let initdb = bin.join("initdb");
        run_checked(
            as_user_if_root("postgres", &initdb)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]),
        )
        .await
        .context("initdb")?;
        Ok(Self {
            bin,
            data,
            socket_dir,
            log: dir.join("postgres.log"),
            port,
        })
    }

    /// The URL of `database` in this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// When pg_ctl reports a failure (the log file has the details).
    pub async fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.socket_dir.display()
        );
        run_checked(
            as_user_if_root("postgres", &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &options, "start"]),
        )
        .await
        .with_context(|| format!("starting Postgres (log: {})", self.log.display()))
    }

    /// Stops the server the way an operator's restart does: sessions are ended, work in
    /// progress is rolled back, committed data stays.
    ///
    /// # Errors
    /// When pg_ctl reports a failure.
    pub async fn stop(&self) -> anyhow::Result<()> {
        run_checked(
            as_user_if_root("postgres", &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]),
        )
        .await
        .context("stopping Postgres")
    }

    /// Ends every session of the system under test, as a failover or a DBA would.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn terminate_connections(&self) -> anyhow::Result<u64> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&DATABASE],
            )
            .await?;
        drop(client);
        let _ = driver.await;
        let terminated: i64 = row.get(0);
        Ok(u64::try_from(terminated).unwrap_or(0))
    }

    /// The whole numbers in the one row `sql` returns, read from the system under test's
    /// database: for audits of what only Postgres knows (webhook deliveries).
    ///
    /// # Errors
    /// When the server cannot be reached or the query fails.
    pub async fn counts(&self, sql: &str) -> anyhow::Result<Vec<i64>> {
        let (client, connection) =
            tokio_postgres::connect(&self.url(DATABASE), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let row = client.query_one(sql, &[]).await?;
        drop(client);
        let _ = driver.await;
        (0..row.len())
            .map(|at| Ok(row.try_get::<_, i64>(at)?))
            .collect()
    }

    /// Stops the server if it runs; used on the way out, errors only reported.
    pub async fn shut_down(&self) {
        if self.data.join("postmaster.pid").exists()
            && let Err(error) = self.stop().await
        {
            eprintln!("warning: {error:#}");
        }
    }
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` that has pg_ctl.
fn newest_postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL or pass --pg-bin")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL server binaries under /usr/lib/postgresql; pass --pg-bin"),
    }
}
