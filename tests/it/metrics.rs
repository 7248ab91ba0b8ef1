//! `/metrics` and `/healthz` of a real daemon: the binary as a child process with
//! `metrics.listen` on a free loopback port, an export run against the sandbox, and the scrape
//! read by a Prometheus text parser.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};

use super::daemon::{Env, finished, sandbox_options, signal, wait_exit};
use acexport::store::RunStatus;

/// Loopback on a port the kernel picks; the daemon logs the one it got.
const ANY_LOOPBACK_PORT: &str = "127.0.0.1:0";

/// The address the daemon serves on, from its log.
async fn served_at(env: &Env) -> String {
    let start = Instant::now();
    loop {
        let log = env.log();
        if let Some(line) = log.lines().find(|l| l.contains("Serving /metrics")) {
            return line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line:?}"))
                .to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon does not serve metrics; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(addr: &str, path: &str) -> (u16, String) {
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("the daemon answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.expect("body"))
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s: &&Sample| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_run_shows_in_metrics_that_a_prometheus_parser_reads() {
    let env = Env::new(sandbox_options(0), 40, None).await;
    env.rewrite_settings(|s| s.metrics.listen = Some(ANY_LOOPBACK_PORT.to_owned()))
        .expect("settings");
    let mut daemon = env.start(None);
    let addr = served_at(&env).await;
    env.wait_ready().await;
    let (health, says) = get(&addr, "/healthz").await;

    env.trigger_run();
    let runs = env
        .wait_for("the run", Duration::from_secs(20), |r| {
            r.first().is_some_and(finished)
        })
        .await;
    // The daemon records the outcome just after the run's finish reaches the database.
    let start = Instant::now();
    let scrape = loop {
        let (status, text) = get(&addr, "/metrics").await;
        assert_eq!(status, 200);
        let scrape = parse(&text);
        let succeeded = [("export", "people-list"), ("status", "succeeded")];
        if value(&scrape, "acexport_runs_total", &succeeded) == Some(1.0) {
            break scrape;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no succeeded run in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());

    assert_eq!((health, says.trim()), (200, "ok"));
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    let export = [("export", "people-list")];
    let upserted = [("export", "people-list"), ("outcome", "upserted")];
    assert_eq!(
        value(&scrape, "acexport_profiles_total", &upserted),
        Some(40.0)
    );
    for endpoint in ["users/me", "lists/:id", "import/bulk_import", "import/info"] {
        let ok = [("endpoint", endpoint), ("status", "200")];
        let sent = value(&scrape, "acexport_activecampaign_requests_total", &ok);
        assert!(sent.is_some_and(|n| n >= 1.0), "{endpoint}: {sent:?}");
    }
    let last =
        value(&scrape, "acexport_last_success_timestamp_seconds", &export).expect("last success");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 120.0..=now + 1.0).contains(&last), "{last} vs {now}");
    let bulk = [("kind", "bulk_import")];
    let permits = value(
        &scrape,
        "acexport_activecampaign_budget_permits_total",
        &bulk,
    );
    assert!(permits.is_some_and(|n| n >= 1.0), "{permits:?}");
    assert_eq!(
        value(
            &scrape,
            "acexport_activecampaign_budget_limit",
            &[("limit", "requests_per_second")]
        ),
        Some(1000.0)
    );
    assert_eq!(value(&scrape, "acexport_runs_running", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_carry_no_profile_value() {
    let env = Env::new(sandbox_options(0), 12, None).await;
    env.rewrite_settings(|s| s.metrics.listen = Some(ANY_LOOPBACK_PORT.to_owned()))
        .expect("settings");
    let mut daemon = env.start(None);
    let addr = served_at(&env).await;
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("the run", Duration::from_secs(20), |r| {
        r.first().is_some_and(finished)
    })
    .await;

    let (_, text) = get(&addr, "/metrics").await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());

    // The segment's rows are person{i}@example.com, Given{i}, Family{i}, 555-{i:05}.
    for value in ["person", "example.com", "Given", "Family", "555-"] {
        assert!(!text.contains(value), "{value:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_metrics_address_is_refused_unless_remote_is_allowed() {
    let env = Env::new(sandbox_options(0), 1, None).await;
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        env.command(env!("CARGO_BIN_EXE_acexport"))
            .args(args)
            .envs(vars.iter().copied())
            .output()
            .expect("acexport runs")
    };
    let remote = ("ACEXPORT_METRICS__LISTEN", "0.0.0.0:9464");

    let check = run(&["check-config"], &[remote]);
    let daemon = run(&["daemon"], &[remote]);
    let allowed = run(
        &["check-config"],
        &[remote, ("ACEXPORT_METRICS__ALLOW_REMOTE", "true")],
    );

    for refused in [&check, &daemon] {
        assert_eq!(refused.status.code(), Some(78));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("metrics.listen"), "{stderr}");
        assert!(stderr.contains("metrics.allow_remote = true"), "{stderr}");
    }
    assert!(allowed.status.success(), "{allowed:?}");
    let lines = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        lines.contains("metrics.listen = \"0.0.0.0:9464\""),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_metrics_port_stops_the_daemon_start_naming_the_address() {
    let env = Env::new(sandbox_options(0), 1, None).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    env.rewrite_settings(|s| s.metrics.listen = Some(addr.clone()))
        .expect("settings");

    let mut daemon = env.start(None);
    let status = wait_exit(&mut daemon, Duration::from_secs(20));

    assert_eq!(status.code(), Some(1), "log:\n{}", env.log());
    let log = env.log();
    assert!(
        log.contains(&format!("cannot serve metrics on {addr} (metrics.listen)")),
        "{log}"
    );
    assert!(!log.contains("Daemon ready"), "{log}");
}

/// The metrics module is the bottom layer: the engine records into it, so it must not reach
/// back up into anything of the crate.
#[test]
fn the_metrics_module_depends_on_nothing_else_in_the_crate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src/metrics") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for forbidden in ["crate::", "super::super"] {
            if text.contains(forbidden) {
                found.insert(path.display().to_string(), forbidden);
            }
        }
    }
    assert_eq!(found, BTreeMap::new());
}
