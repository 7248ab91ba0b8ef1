//! Test harness for the command line: a [`World`] per test (its own folder, settings file,
//! store, secrets key and sandbox on loopback) and a runner for the real `acexport` binary in it.
//!
//! Every command run through [`TestEnv`] is checked for the API key in its stdout and stderr,
//! so each test also checks that no command prints the key.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use acexport::pipeline::{RunOptions, RunOutcome, Silent};
use acexport::sandbox::world::World;
use acexport::store::TriggerKind;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The sandbox's API key: long and distinctive, so finding it anywhere means it leaked.
pub const API_KEY: &str = "sbx-9f2c4e7a1b3d5f60a8c2e4f6b1d3";
/// A key the sandbox does not accept.
pub const WRONG_KEY: &str = "wrong-1234567890abcdef1234567";
/// A command that takes longer than this is stuck (waiting on stdin, say), not slow.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One test's world and the binary run in it. It derefs to the [`World`], so tests reach
/// `env.config`, `env.sandbox`, `env.host()` and `env.path()` directly; its own
/// `add_connection`, `add_csv_segment` and `add_export` go through the binary, as a user would.
pub struct TestEnv {
    world: World,
}

impl Deref for TestEnv {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::with_settings("").await
    }

    /// A test environment whose settings file also holds `extra` (whole TOML sections).
    pub async fn with_settings(extra: &str) -> TestEnv {
        let world = World::builder()
            .token(API_KEY)
            .setting("activecampaign.retry_base_ms", 10)
            .setting("activecampaign.max_attempts", 2)
            .setting("activecampaign.timeout_secs", 10)
            .settings_toml(extra)
            .build()
            .await
            .expect("build the test world");
        TestEnv { world }
    }

    /// A test environment on a world the test built itself (with the sandbox's limits on, say);
    /// give it [`API_KEY`] as its token.
    pub fn on(world: World) -> TestEnv {
        TestEnv { world }
    }

    /// How messages name the sandbox: `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.sandbox.addr().to_string()
    }

    /// Writes a file in the test folder and returns its path as a string for arguments.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write test file");
        path.display().to_string()
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None, &[]).await
    }

    pub async fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        self.run_with(args, Some(input), &[]).await
    }

    pub async fn run_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        self.run_with(args, None, vars).await
    }

    /// Runs the binary with only this test's settings in its environment.
    pub async fn run_with(
        &self,
        args: &[&str],
        input: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Output {
        let mut command = Command::from(self.command(env!("CARGO_BIN_EXE_acexport")));
        command.args(args).kill_on_drop(true);
        command.envs(vars.iter().copied());
        command
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start acexport");
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(text.as_bytes()).await.expect("write stdin");
            // Dropping stdin closes it, so the binary sees the end of input.
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("acexport {args:?} did not finish"))
            .expect("wait for acexport");
        for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            assert!(
                !contains(bytes, API_KEY.as_bytes()),
                "acexport {args:?} printed the API key on {stream}"
            );
        }
        output
    }

    /// Adds connection `name` to the sandbox with the key on stdin; panics if that fails.
    pub async fn add_connection(&self, name: &str) {
        let host = self.host();
        let out = self
            .run_stdin(
                &[
                    "connection",
                    "add",
                    name,
                    "--host",
                    &host,
                    "--api-key-stdin",
                    "--accept-data-transfer",
                ],
                API_KEY,
            )
            .await;
        out.assert_ok();
    }

    /// Adds a CSV segment with columns email, first_name, last_name, tier and two rows.
    pub async fn add_csv_segment(&self, name: &str) {
        let csv = self.write(
            &format!("{name}.csv"),
            "email,first_name,last_name,tier\nada@example.com,Ada,Lovelace,gold\n\
             alan@example.com,Alan,Turing,silver\n",
        );
        self.run(&["segment", "add", name, "--csv", &csv])
            .await
            .assert_ok();
    }

    /// Connection `crm`, segment `members` and export `weekly` to list 1.
    pub async fn add_export(&self) {
        self.add_connection("crm").await;
        self.add_csv_segment("members").await;
        self.run(&export_add_args(&["--first-name", "first_name"]))
            .await
            .assert_ok();
    }

    /// Runs export `name` through the library with this test's settings, as `export run`
    /// will, so the history commands have runs to show.
    pub async fn run_export_in_process(&self, name: &str) -> RunOutcome {
        let ctx = self.open_context().await.expect("open the store");
        let options = RunOptions {
            trigger: TriggerKind::Manual,
            full: false,
            dry_run: false,
            requested_by: None,
        };
        let outcome = ctx
            .run_export(name, options, Arc::new(Silent))
            .await
            .expect("run");
        ctx.store.close().await;
        outcome
    }

    /// `... list --json` parsed.
    pub async fn list_json(&self, group: &str) -> Vec<serde_json::Value> {
        let out = self.run(&[group, "list", "--json"]).await;
        out.assert_ok();
        serde_json::from_str(&out.stdout_text()).expect("list --json prints a JSON array")
    }

    /// `... show NAME --json` parsed.
    pub async fn show_json(&self, group: &str, name: &str) -> serde_json::Value {
        let out = self.run(&[group, "show", name, "--json"]).await;
        out.assert_ok();
        serde_json::from_str(&out.stdout_text()).expect("show --json prints JSON")
    }

    /// Requests the sandbox received whose path ends with `suffix`.
    pub fn requests_to(&self, suffix: &str) -> usize {
        self.sandbox
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .count()
    }
}

/// Checks on a finished command.
pub trait OutputExt {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    fn code(&self) -> Option<i32>;
    /// Exit 0, or a panic showing both streams.
    fn assert_ok(&self);
    /// Exit `code` with an `acexport: ` message on stderr containing `needle`.
    fn assert_fails_with(&self, code: i32, needle: &str);
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_text(),
            self.stderr_text()
        );
    }

    fn assert_fails_with(&self, code: i32, needle: &str) {
        let stderr = self.stderr_text();
        assert_eq!(
            self.code(),
            Some(code),
            "stdout:\n{}\nstderr:\n{stderr}",
            self.stdout_text()
        );
        let message = stderr
            .lines()
            .find(|l| l.starts_with("acexport: "))
            .unwrap_or_else(|| panic!("no `acexport: ` message on stderr:\n{stderr}"));
        assert!(
            message.contains(needle),
            "expected {needle:?} in:\n{message}"
        );
    }
}

/// `export add weekly` for connection `crm`, list 1 and segment `members`, plus `extra`.
pub fn export_add_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "export",
        "add",
        "weekly",
        "--connection",
        "crm",
        "--list",
        "1",
        "--segment",
        "members",
        "--email",
        "email",
    ];
    args.extend_from_slice(extra);
    args
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The bytes of a SQLite database and of its write-ahead log, if one is left.
pub fn database_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("read the database");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(more) = std::fs::read(PathBuf::from(wal)) {
        bytes.extend(more);
    }
    bytes
}

/// A loopback port nothing listens on: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
