//! Alerts end to end: the real daemon and `export run` processes, a webhook receiver of the
//! test's own on 127.0.0.1, and a real script as the command channel.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acexport::sandbox::{Fault, FaultAction};
use acexport::settings::WebhookUrl;
use acexport::store::RunStatus;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::daemon::{Env, finished, sandbox_options, signal, wait_exit};
use crate::support::{OutputExt, TestEnv, export_add_args};

/// The webhook secret the tests sign with.
const SECRET: &str = "whsec-test-5d41402abc4b2a76";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer, in turn; 200 once they are used up.
    answers: Mutex<VecDeque<u16>>,
}

/// A webhook receiver on 127.0.0.1 that records every request and answers as told.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    shared
        .received
        .lock()
        .expect("lock")
        .push(Received { headers, body });
    let status = shared
        .answers
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or(200);
    StatusCode::from_u16(status).expect("status")
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let shared = Arc::new(Shared::default());
        shared.answers.lock().expect("lock").extend(answers);
        let app = axum::Router::new()
            .route("/hooks/T0/secret-token", axum::routing::post(hook))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    /// Its URL, with a token in the path as chat services give them.
    fn url(&self) -> String {
        format!("http://{}/hooks/T0/secret-token", self.addr)
    }

    /// Answers 200 from now on.
    fn recover(&self) {
        self.shared.answers.lock().expect("lock").clear();
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Waits until `n` requests have arrived.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                start.elapsed() < timeout,
                "expected {n} webhook requests within {timeout:?}, got {}: {:#?}",
                received.len(),
                received.iter().map(Received::text).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `X-Acexport-Signature` a receiver expects for `body`, computed here independently.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Writes the webhook secret owner-only into `dir`.
fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Writes an executable shell script into `dir`.
fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    path
}

async fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every profile value of the daemon environment's segment that a body could leak.
fn assert_no_profile_values(text: &str) {
    for value in [
        "person0@example.com",
        "person1",
        "Given0",
        "Family0",
        "555-00000",
    ] {
        assert!(!text.contains(value), "{value:?} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_alerts_once_per_change_of_state_signed_and_without_profile_values() {
    let receiver = Receiver::start(&[]).await;
    let env = Env::new(sandbox_options(0), 20, None).await;
    let secret = write_secret(env.dir.path());
    env.rewrite_settings(|s| {
        s.alerts.webhook_url = Some(WebhookUrl::from(receiver.url()));
        s.alerts.webhook_secret_file = Some(secret);
    })
    .expect("settings");
    let segment = env.csv_path("people");
    let rows = std::fs::read_to_string(&segment).expect("read segment");
    std::fs::remove_file(&segment).expect("remove the segment file");
    let mut daemon = env.start(None);
    env.wait_ready().await;

    // Fails: one alert.
    env.trigger_run();
    env.wait_for("the first failed run", Duration::from_secs(20), |r| {
        r.len() == 1 && finished(&r[0])
    })
    .await;
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    // Fails the same way again, after a restart: no alert.
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(20)).success());
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("the second failed run", Duration::from_secs(20), |r| {
        r.len() == 2 && finished(&r[1])
    })
    .await;
    // Recovers: one alert.
    std::fs::write(&segment, rows).expect("restore the segment file");
    env.trigger_run();
    let runs = env
        .wait_for("the recovered run", Duration::from_secs(20), |r| {
            r.len() == 3 && finished(&r[2])
        })
        .await;
    let received = receiver.wait_for(2, Duration::from_secs(10)).await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(20)).success());

    let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Failed, RunStatus::Failed, RunStatus::Succeeded]
    );
    assert_eq!(received.len(), 2, "the repeated failure alerted nothing");
    let failed = first[0].json();
    assert_eq!(failed["event"], "failed");
    assert_eq!(failed["export"], "people-list");
    assert_eq!(failed["connection"], "ac");
    assert_eq!(failed["run_id"], runs[0].id);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure"], "source");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("segment \"people\"")),
        "{failed}"
    );
    assert!(failed["started_at"].is_string() && failed["finished_at"].is_string());
    assert!(!failed["host"].as_str().unwrap_or_default().is_empty());
    let recovered = received[1].json();
    assert_eq!(recovered["event"], "recovered");
    assert_eq!(recovered["run_id"], runs[2].id);
    assert_eq!(recovered["counts"]["upserted"], 20);
    for request in &received {
        assert_eq!(
            request.header("x-acexport-signature"),
            expected_signature(&request.body)
        );
        assert_no_profile_values(&request.text());
    }
    let log = env.log();
    assert!(
        !log.contains("secret-token"),
        "the webhook's path was logged"
    );
    assert!(!log.contains(SECRET), "the webhook secret was logged");
}

