//! A private RabbitMQ node on spare ports, with its own epmd and data directory, so the
//! suite can stop it, restart it and cut its connections without touching the machine's
//! own broker. Its data survives restarts within the run, like a real node's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::process::{Process, run_checked};

/// The node and its supervisor-free Erlang VM.
pub struct PrivateRabbit {
    bin: PathBuf,
    base: PathBuf,
    port: u16,
    epmd_port: u16,
    epmd: Option<Process>,
    node: Option<Process>,
}

impl PrivateRabbit {
    /// Prepares the node's directory and configuration under `base`; nothing runs yet.
    ///
    /// # Errors
    /// When `rabbitmq-server` is missing or the directory cannot be written.
    pub fn prepare(base: &Path, bin: &Path, port: u16, epmd_port: u16) -> anyhow::Result<Self> {
        if !bin.join("rabbitmq-server").exists() {
            bail!(
                "{} has no rabbitmq-server: install it (apt-get install -y rabbitmq-server) or pass --rabbitmq-bin",
                bin.display()
            );
        }
        for dir in ["home", "log", "mnesia"] {
            std::fs::create_dir_all(base.join(dir))?;
        }
        std::fs::write(base.join("enabled_plugins"), "[].\n")?;
        std::fs::write(base.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n"),
        )?;
        Ok(Self {
            bin: bin.to_owned(),
            base: base.to_owned(),
            port,
            epmd_port,
            epmd: None,
            node: None,
        })
    }

    /// The AMQP URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (and, the first time, its epmd) and waits for the AMQP listener.
    ///
    /// # Errors
    /// When the node exits during start-up or does not listen within two minutes.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.epmd.is_none() {
            let mut epmd = Command::new("epmd");
            epmd.args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ]);
            self.epmd = Some(Process::spawn(
                "epmd",
                epmd,
                &self.base.join("log/epmd.log"),
            )?);
        }
        let mut server = Command::new(self.bin.join("rabbitmq-server"));
        self.environment(&mut server);
        let mut node = Process::spawn("rabbitmq", server, &self.base.join("log/stdout.log"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if !node.is_running() {
                bail!(
                    "the private RabbitMQ node exited during start-up (log: {})",
                    self.base.join("log").display()
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the private RabbitMQ node does not listen on {} after 120 s",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.node = Some(node);
        Ok(())
    }

    /// Stops the node gracefully (the Erlang VM shuts down on SIGTERM), as a restart would.
    ///
    /// # Errors
    /// When the node does not stop within a minute.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut node) = self.node.take() {
            node.terminate(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Closes every client connection from the broker's side, as a network blip or an
    /// operator would, while the node stays up.
    ///
    /// # Errors
    /// When rabbitmqctl fails.
    pub async fn close_all_connections(&self) -> anyhow::Result<()> {
        let mut ctl = Command::new(self.bin.join("rabbitmqctl"));
        self.environment(&mut ctl);
        ctl.args(["close_all_connections", "chaos: connections cut"]);
        run_checked(&mut ctl)
            .await
            .context("rabbitmqctl close_all_connections")
    }

    /// Stops the node and its epmd; used on the way out, errors only reported.
    pub async fn shut_down(&mut self) {
        if let Err(error) = self.stop().await {
            eprintln!("warning: {error:#}");
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill_hard().await;
        }
    }

    /// Everything that pins the node to our ports and directory; shared by the server
    /// and rabbitmqctl so the latter finds the node and its cookie.
    fn environment(&self, command: &mut Command) {
        let base = &self.base;
        let port = self.port;
        command
            .env("HOME", base.join("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_NODENAME", "verify-chaos@localhost")
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", (port + 1).to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MIN", (port + 2).to_string())
            .env("RABBITMQ_CTL_DIST_PORT_MAX", (port + 12).to_string())
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", base.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", base.join("rabbit.pid"))
            // Makes the start script exec the VM directly, so our child is the node itself.
            .env("RUNNING_UNDER_SYSTEMD", "true");
    }
}
