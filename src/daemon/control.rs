//! The control socket: while the daemon runs, every command of every user comes here, and is
//! authorized per request from the peer's credentials (`SO_PEERCRED`), as PostgreSQL's peer
//! authentication does. The socket itself is open to all (0666): who may do what is decided
//! by the roles, not by file modes.
//!
//! The protocol, version 1, one request per connection, line-delimited JSON:
//! - the client sends one line: `{"v":1,"terminal":false,"command":{...}}` (at most
//!   [`MAX_REQUEST_BYTES`], newline included), where `command` is the parsed command line;
//! - the daemon answers with lines `{"out":"text"}` (stdout) and `{"err":"text"}` (stderr),
//!   then a last `{"exit":N}` with the exit status, and closes.
//!
//! A request that cannot be read (truncated, oversized, not JSON, another version) gets an
//! `err` line and `exit` 76 (`EX_PROTOCOL`); the daemon carries on serving. The client keeps
//! its side open for reading until the `exit` line (it may shut its writing side): closing
//! the connection stops the request, as closing a terminal stops a command.
//!
//! At most [`MAX_CONNECTIONS`] requests are served at once; a user who is not an admin may
//! hold [`MAX_PER_USER`] of them, a user without a role [`MAX_PER_USER_WITHOUT_ROLE`] (only
//! for as long as refusing them takes), so nobody can lock the others out.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::escape::untrusted_capped;
use crate::service::Context;
use crate::service::access::{Actor, Role};

/// The protocol version this daemon speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line: a command line with a long SQL query fits many times over.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a client that shut its writing side is checked for having left.
const HANG_UP_POLL: Duration = Duration::from_millis(250);
/// How long requests in flight may finish once the daemon stops (after its runs stopped).
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(3);
/// How long one answer line may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once; more are refused at once (a local user cannot exhaust the daemon's
/// descriptors or memory by opening connections).
const MAX_CONNECTIONS: usize = 64;
/// Requests one user may have open at once: one user cannot take every slot. A user without a
/// role gets fewer, and only for as long as it takes to refuse them.
const MAX_PER_USER: usize = 8;
const MAX_PER_USER_WITHOUT_ROLE: usize = 2;
/// Slots an admin's burst (a script starting many runs, each followed for its whole run) cannot
/// take: the others keep working meanwhile.
const RESERVED_FOR_OTHERS: usize = 16;
/// Exit status for a request that could not be read (`EX_PROTOCOL` from sysexits.h).
pub const EXIT_PROTOCOL: u8 = 76;
/// Exit status for a peer without any role (`EX_NOPERM`).
const EXIT_NO_PERMISSION: u8 = 77;

/// A piece of a command's output, sent back to the client as it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Out(String),
    Err(String),
}

/// Where a command run for a client writes.
#[derive(Debug, Clone)]
pub struct Console {
    pub frames: mpsc::UnboundedSender<Frame>,
    /// Whether the client's stderr is a terminal (progress is drawn only there).
    pub terminal: bool,
}

/// Runs one command (the request's `command`) for a client in `ctx` (acting as the peer) and
/// returns its exit status. The command line supplies it: the daemon knows no command.
pub type Handler =
    Arc<dyn Fn(Context, serde_json::Value, Console) -> BoxFuture<'static, u8> + Send + Sync>;

/// The request line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(default)]
    pub terminal: bool,
    pub command: serde_json::Value,
}

/// One line of the answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Out(String),
    Err(String),
    Exit(u8),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot serve the control socket at {}: {source}; set daemon.socket to a path in a \
         folder the daemon may write",
        .path.display()
    )]
    Bind { path: PathBuf, source: io::Error },
    #[error(
        "{} exists and is not a socket; remove it or set daemon.socket to another path",
        .path.display()
    )]
    NotASocket { path: PathBuf },
    #[error(
        "another process serves the control socket {}; stop it or set daemon.socket to another \
         path",
        .path.display()
    )]
    InUse { path: PathBuf },
}