/// A CLI test environment with export `weekly` whose settings send alerts to `receiver`,
/// waiting `retry_base_ms` before the second attempt, with `extra` settings of `[alerts]`.
async fn cli_env(receiver: &Receiver, retry_base_ms: u64, extra: &str) -> TestEnv {
    let env = TestEnv::with_settings(&format!(
        "[alerts]\nwebhook_url = \"{}\"\nwebhook_retry_base_ms = {retry_base_ms}\n{extra}",
        receiver.url()
    ))
    .await;
    env.add_export().await;
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_answering_500_twice_gets_the_same_alert_a_third_time() {
    let receiver = Receiver::start(&[500, 500]).await;
    let env = cli_env(&receiver, 50, "").await;
    std::fs::remove_file(env.path("members.csv")).expect("remove the segment file");

    let out = env.run(&["export", "run", "weekly"]).await;

    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let received = receiver.received();
    assert_eq!(received.len(), 3, "two refusals, then taken");
    let id = received[0].header("x-acexport-delivery");
    assert!(!id.is_empty());
    for request in &received {
        assert_eq!(request.header("x-acexport-delivery"), id);
        assert_eq!(request.json()["event"], "failed");
        for value in [
            "ada@example.com",
            "Ada",
            "Lovelace",
            "alan@example.com",
            "Turing",
        ] {
            assert!(
                !request.text().contains(value),
                "{value} in {}",
                request.text()
            );
        }
    }
    assert!(!out.stderr_text().contains("could not be delivered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_alert_is_said_by_the_foreground_run_and_sent_by_the_next_run() {
    let receiver = Receiver::start(&[503; 200]).await;
    // Attempts spread over more than the 5 s a foreground run waits.
    let env = cli_env(&receiver, 3000, "").await;
    std::fs::remove_file(env.path("members.csv")).expect("remove the segment file");

    let started = Instant::now();
    let first = env.run(&["export", "run", "weekly"]).await;
    let took = started.elapsed();
    receiver.recover();
    let seen_before = receiver.received().len();
    let second = env.run(&["export", "run", "weekly"]).await;

    assert_eq!(first.code(), Some(1));
    assert!(
        first
            .stderr_text()
            .contains("Alert could not be delivered in time"),
        "{}",
        first.stderr_text()
    );
    assert!(took < Duration::from_secs(20), "the run waited {took:?}");
    assert_eq!(second.code(), Some(1));
    let received = receiver.received();
    assert_eq!(received.len(), seen_before + 1, "sent again, once");
    assert_eq!(received[seen_before].json()["event"], "failed");
    assert_eq!(received[seen_before].json()["run_id"], 2);
    // A third run in the same state: the alert was taken, nothing more.
    env.run(&["export", "run", "weekly"]).await;
    assert_eq!(receiver.received().len(), seen_before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_while_no_channel_was_set_is_alerted_by_the_first_run_after_one_is() {
    let receiver = Receiver::start(&[]).await;
    let env = TestEnv::new().await;
    env.add_export().await;
    std::fs::remove_file(env.path("members.csv")).expect("remove the segment file");
    let unheard = env.run(&["export", "run", "weekly"]).await;
    env.rewrite_settings(|s| s.alerts.webhook_url = Some(WebhookUrl::from(receiver.url())))
        .expect("settings");

    let heard = env.run(&["export", "run", "weekly"]).await;

    assert_eq!((unheard.code(), heard.code()), (Some(1), Some(1)));
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["event"], "failed");
    assert_eq!(received[0].json()["run_id"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_is_one_alert_naming_the_connection_and_its_return_one_more() {
    let receiver = Receiver::start(&[]).await;
    let env = cli_env(&receiver, 50, "").await;
    let second_export: Vec<&str> = export_add_args(&[])
        .into_iter()
        .map(|a| if a == "weekly" { "daily" } else { a })
        .collect();
    env.run(&second_export).await.assert_ok();
    env.sandbox.inject(Fault {
        path_prefix: "/users/me".into(),
        times: 2,
        action: FaultAction::Status {
            status: 403,
            retry_after: None,
            body: r#"{"message":"Forbidden"}"#.into(),
        },
    });

    let rejected = [
        env.run(&["export", "run", "weekly"]).await,
        env.run(&["export", "run", "daily"]).await,
    ];
    let after_rejection = receiver.received();
    let accepted = [
        env.run(&["export", "run", "weekly"]).await,
        env.run(&["export", "run", "daily"]).await,
    ];

    for out in &rejected {
        assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    }
    for out in &accepted {
        out.assert_ok();
    }
    assert_eq!(after_rejection.len(), 1, "one alert for both exports");
    let alert = after_rejection[0].json();
    assert_eq!(alert["event"], "key-rejected");
    assert_eq!(alert["connection"], "crm");
    assert_eq!(alert["failure"], "key-rejected");
    let received = receiver.received();
    let events: Vec<String> = received
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(events, ["key-rejected", "key-accepted"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_gets_the_alert_in_a_cleared_environment() {
    let receiver = Receiver::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let written = dir.path().join("env.txt");
    let script = write_script(
        dir.path(),
        "alert.sh",
        &format!("env > {}.tmp && mv {0}.tmp {0}", written.display()),
    );
    let env = cli_env(
        &receiver,
        50,
        &format!("command = [\"{}\"]\n", script.display()),
    )
    .await;
    std::fs::remove_file(env.path("members.csv")).expect("remove the segment file");

    let out = env
        .run_env(
            &["export", "run", "weekly"],
            &[("SEGMENT_DB_URL", "postgres://u:hunter2@db/crm")],
        )
        .await;

    assert_eq!(out.code(), Some(1));
    let seen = wait_for_file(&written, Duration::from_secs(10)).await;
    for line in [
        "ACEXPORT_EVENT=failed",
        "ACEXPORT_EXPORT=weekly",
        "ACEXPORT_CONNECTION=crm",
        "ACEXPORT_RUN_ID=1",
        "ACEXPORT_STATUS=failed",
        "ACEXPORT_FAILURE=source",
        "ACEXPORT_ROWS_READ=0",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line} not in:\n{seen}");
    }
    assert!(seen.contains("ACEXPORT_ALERT_JSON={"), "{seen}");
    assert!(
        !seen.contains("hunter2"),
        "acexport's environment leaked:\n{seen}"
    );
    assert!(!seen.contains("ACEXPORT_CONFIG"), "{seen}");
    assert!(!seen.contains("ada@example.com") && !seen.contains("Lovelace"));
}

/// Whether process `pid` still exists (and is not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_outlasting_its_timeout_is_killed_with_what_it_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let script = write_script(
        dir.path(),
        "slow.sh",
        &format!(
            "echo started\nsleep 60 &\necho \"$$ $!\" > {}\nwait",
            pids.display()
        ),
    );
    let env = TestEnv::with_settings(&format!(
        "[alerts]\ncommand = [\"{}\"]\ncommand_timeout_secs = 1\n",
        script.display()
    ))
    .await;

    let started = Instant::now();
    let out = env.run(&["alerts", "test"]).await;
    let took = started.elapsed();

    assert_eq!(out.code(), Some(1));
    let stdout = out.stdout_text();
    assert!(
        stdout.contains("took longer than 1 s and was killed: started"),
        "{stdout}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let text = std::fs::read_to_string(&pids).expect("the script wrote its pids");
    for pid in text.split_whitespace() {
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "process {pid} outlived the timeout");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_test_reports_each_channel_and_fails_when_one_fails() {
    let receiver = Receiver::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = write_script(
        dir.path(),
        "fails.sh",
        "echo \"no pager today\" >&2\nexit 3",
    );
    let env = TestEnv::with_settings(&format!(
        "[alerts]\nwebhook_url = \"{}\"\ncommand = [\"{}\"]\n",
        receiver.url(),
        script.display()
    ))
    .await;

    let out = env.run(&["alerts", "test"]).await;

    assert_eq!(out.code(), Some(1));
    let stdout = out.stdout_text();
    let port = receiver.addr.port();
    assert!(
        stdout.contains(&format!(
            "webhook http://127.0.0.1:{port}/…: delivered (HTTP 200 after 1 attempt)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "command {}: FAILED: {0} exited with code 3: no pager today",
            script.display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-token"), "{stdout}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["event"], "test");
    assert_eq!(received[0].header("x-acexport-signature"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_test_succeeds_when_every_channel_takes_the_sample() {
    let receiver = Receiver::start(&[]).await;
    let env = TestEnv::with_settings("").await;
    let secret = write_secret(env.dir.path());
    env.rewrite_settings(|s| {
        s.alerts.webhook_url = Some(WebhookUrl::from(receiver.url()));
        s.alerts.webhook_secret_file = Some(secret);
    })
    .expect("settings");

    let out = env.run(&["alerts", "test"]).await;

    out.assert_ok();
    let received = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        received[0].header("x-acexport-signature"),
        expected_signature(&received[0].body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_test_without_a_channel_says_which_keys_to_set() {
    let env = TestEnv::new().await;

    let out = env.run(&["alerts", "test"]).await;

    out.assert_fails_with(1, "set alerts.webhook_url or alerts.command");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_http_webhook_off_loopback_is_refused_by_check_config() {
    let env = TestEnv::new().await;
    let config = env.write(
        "remote-hook.toml",
        "[alerts]\nwebhook_url = \"http://hooks.example.com/T0/secret-token\"\n",
    );

    let out = env.run(&["--config", &config, "check-config"]).await;

    out.assert_fails_with(78, "alerts.webhook_url");
    assert!(out.stderr_text().contains("http://hooks.example.com/…"));
    assert!(!out.stderr_text().contains("secret-token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_shows_the_alert_settings_with_the_webhook_cut_to_its_host() {
    let receiver = Receiver::start(&[]).await;
    let env = cli_env(&receiver, 50, "").await;

    let out = env.run(&["check-config"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let port = receiver.addr.port();
    assert!(
        stdout.contains(&format!(
            "alerts.webhook_url = \"http://127.0.0.1:{port}/…\""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("alerts.command_timeout_secs = 30"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-token"), "{stdout}");
}
