//! The command channel: the program the settings name runs once per alert, without a shell,
//! with the alert in its environment (see `Alert::environment`), stdin from /dev/null and its
//! output captured, capped. It runs in a process group of its own, and the whole group is
//! killed when it outlasts `alerts.command_timeout_secs`, so a stuck script cannot pile up.
//! Its environment is cleared first: acexport's own may hold a database URL or a credential
//! path that an alert script has no business with.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use super::Alert;
use crate::escape::untrusted_capped;
use crate::settings::AlertsSettings;

/// Variables of acexport's environment the command keeps: what a program needs to run and
/// speak the right language, nothing that could hold a secret.
const KEPT_VARIABLES: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"];
/// Most bytes kept of each of the command's output streams; the rest is read and dropped.
const MAX_OUTPUT_BYTES: usize = 4096;
/// Characters of output shown in a log line or report.
const SHOWN_OUTPUT_CHARS: usize = 1000;
/// How long the output is still read after the program ended: something it left running in
/// the background may hold its output open.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {}{}", ended(.status), shown_output(.output))]
    Failed {
        program: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{program} took longer than {} s and was killed{}", .timeout.as_secs(), shown_output(.output))]
    TimedOut {
        program: String,
        timeout: Duration,
        output: String,
    },
    #[error("cannot wait for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// A command that ran to a zero exit.
#[derive(Debug, Clone)]
pub struct Ran {
    pub took: Duration,
    /// Its stdout and stderr, capped, escaped.
    pub output: String,
}

/// The command the settings name.
#[derive(Debug, Clone)]
pub struct AlertCommand {
    argv: Vec<String>,
    timeout: Duration,
}

impl AlertCommand {
    /// The command of `settings`, if one is set.
    pub fn from_settings(settings: &AlertsSettings) -> Option<AlertCommand> {
        (!settings.command.is_empty()).then(|| AlertCommand {
            argv: settings.command.clone(),
            timeout: Duration::from_secs(settings.command_timeout_secs),
        })
    }

    /// The program, escaped, as logs and reports show it.
    pub fn program(&self) -> String {
        untrusted_capped(&self.argv[0], 200).into_owned()
    }

    /// Runs the command for `alert`.
    pub async fn run(&self, alert: &Alert) -> Result<Ran, CommandError> {
        let program = self.program();
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env_clear()
            .envs(
                KEPT_VARIABLES
                    .iter()
                    .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
            )
            .envs(alert.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdout = child.stdout.take().map(read_capped);
        let stderr = child.stderr.take().map(read_capped);
        let waited = tokio::time::timeout(self.timeout, child.wait()).await;
        let status = match waited {
            Ok(status) => status.map_err(|source| CommandError::Wait {
                program: program.clone(),
                source,
            })?,
            Err(_) => {
                if let Some(pid) = child
                    .id()
                    .and_then(|id| rustix::process::Pid::from_raw(id as i32))
                {
                    // The group's id is the program's pid (`process_group(0)`).
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                return Err(CommandError::TimedOut {
                    program,
                    timeout: self.timeout,
                    output: collect_output(stdout, stderr).await,
                });
            }
        };
        let output = collect_output(stdout, stderr).await;
        if status.success() {
            Ok(Ran {
                took: started.elapsed(),
                output,
            })
        } else {
            Err(CommandError::Failed {
                program,
                status,
                output,
            })
        }
    }
}

/// Reads a stream to its end, keeping its first [`MAX_OUTPUT_BYTES`].
fn read_capped(mut stream: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    })
}

/// stdout then stderr, as escaped text; what is not in by [`OUTPUT_GRACE`] is left.
async fn collect_output(
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
) -> String {
    let mut text = String::new();
    for handle in [stdout, stderr].into_iter().flatten() {
        let abort = handle.abort_handle();
        match tokio::time::timeout(OUTPUT_GRACE, handle).await {
            Ok(Ok(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => abort.abort(),
        }
    }
    untrusted_capped(text.trim_end(), SHOWN_OUTPUT_CHARS).into_owned()
}

/// How a program that did not succeed ended, in words.
fn ended(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// `: OUTPUT` after an error, when there was output.
fn shown_output(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}
