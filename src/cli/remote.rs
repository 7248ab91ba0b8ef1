//! Commands through the daemon's control socket (`crate::daemon::control`): while the daemon
//! runs, every command below goes there, for every user, root included, and the daemon runs it
//! as the peer with that user's role. The request is the parsed command line; what only the
//! user's process has (a key file, an environment variable, stdin, the working folder) is read
//! here first, and the daemon refuses a request that still names any of it.

use std::io::Write;
use std::path::Path;

use futures::FutureExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::output::{self, RemoteConsole};
use super::{CliError, Command, audit, connection, export, run, runs, segment};
use crate::daemon::control::{
    Console, EXIT_PROTOCOL, Envelope, Frame, Handler, PROTOCOL_VERSION, Reply,
};
use crate::service::Context;

/// Longest answer line the client reads: one command's whole output (a long `runs --json`).
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;

/// A secret the client read for a command the daemon runs. Its `Debug` shows nothing; it is
/// serialized only into the request, which only the daemon reads.
#[derive(Debug, Clone)]
pub struct Carried(pub SecretString);

impl Serialize for Carried {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose_secret())
    }
}

impl<'de> Deserialize<'de> for Carried {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Carried(SecretString::from(s)))
    }
}

/// The commands the daemon serves; the others (`daemon`, `check-config`, `sandbox`, `demo`)
/// are about this process or this machine and always run here.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    Connection(connection::ConnectionCommand),
    Segment(segment::SegmentCommand),
    Export(export::ExportCommand),
    Runs(runs::RunsArgs),
    Trigger(run::TriggerArgs),
    Cancel(run::CancelArgs),
    Status(run::StatusArgs),
    Audit(audit::AuditArgs),
}

/// Where a command goes.
#[derive(Debug)]
pub enum Route {
    /// To the daemon, when one listens.
    Daemon(Request),
    /// Always here.
    Here(Command),
}

impl Request {
    /// Where `command` goes.
    pub fn route(command: Command) -> Route {
        Route::Daemon(match command {
            Command::Connection(c) => Request::Connection(c),
            Command::Segment(c) => Request::Segment(c),
            Command::Export(c) => Request::Export(c),
            Command::Runs(a) => Request::Runs(a),
            Command::Trigger(a) => Request::Trigger(a),
            Command::Cancel(a) => Request::Cancel(a),
            Command::Status(a) => Request::Status(a),
            Command::Audit(a) => Request::Audit(a),
            other => return Route::Here(other),
        })
    }

    /// The command to run here after all (no daemon listens).
    pub fn into_command(self) -> Command {
        match self {
            Request::Connection(c) => Command::Connection(c),
            Request::Segment(c) => Command::Segment(c),
            Request::Export(c) => Command::Export(c),
            Request::Runs(a) => Command::Runs(a),
            Request::Trigger(a) => Command::Trigger(a),
            Request::Cancel(a) => Command::Cancel(a),
            Request::Status(a) => Command::Status(a),
            Request::Audit(a) => Command::Audit(a),
        }
    }

    /// Reads here what the daemon must not read for the user: keys from files, environment
    /// variables or stdin; relative paths made absolute against this working folder.
    fn carry(&mut self) -> Result<(), CliError> {
        match self {
            Request::Connection(connection::ConnectionCommand::Add(a)) => a.key.carry(),
            Request::Connection(connection::ConnectionCommand::Update(u)) => u.key.carry(),
            Request::Segment(c) => segment::carry(c),
            _ => Ok(()),
        }
    }

    /// Whether the request still names something only the client could read.
    fn is_local(&self) -> bool {
        match self {
            Request::Connection(connection::ConnectionCommand::Add(a)) => a.key.is_local(),
            Request::Connection(connection::ConnectionCommand::Update(u)) => u.key.is_local(),
            Request::Segment(c) => segment::is_local(c),
            _ => false,
        }
    }

