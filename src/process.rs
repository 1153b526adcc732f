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

/// How long the rest of a group may take to die after its leader was reaped and the group
/// SIGKILLed; members reparented to init are reaped by it.
const GROUP_EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
const GROUP_EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Lines of stderr kept for the error message when a tool fails.
const STDERR_TAIL_LINES: usize = 20;

/// The end of a child's life: its exit status and the last lines it wrote to stderr.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stderr_tail: Vec<String>,
}

impl Finished {
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
    pub fn spawn(command: Command, name: &str) -> Result<Self> {
        Self::start(command, name, Stdio::null())
    }

    /// Spawns `command` like [`Supervised::spawn`], with a pipe to its stdin
    /// ([`Supervised::take_stdin`]).
    pub fn spawn_with_stdin(command: Command, name: &str) -> Result<Self> {
        Self::start(command, name, Stdio::piped())
    }

    fn start(mut command: Command, name: &str, stdin: Stdio) -> Result<Self> {
        command
            .process_group(0)
            .stdin(stdin)
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

    /// The child's stdout, when the caller set it to a pipe: for the caller to read.
    pub fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stdin, when spawned with [`Supervised::spawn_with_stdin`].
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_status(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Asks the whole group to stop (SIGTERM); [`Supervised::wait`] reaps it.
    pub fn terminate(&self) {
        self.signal_group(Signal::SIGTERM);
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
        // The group is done with once its leader is reaped; helpers it left are killed too,
        // and given a moment to be gone (a helper may still hold locks or write files).
        self.signal_group(Signal::SIGKILL);
        if let Some(pgid) = self.pgid.take() {
            let deadline = tokio::time::Instant::now() + GROUP_EXIT_TIMEOUT;
            while killpg(pgid, None).is_ok() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(GROUP_EXIT_POLL).await;
            }
        }
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
    async fn the_end_is_described_with_the_last_stderr_line() {
        let cancel = CancellationToken::new();
        let ok = run(sh("echo working >&2; echo 'all done' >&2"), "t", &cancel)
            .await
            .unwrap();
        assert!(ok.status.success());
        assert_eq!(ok.last_line(), Some("all done"));
        let failed = run(sh("echo 'error: disk full' >&2; exit 3"), "t", &cancel)
            .await
            .unwrap();
        assert_eq!(failed.describe(), "exited with status 3: error: disk full");
        let silent = run(sh("kill -9 $$"), "t", &cancel).await.unwrap();
        assert_eq!(
            silent.describe(),
            "was killed by signal 9 without writing to stderr"
        );
    }

    #[tokio::test]
    async fn kill_takes_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        // The shell says when its grandchild runs, by renaming a file into place.
        let script = format!(
            "sleep 300 & echo $! > {0}.tmp && mv {0}.tmp {0}; wait",
            pid_file.display()
        );
        let mut child = Supervised::spawn(sh(&script), "t").unwrap();
        let grandchild: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                break text.trim().parse().unwrap();
            }
            tokio::task::yield_now().await;
        };
        child.kill().await.unwrap();
        // SIGKILL is delivered asynchronously: the grandchild must be dead (or a zombie
        // awaiting init) soon after.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let state =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let code = state.rsplit(") ").next().unwrap_or("").chars().next();
            if matches!(code, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived: {state}"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn cancellation_kills_and_reports() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = run(sh("sleep 300"), "sleeper", &cancel).await.unwrap_err();
        assert!(err.to_string().contains("sleeper was interrupted"));
    }
}
