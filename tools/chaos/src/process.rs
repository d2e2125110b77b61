//! Child processes: running a command to completion, and owning a long-running one that
//! the suite can signal, kill with -9 or wait for.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// True when this process runs as root (`/proc/self` belongs to the effective user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// `program`, run as `user` when we are root (Postgres refuses to run as root).
pub fn as_user_if_root(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command` to completion; fails with its output when it exits non-zero.
///
/// # Errors
/// When the program cannot be started or exits unsuccessfully.
pub async fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let description = describe(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {description}"))?;
    if !output.status.success() {
        bail!(
            "{description} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    let std = command.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A long-running child whose output goes to a log file.
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Starts `command` with its stdout and stderr appended to `log`.
    ///
    /// # Errors
    /// When the log cannot be opened or the program cannot be started.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// The name shown in reports and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, no chance to clean up: a crash, an OOM kill, a pulled plug.
    ///
    /// # Errors
    /// When the process cannot be signalled.
    pub async fn kill_hard(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to `deadline` for the exit.
    ///
    /// # Errors
    /// When the process does not exit in time (it is then killed) or cannot be signalled.
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM").await?;
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.kill_hard().await?;
                bail!("{} did not exit within {deadline:?} of SIGTERM", self.name)
            }
        }
    }

    /// Sends a signal by name (`TERM`, `KILL`, …) with kill(1), which needs no unsafe code.
    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(pid) = self.child.id() else {
            bail!("{} has already exited", self.name);
        };
        run_checked(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string()),
        )
        .await
    }
}