/// The bound socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds `path`, replacing a stale socket a crashed daemon left (never anything else).
    pub async fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(ControlError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Ok(_) => {
                return Err(ControlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ControlError::Bind {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let bind_error = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        let socket = ControlSocket {
            listener,
            path: path.to_path_buf(),
        };
        // Everyone may connect; each request is authorized on its own.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(bind_error)?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `stop` is cancelled. `contexts` holds the daemon's current context (it
    /// changes with a reload, and with it the roles).
    pub async fn serve(
        self,
        contexts: watch::Receiver<Arc<Context>>,
        handler: Handler,
        stop: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_user: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let tasks = TaskTracker::new();
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot accept a control connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let ctx = Arc::clone(&contexts.borrow());
            let handler = Arc::clone(&handler);
            let slots = Arc::clone(&slots);
            let per_user = Arc::clone(&per_user);
            tasks.spawn(async move {
                let Ok(cred) = stream.peer_cred() else {
                    tracing::warn!("Control connection without peer credentials; closed");
                    return;
                };
                let user = crate::identity::lookup(cred.uid(), Some(cred.gid()));
                let actor = Actor::of(
                    &user,
                    &ctx.settings.access,
                    rustix::process::geteuid().as_raw(),
                );
                // Admins are trusted with bursts (scripts); others share the slots.
                let cap = match actor.role {
                    Some(Role::Admin) => MAX_CONNECTIONS - RESERVED_FOR_OTHERS,
                    Some(_) => MAX_PER_USER,
                    None => MAX_PER_USER_WITHOUT_ROLE,
                };
                let Some(_user_slot) = UserSlot::take(&per_user, cred.uid(), cap) else {
                    refuse(
                        stream,
                        "you have too many requests open at once; wait for them",
                    )
                    .await;
                    return;
                };
                let permit = tokio::time::timeout(REQUEST_TIMEOUT, slots.acquire_owned()).await;
                let Ok(Ok(_permit)) = permit else {
                    refuse(stream, "the daemon is busy with other requests; try again").await;
                    return;
                };
                serve_one(stream, ctx, actor, handler).await;
            });
        }
        // Requests in flight finish (a follower sees its run end), within a bound.
        tasks.close();
        if tokio::time::timeout(IN_FLIGHT_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("Control requests still open at stop are closed");
        }
    }
}

/// A user's share of the open requests, given back when dropped.
struct UserSlot {
    counts: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl UserSlot {
    fn take(counts: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32, cap: usize) -> Option<UserSlot> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let open = map.entry(uid).or_insert(0);
        if *open >= cap {
            return None;
        }
        *open += 1;
        Some(UserSlot {
            counts: Arc::clone(counts),
            uid,
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = map.get_mut(&self.uid) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Answers a connection that is not served, after letting its request arrive (a client whose
/// request could not be written would not see why).
async fn refuse(stream: UnixStream, why: &str) {
    let (read, mut write) = stream.into_split();
    let _ = tokio::time::timeout(Duration::from_secs(1), read_request(BufReader::new(read))).await;
    let text = format!("acexport: the daemon refused the request: {why}\n");
    let _ = answer(&mut write, &[Reply::Err(text), Reply::Exit(EXIT_PROTOCOL)]).await;
}

/// Serves one connection: read the request, authorize the peer, run, answer.
async fn serve_one(stream: UnixStream, ctx: Arc<Context>, actor: Actor, handler: Handler) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let envelope = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut reader)).await {
        Ok(Ok(envelope)) => envelope,
        Ok(Err(problem)) => {
            tracing::warn!(user = %actor.name, problem = %problem, "Control request refused");
            let text = format!("acexport: the daemon refused the request: {problem}\n");
            let _ = answer(&mut write, &[Reply::Err(text), Reply::Exit(EXIT_PROTOCOL)]).await;
            return;
        }
        Err(_) => {
            let text = format!(
                "acexport: the daemon refused the request: none arrived within {} s\n",
                REQUEST_TIMEOUT.as_secs()
            );
            let _ = answer(&mut write, &[Reply::Err(text), Reply::Exit(EXIT_PROTOCOL)]).await;
            return;
        }
    };
    let what = command_name(&envelope.command);
    if actor.role.is_none() {
        tracing::warn!(user = %actor.name, command = %what, "Control request from a user without a role refused");
        let text = format!(
            "acexport: user {:?} has no role here: an admin can grant one in access.admins, \
             access.contributors or access.viewers\n",
            actor.name
        );
        let _ = answer(
            &mut write,
            &[Reply::Err(text), Reply::Exit(EXIT_NO_PERMISSION)],
        )
        .await;
        return;
    }
    tracing::info!(user = %actor.name, command = %what, "Control request");
    let (frames, mut outgoing) = mpsc::unbounded_channel();
    let console = Console {
        frames,
        terminal: envelope.terminal,
    };
    let name = actor.name.clone();
    let mut run = tokio::spawn(handler(ctx.as_actor(actor), envelope.command, console));
    // A client that leaves (Ctrl-C, or it stops reading) ends its command, as a closed
    // terminal ends a local one: nothing is left holding a slot for it. Definitions are
    // written in single transactions, so a command stopped midway changed nothing.
    let left = async move {
        let mut rest = [0u8; 64];
        loop {
            match reader.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // End of input: the client shut its writing side (`printf … | nc -U` does, and still
        // reads the answer) or closed the connection. Only the latter hangs the socket up.
        loop {
            if hung_up(reader.get_ref()) {
                return;
            }
            tokio::time::sleep(HANG_UP_POLL).await;
        }
    };
    tokio::pin!(left);
    let mut finished = None;
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                Some(frame) => {
                    let reply = match frame {
                        Frame::Out(text) => Reply::Out(text),
                        Frame::Err(text) => Reply::Err(text),
                    };
                    let sent = tokio::time::timeout(WRITE_TIMEOUT, answer(&mut write, &[reply])).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        run.abort();
                        break;
                    }
                }
                None => {
                    finished = Some(match (&mut run).await {
                        Ok(code) => code,
                        Err(e) => {
                            tracing::error!(error = %e, "Control request failed inside the daemon");
                            1
                        }
                    });
                    break;
                }
            },
            () = &mut left => {
                run.abort();
                break;
            }
        }
    }
    // A request may have changed definitions (a schedule, an export enabled): the scheduling
    // loop re-reads them now rather than at its fallback re-read.
    ctx.wake_daemon();
    match finished {
        Some(code) => {
            let _ =
                tokio::time::timeout(WRITE_TIMEOUT, answer(&mut write, &[Reply::Exit(code)])).await;
            tracing::debug!(user = %name, command = %what, exit = code, "Control request done");
        }
        None => {
            tracing::info!(user = %name, command = %what, "Control client left; its request stopped")
        }
    }
}

/// Whether the peer closed the connection entirely (`POLLHUP`), not only its writing side.
fn hung_up(read: &tokio::net::unix::OwnedReadHalf) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stream: &UnixStream = read.as_ref();
    let mut fds = [PollFd::new(stream, PollFlags::empty())];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR),
        Err(_) => true,
    }
}

