//! Issue 10, finding 9, as the attack: another local user reads `/proc/PID/cmdline` of
//! `acexport sandbox` for its token, or asks its `/_sandbox` views for the profiles it received
//! without one. The token comes from a file, an environment variable or stdin (or is made up and
//! printed once on stderr), never from the command line, and the views refuse a request without
//! it.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::support::{OutputExt, TestEnv, contains};

/// A sandbox token: long and distinctive, so finding it anywhere means it leaked.
const TOKEN: &str = "sbx-cli-3c9e1f7a2b4d6e8f0a1c3e5f";
/// How long the sandbox may take to start listening; never reached when healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What `acexport sandbox` prints before a token it made up.
const MADE_UP_TOKEN_PREFIX: &str = "Sandbox token (made up for this run): ";

/// A running `acexport sandbox` process; killed when dropped.
struct SandboxProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, from the first line the sandbox prints.
    host: String,
    /// Its standard error, not read yet past what [`start`] needed.
    stderr: BufReader<ChildStderr>,
    /// Its standard output, kept open: the sandbox quits when its output is closed (as
    /// `acexport sandbox | head -1` would), which may happen while it still prints.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl SandboxProcess {
    /// The process's command line as `/proc` shows it to every local user.
    fn cmdline(&self) -> Vec<u8> {
        let pid = self.child.id().expect("the sandbox runs");
        std::fs::read(format!("/proc/{pid}/cmdline")).expect("read /proc/PID/cmdline")
    }

    /// GETs `path` with `token` as `Api-Token` (none when `None`); returns the status and body.
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.host));
        if let Some(token) = token {
            request = request.header("Api-Token", token);
        }
        let response = request.send().await.expect("the sandbox answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }
}

/// Starts `acexport sandbox --port 0 ARGS` in `env`'s world with `vars` set and `input` on
/// stdin, and waits until it listens.
async fn start(
    env: &TestEnv,
    args: &[&str],
    vars: &[(&str, &str)],
    input: Option<&str>,
) -> SandboxProcess {
    let mut command = Command::from(env.command(env!("CARGO_BIN_EXE_acexport")));
    command
        .args(["sandbox", "--port", "0"])
        .args(args)
        .envs(vars.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start acexport sandbox");
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes()).await.expect("write stdin");
        // Dropping stdin closes it: the sandbox reads to the end.
    }
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut lines = BufReader::new(stdout).lines();
    let host = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(at) = line.find("http://127.0.0.1:") {
                let host = line[at..].split_whitespace().next().expect("a URL");
                return host.trim_end_matches(['.', ',']).to_owned();
            }
        }
        panic!("acexport sandbox ended without saying where it listens");
    })
    .await
    .expect("acexport sandbox started in time");
    SandboxProcess {
        child,
        host,
        stderr,
        _stdout: lines,
    }
}

/// Checks that the sandbox knows `token`: the views refuse requests without it or with
/// another, and answer with it; the API does the same.
async fn assert_guarded_by(sandbox: &SandboxProcess, token: &str) {
    for path in ["/_sandbox/contacts", "/_sandbox/stats", "/api/3/users/me"] {
        for wrong in [None, Some("wrong-token")] {
            let (status, body) = sandbox.get(path, wrong).await;
            assert_eq!(status, 403, "{path} with {wrong:?}: {body}");
            assert!(!body.contains("contacts\""), "{path}: {body}");
        }
        let (status, body) = sandbox.get(path, Some(token)).await;
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_reads_its_token_from_a_file_and_its_command_line_does_not_show_it() {
    let env = TestEnv::new().await;
    let file = env.write("sandbox.token", &format!("{TOKEN}\n"));

    let sandbox = start(&env, &["--token-file", &file], &[], None).await;

    assert!(!contains(&sandbox.cmdline(), TOKEN.as_bytes()));
    assert_guarded_by(&sandbox, TOKEN).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_reads_its_token_from_a_named_environment_variable() {
    let env = TestEnv::new().await;

    let sandbox = start(
        &env,
        &["--token-env", "SBX_TEST_TOKEN"],
        &[("SBX_TEST_TOKEN", TOKEN)],
        None,
    )
    .await;

    assert!(!contains(&sandbox.cmdline(), TOKEN.as_bytes()));
    assert_guarded_by(&sandbox, TOKEN).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_reads_its_token_from_standard_input() {
    let env = TestEnv::new().await;

    let sandbox = start(&env, &["--token-stdin"], &[], Some(TOKEN)).await;

    assert!(!contains(&sandbox.cmdline(), TOKEN.as_bytes()));
    assert_guarded_by(&sandbox, TOKEN).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_option_the_sandbox_makes_one_up_and_prints_it_once_on_stderr() {
    let env = TestEnv::new().await;

    let mut sandbox = start(&env, &[], &[], None).await;
    let mut line = String::new();
    let token = loop {
        line.clear();
        let read = sandbox.stderr.read_line(&mut line).await.expect("stderr");
        assert!(read > 0, "no made-up token on stderr");
        if let Some(token) = line.trim_end().strip_prefix(MADE_UP_TOKEN_PREFIX) {
            break token.to_owned();
        }
    };

    assert!(token.len() >= 32, "{token}");
    assert!(!contains(&sandbox.cmdline(), token.as_bytes()));
    assert_guarded_by(&sandbox, &token).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_given_on_the_command_line_is_refused_without_echoing_it() {
    let env = TestEnv::new().await;

    let out = env.run(&["sandbox", "--port", "0", "--token", TOKEN]).await;

    out.assert_fails_with(1, "--token-file PATH, --token-env VAR or --token-stdin");
    let said = format!("{}{}", out.stdout_text(), out.stderr_text());
    assert!(!said.contains(TOKEN), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_token_sources_are_a_usage_error() {
    let env = TestEnv::new().await;
    let file = env.write("sandbox.token", TOKEN);

    let out = env
        .run(&["sandbox", "--token-file", &file, "--token-stdin"])
        .await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("cannot be used with"),
        "{}",
        out.stderr_text()
    );
}
