//! Child processes in their own process group: killed as a group, always reaped, with the
//! tail of their stderr kept for error messages.
//!
//! The backup tools fork helpers of their own, so killing only the direct child could leave
//! a copier holding backup locks or writing into a directory being removed.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Lines of stderr kept for the error message when a tool fails.
const STDERR_TAIL_LINES: usize = 20;

/// The end of a child's life: its exit status and the last lines it wrote to stderr.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr_tail: Vec<String>,
}

impl Finished {
    /// The backup tools' success contract: exit status 0 and `completed OK!` on the last
    /// non-empty stderr line (an exit status alone has been known to lie).
    pub fn completed_ok(&self) -> bool {
        self.status.success()
            && self
                .last_line()
                .is_some_and(|l| l.contains(crate::backup_tool::COMPLETED_OK))
    }

    pub fn last_line(&self) -> Option<&str> {
        self.stderr_tail
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
    }

    /// "exited with status 1: <last stderr line>", for error messages.
    pub fn describe(&self) -> String {
        let how = match (
            self.status.code(),
            std::os::unix::process::ExitStatusExt::signal(&self.status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "ended".to_owned(),
        };
        match self.last_line() {
            Some(line) => format!("{how}: {line}"),
            None => format!("{how} without writing to stderr"),
        }
    }
}

/// A running child that leads its own process group.
pub struct Supervised {
    name: String,
    child: Child,
    pgid: Option<Pid>,
    stderr: Option<JoinHandle<Vec<String>>>,
}

impl Supervised {
    /// Spawns `command` with stdin closed, stderr captured and stdout as the caller set it.
    pub fn spawn(mut command: Command, name: &str) -> Result<Self> {
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let stderr = child.stderr.take().map(|pipe| {
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    debug!(tool = %name, "{line}");
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                tail.into()
            })
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            pgid,
            stderr,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.pgid.map(|p| p.as_raw() as u32)
    }

    /// Waits for the child to exit and its stderr to close.
    pub async fn wait(&mut self) -> Result<Finished> {
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for {}", self.name))?;
        // The group is done with once its leader is reaped; helpers it left are killed too.
        self.signal_group(Signal::SIGKILL);
        self.pgid = None;
        let stderr_tail = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Finished {
            status,
            stderr_tail,
        })
    }

    /// Kills the whole group and reaps the leader.
    pub async fn kill(&mut self) -> Result<Finished> {
        self.signal_group(Signal::SIGKILL);
        self.wait().await
    }

    fn signal_group(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH means the group is already gone, which is the goal.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for Supervised {
    /// A task dropped mid-flight (client gone, shutdown) must not leave the tool running;
    /// tokio's kill-on-drop only reaches the leader, and its orphan reaper collects it.
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }
}

/// Runs a command to completion, killing its group if `cancel` fires first.
pub async fn run(command: Command, name: &str, cancel: &CancellationToken) -> Result<Finished> {
    let mut child = Supervised::spawn(command, name)?;
    tokio::select! {
        finished = child.wait() => finished,
        () = cancel.cancelled() => {
            child.kill().await?;
            bail!("{name} was interrupted by shutdown")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[tokio::test]
    async fn success_needs_exit_zero_and_completed_ok() {
        let cancel = CancellationToken::new();
        let ok = run(
            sh("echo working >&2; echo '[00] completed OK!' >&2"),
            "t",
            &cancel,
        )
        .await
        .unwrap();
        assert!(ok.completed_ok());
        let lying = run(sh("echo 'error: disk full' >&2"), "t", &cancel)
            .await
            .unwrap();
        assert!(!lying.completed_ok());
        assert_eq!(lying.describe(), "exited with status 0: error: disk full");
        let failed = run(sh("echo 'completed OK!' >&2; exit 3"), "t", &cancel)
            .await
            .unwrap();
        assert!(!failed.completed_ok());
        assert!(failed.describe().starts_with("exited with status 3"));
    }

    #[tokio::test]
    async fn kill_takes_the_whole_group() {
        let mut child = Supervised::spawn(sh("sleep 300 & echo $! >&2; wait"), "t").unwrap();
        // Give the shell time to start its grandchild.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let finished = child.kill().await.unwrap();
        let grandchild: i32 = finished.stderr_tail[0].parse().unwrap();
        // Signal 0 probes existence: the grandchild must be gone (reaped by init or dead).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let alive = nix::sys::signal::kill(Pid::from_raw(grandchild), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "grandchild {grandchild} survived");
    }

    #[tokio::test]
    async fn cancellation_kills_and_reports() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = run(sh("sleep 300"), "sleeper", &cancel).await.unwrap_err();
        assert!(err.to_string().contains("sleeper was interrupted"));
    }
}
