//! The out-of-process pieces of the benchmark: the sandbox served by a child process (this
//! binary started again with [`SERVE_SANDBOX`]) and the `acexport` binary run as a user runs
//! it, each measured from the outside (wall time, its CPU from the kernel's accounting of
//! waited-for children, its peak RSS sampled from `/proc`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use acexport::sandbox::world::World;
use acexport::sandbox::{Sandbox, SandboxOptions};
use tokio::io::AsyncBufReadExt;

/// The argument that makes this binary serve the sandbox, followed by a token file's path.
pub const SERVE_SANDBOX: &str = "--serve-sandbox";
/// How often a measured child's peak RSS (`VmHWM`, which only grows) is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(20);
/// Longest wait for the sandbox child to say where it listens.
const SANDBOX_START: Duration = Duration::from_secs(30);

/// Serves a sandbox with its limits off and imports confirmed at once, as the in-process
/// throughput runs use, until the parent closes this process's standard input.
pub async fn serve_sandbox(token_file: &Path, history: usize) -> Result<(), String> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("cannot read {}: {e}", token_file.display()))?;
    let opts = SandboxOptions {
        token: token.trim().to_owned(),
        requests_per_second: None,
        bulk_imports_per_minute: None,
        import_delay: Duration::ZERO,
        store_contacts: false,
        history,
        ..SandboxOptions::default()
    };
    let sandbox = Sandbox::start(opts)
        .await
        .map_err(|e| format!("cannot start the sandbox: {e}"))?;
    println!("{}", sandbox.host());
    // The parent holds our standard input; its end (or the parent's) stops the sandbox.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    sandbox.shutdown().await;
    Ok(())
}

/// A sandbox in a child process.
pub struct OutsideSandbox {
    child: tokio::process::Child,
    host: String,
    token: String,
    http: reqwest::Client,
}

impl OutsideSandbox {
    /// Starts it with `token`, written to a file in `dir` (never on a command line).
    pub async fn start(dir: &Path, token: &str) -> Result<OutsideSandbox, String> {
        let token_file = dir.join("sandbox.token");
        std::fs::write(&token_file, token)
            .map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut child = tokio::process::Command::new(exe)
            .arg(SERVE_SANDBOX)
            .arg(&token_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the sandbox process: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the sandbox's output is not piped")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let host = tokio::time::timeout(SANDBOX_START, lines.next_line())
            .await
            .map_err(|_| "the sandbox process did not say where it listens")?
            .map_err(|e| format!("cannot read the sandbox's address: {e}"))?
            .ok_or("the sandbox process ended before listening")?;
        Ok(OutsideSandbox {
            child,
            host,
            token: token.to_owned(),
            http: reqwest::Client::new(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// A counter of the sandbox's `/_sandbox/stats`.
    pub async fn stat(&self, name: &str) -> Result<u64, String> {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.host))
            .header("Api-Token", &self.token)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot read the sandbox's stats: {e}"))?
            .json()
            .await
            .map_err(|e| format!("cannot read the sandbox's stats: {e}"))?;
        stats[name]
            .as_u64()
            .ok_or_else(|| format!("the sandbox's stats have no counter {name:?}"))
    }

    /// Closes its standard input, which stops it, and waits for it.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// What a child process did, measured from outside.
pub struct ChildRun {
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Names another `acexport` binary to measure (e.g. an older build, for a before/after).
const BINARY_ENV: &str = "ACEXPORT_BENCH_BINARY";

/// The `acexport` binary measured: this build's, or the one [`BINARY_ENV`] names.
pub fn acexport_binary() -> PathBuf {
    std::env::var_os(BINARY_ENV).map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_acexport")),
        PathBuf::from,
    )
}

/// Runs `acexport ARGS` in `world` as a user would (without the benchmark's
/// `MALLOC_ARENA_MAX`) and measures it.
pub async fn run_acexport(world: &World, args: &[&str]) -> Result<ChildRun, String> {
    let mut command = tokio::process::Command::from(world.command(acexport_binary()));
    command
        .args(args)
        .env_remove("MALLOC_ARENA_MAX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start acexport {args:?}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let mut waited = tokio::spawn(child.wait_with_output());
    let mut peak_kb = 0.0_f64;
    let output = loop {
        tokio::select! {
            output = &mut waited => break output,
            () = tokio::time::sleep(RSS_SAMPLE) => peak_kb = peak_kb.max(peak_rss_kb(pid)),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let output = output
        .map_err(|e| format!("acexport {args:?}: {e}"))?
        .map_err(|e| format!("acexport {args:?}: {e}"))?;
    Ok(ChildRun {
        seconds,
        cpu_seconds: children_cpu_seconds() - cpu_before,
        peak_rss_mb: peak_kb / 1024.0,
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Peak RSS of process `pid` so far, in kB; 0 once it is gone.
fn peak_rss_kb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// CPU time (user + system) of this process's children that were waited for, in seconds.
fn children_cpu_seconds() -> f64 {
    // cutime and cstime: fields 16 and 17 of /proc/self/stat.
    crate::stat_ticks(&[13, 14])
}