    /// What the command line's parser would have refused: a request is built by a client the
    /// daemon does not trust, so its bounds are checked again here.
    fn check(&self) -> Result<(), String> {
        let within = |what: &str, value: u64, max: u64| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{what} must be between 1 and {max}, got {value}"))
            }
        };
        match self {
            Request::Segment(segment::SegmentCommand::Preview { limit, .. }) => within(
                "--limit",
                u64::from(*limit),
                u64::from(segment::MAX_PREVIEW_ROWS),
            ),
            Request::Runs(args) => {
                within("--limit", u64::from(args.limit), u64::from(runs::MAX_RUNS))
            }
            Request::Audit(args) => within(
                "--limit",
                u64::from(args.limit),
                u64::from(audit::MAX_ENTRIES),
            ),
            Request::Trigger(args) if args.name.is_some() == args.all => {
                Err("give either an export name or --all".to_owned())
            }
            Request::Connection(connection::ConnectionCommand::Add(a))
                if a.key.carried.is_none() =>
            {
                Err("the API key is missing".to_owned())
            }
            _ => Ok(()),
        }
    }

    /// Runs the request in `ctx` (acting for the peer).
    async fn run(self, ctx: &Context) -> Result<(), CliError> {
        match self {
            Request::Connection(cmd) => connection::run(ctx, cmd).await,
            Request::Segment(cmd) => segment::run(ctx, cmd).await,
            Request::Export(export::ExportCommand::Run(args)) => {
                run::export_run_reporting(ctx, args).await
            }
            Request::Export(cmd) => export::run(ctx, cmd).await,
            Request::Runs(args) => runs::run(ctx, args).await,
            Request::Trigger(args) => run::trigger(ctx, args).await,
            Request::Cancel(args) => run::cancel(ctx, args).await,
            Request::Status(args) => run::status(ctx, args).await,
            Request::Audit(args) => audit::run(ctx, args).await,
        }
    }
}

/// The handler the daemon serves its control socket with: the command line's own commands.
pub fn handler() -> Handler {
    std::sync::Arc::new(|ctx, command, console| serve(ctx, command, console).boxed())
}

/// Runs one request for a client; its output and error go to the client.
async fn serve(ctx: Context, command: serde_json::Value, console: Console) -> u8 {
    let say = |text: String| {
        let _ = console
            .frames
            .send(crate::daemon::control::Frame::Err(text));
    };
    let request: Request = match serde_json::from_value(command) {
        Ok(r) => r,
        Err(e) => {
            say(format!(
                "acexport: the daemon does not know this command ({e}); use the acexport of the \
                 same release as the daemon\n"
            ));
            return EXIT_PROTOCOL;
        }
    };
    if request.is_local() {
        say(
            "acexport: the request names a key file, environment variable, stdin or relative \
             path that only the client can read; the client reads those itself\n"
                .to_owned(),
        );
        return EXIT_PROTOCOL;
    }
    if let Err(problem) = request.check() {
        say(format!(
            "acexport: the daemon refused the request: {problem}\n"
        ));
        return EXIT_PROTOCOL;
    }
    // Non-admins never read a connection's address, whatever quotes it.
    let hidden = match ctx.hidden_addresses().await {
        Ok(hidden) => hidden,
        Err(e) => {
            say(format!("acexport: {}\n", super::error_chain(&e)));
            return super::EXIT_FAILURE;
        }
    };
    let (frames, mut produced) = tokio::sync::mpsc::unbounded_channel();
    let client = console.frames.clone();
    let scrubber = tokio::spawn(async move {
        while let Some(frame) = produced.recv().await {
            let frame = match frame {
                Frame::Out(text) => Frame::Out(hide(text, &hidden)),
                Frame::Err(text) => Frame::Err(hide(text, &hidden)),
            };
            if client.send(frame).is_err() {
                break;
            }
        }
    });
    let remote = RemoteConsole {
        frames: frames.clone(),
        terminal: console.terminal,
    };
    let result = output::with_remote_console(remote, request.run(&ctx)).await;
    let say = |text: String| {
        let _ = frames.send(Frame::Err(text));
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) if e.is_closed_pipe() => 0,
        Err(CliError::Quiet(code)) => code,
        Err(e) => {
            say(format!("acexport: {}\n", super::error_chain(&e)));
            e.exit_code()
        }
    };
    drop(frames);
    let _ = scrubber.await;
    code
}