/// Reads and checks the request line; the error says what is wrong with it.
async fn read_request(read: impl AsyncBufRead + Unpin) -> Result<Envelope, String> {
    let mut reader = read.take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?;
    parse_request(&line)
}

/// Checks a request line as read (newline included when it came).
pub fn parse_request(line: &[u8]) -> Result<Envelope, String> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "it is over {MAX_REQUEST_BYTES} bytes (the most one request may hold)"
        ));
    }
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err(if line.is_empty() {
            "it is empty".to_owned()
        } else {
            "it was cut off before its end of line".to_owned()
        });
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("it is not a JSON object ({e})"))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported; this daemon speaks version \
                 {PROTOCOL_VERSION} (use the acexport of the same release as the daemon)"
            ));
        }
        None => return Err("it has no protocol version (\"v\")".to_owned()),
    }
    serde_json::from_value(value).map_err(|e| format!("it is not a valid request ({e})"))
}

/// The command's name for the log (`connection.add`), from the request's outer keys; escaped.
fn command_name(command: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    let mut value = command;
    while let Some((key, inner)) = value.as_object().and_then(|o| o.iter().next()) {
        parts.push(untrusted_capped(key, 40).into_owned());
        if parts.len() == 2 {
            break;
        }
        value = inner;
    }
    if parts.is_empty() {
        "?".to_owned()
    } else {
        parts.join(".")
    }
}

async fn answer(write: &mut (impl AsyncWriteExt + Unpin), replies: &[Reply]) -> io::Result<()> {
    let mut bytes = Vec::new();
    for reply in replies {
        serde_json::to_writer(&mut bytes, reply).map_err(io::Error::other)?;
        bytes.push(b'\n');
    }
    write.write_all(&bytes).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_checked_before_anything_runs() {
        let ok = br#"{"v":1,"terminal":true,"command":{"status":{"json":false}}}
"#;
        let envelope = parse_request(ok).expect("valid");
        assert!(envelope.terminal);
        let cases: &[(&[u8], &str)] = &[
            (b"", "it is empty"),
            (br#"{"v":1,"command":{}}"#, "cut off"),
            (b"not json\n", "not a JSON object"),
            (b"[1,2]\n", "no protocol version"),
            (
                br#"{"v":2,"command":{}}
"#,
                "protocol version 2 is not supported",
            ),
            (
                br#"{"v":"1","command":{}}
"#,
                "no protocol version",
            ),
            (
                br#"{"v":1}
"#,
                "not a valid request",
            ),
        ];
        for (line, expected) in cases {
            let err = parse_request(line).expect_err("refused");
            assert!(err.contains(expected), "{line:?}: {err}");
        }
        let mut huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        huge.push(b'\n');
        assert!(parse_request(&huge).expect_err("too big").contains("over"));
    }

    #[test]
    fn the_logged_command_name_is_the_two_outer_keys_escaped() {
        let value = serde_json::json!({"connection": {"add": {"name": "x"}}});
        assert_eq!(command_name(&value), "connection.add");
        let value = serde_json::json!({"evil\u{1b}[2J": 1});
        assert!(!command_name(&value).contains('\u{1b}'));
        assert_eq!(command_name(&serde_json::json!(3)), "?");
    }

    #[test]
    fn replies_are_one_json_object_per_line() {
        let line = serde_json::to_string(&Reply::Out("a\nb".into())).expect("json");
        assert_eq!(line, r#"{"out":"a\nb"}"#);
        assert_eq!(
            serde_json::to_string(&Reply::Exit(77)).expect("json"),
            r#"{"exit":77}"#
        );
    }
}