/// What a hidden address becomes: no quote or backslash, so that JSON output stays JSON, and
/// no connection name (the address may be an admins-only connection's).
const HIDDEN_ADDRESS: &str = "[address hidden]";

/// `text` with every hidden address replaced.
fn hide(text: String, hidden: &[String]) -> String {
    hidden.iter().fold(text, |text, address| {
        if text.contains(address.as_str()) {
            text.replace(address.as_str(), HIDDEN_ADDRESS)
        } else {
            text
        }
    })
}

/// Connects to the daemon's control socket. `None` when no daemon listens there (no socket,
/// or one a stopped daemon left): the command then runs here.
pub async fn connect(socket: &Path) -> Result<Option<UnixStream>, CliError> {
    match UnixStream::connect(socket).await {
        Ok(stream) => {
            check_server(&stream, socket)?;
            Ok(Some(stream))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(CliError::Control {
            socket: socket.to_path_buf(),
            source,
        }),
    }
}

/// Requests carry keys and database URLs: they go only to a daemon running as root or as the
/// owner of the socket's folder (the service user), never to whoever managed to listen there.
fn check_server(stream: &UnixStream, socket: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| CliError::Control {
        socket: socket.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
    };
    let peer = stream
        .peer_cred()
        .map_err(|e| refuse(format!("cannot tell who serves it ({e})")))?
        .uid();
    let folder = socket.parent().unwrap_or(Path::new("/"));
    let owner = std::fs::metadata(folder)
        .map_err(|e| refuse(format!("cannot inspect {} ({e})", folder.display())))?
        .uid();
    if peer == 0 || peer == owner {
        Ok(())
    } else {
        Err(refuse(format!(
            "it is served by uid {peer}, neither root nor the owner of {} (uid {owner}); \
             nothing was sent to it",
            folder.display()
        )))
    }
}

/// Sends `request` to the daemon and prints its answer as it comes; the daemon's exit status.
pub async fn forward(
    stream: UnixStream,
    socket: &Path,
    mut request: Request,
) -> Result<u8, CliError> {
    request.carry()?;
    // `export run --json` prints its one object on every path, this one included.
    let json_run = match &request {
        Request::Export(export::ExportCommand::Run(args)) if args.json => Some(args.name.clone()),
        _ => None,
    };
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        command: serde_json::to_value(&request).map_err(|e| CliError::Output(e.into()))?,
    };
    drop(request);
    let mut line = serde_json::to_vec(&envelope).map_err(|e| CliError::Output(e.into()))?;
    line.push(b'\n');
    let broken = |source: std::io::Error| CliError::Control {
        socket: socket.to_path_buf(),
        source,
    };
    let (read, mut write) = stream.into_split();
    write.write_all(&line).await.map_err(broken)?;
    write.flush().await.map_err(broken)?;
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_REPLY_BYTES)
            .read_until(b'\n', &mut line)
            .await
            .map_err(broken)?;
        if n == 0 || !line.ends_with(b"\n") {
            let error = broken(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection before the command finished (it may have \
                 stopped: a run it had resumes when it starts again; see `acexport status` and \
                 its log)",
            ));
            if let Some(export) = json_run {
                output::emit_json(&serde_json::json!({
                    "run_id": null,
                    "export": export,
                    "status": crate::service::RunStatus::Failed,
                    "counts": null,
                    "error": super::error_chain(&error),
                }))?;
            }
            return Err(error);
        }
        let reply: Reply = serde_json::from_slice(&line).map_err(|e| {
            broken(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the daemon's answer cannot be read: {e}"),
            ))
        })?;
        match reply {
            Reply::Out(text) => {
                let mut out = std::io::stdout().lock();
                if out
                    .write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // Stdout was closed by its reader (`| head`): nothing left to say.
                    return Ok(0);
                }
            }
            Reply::Err(text) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(text.as_bytes());
                let _ = err.flush();
            }
            Reply::Exit(code) => return Ok(code),
        }
    }
}
