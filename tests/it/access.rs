//! Roles as a team meets them: a real daemon serving its control socket, and the real binary
//! run as other users (the test is root; the users are the system's own `daemon`, `bin`, `sys`
//! and `nobody`, so nothing is created). Every refusal exits 77, names the role or the reason,
//! and changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use acexport::sandbox::world::World;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::daemon::{DaemonProcess, signal, wait_exit};
use super::support::{API_KEY, OutputExt, TestEnv};

/// The system users the tests act as, by role (see `settings()`).
const ADMIN: (u32, &str) = (2, "bin");
const CONTRIBUTOR: (u32, &str) = (1, "daemon");
const VIEWER: (u32, &str) = (3, "sys");
const NOBODY: (u32, &str) = (65534, "nobody");

const NO_PERMISSION: i32 = 77;

struct Team {
    env: TestEnv,
    daemon: Option<DaemonProcess>,
    socket: PathBuf,
}

impl Team {
    /// A world whose folder others may enter, roles for `bin` (admin), `daemon` (contributor)
    /// and group `sys` (viewer), and a daemon serving it.
    async fn start() -> Team {
        let world = World::builder()
            .token(API_KEY)
            .setting("activecampaign.retry_base_ms", 10)
            .setting("activecampaign.max_attempts", 2)
            .settings_toml(
                "[access]\nadmins = [\"bin\"]\ncontributors = [\"daemon\"]\nviewers = [\"@sys\"]\n",
            )
            .build()
            .await
            .expect("world");
        let env = TestEnv::on(world);
        let socket = env.path("run/control.sock");
        env.rewrite_settings(|s| s.daemon.socket = Some(socket.clone()))
            .expect("settings");
        for (path, mode) in [
            (env.dir.path().to_path_buf(), 0o755),
            (env.config.clone(), 0o644),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::fs::create_dir(env.path("run")).expect("mkdir run");
        std::fs::set_permissions(env.path("run"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod run");
        let mut team = Team {
            env,
            daemon: None,
            socket,
        };
        team.start_daemon().await;
        team
    }

    async fn start_daemon(&mut self) {
        let log = std::fs::File::create(self.env.path("daemon.log")).expect("log");
        let mut cmd = self.env.command(env!("CARGO_BIN_EXE_acexport"));
        cmd.arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.daemon = Some(DaemonProcess::new(cmd.spawn().expect("daemon starts")));
        for _ in 0..200 {
            if UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the daemon never served its socket; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.env.path("daemon.log")).unwrap_or_default()
    }

    /// Runs the binary as `user` (uid and primary gid; no supplementary groups).
    async fn as_user(&self, user: (u32, &str), args: &[&str]) -> Output {
        self.as_user_stdin(user, args, None).await
    }

    async fn as_user_stdin(&self, user: (u32, &str), args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = self.env.command(env!("CARGO_BIN_EXE_acexport"));
        cmd.args(args)
            .uid(user.0)
            .gid(user.0)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn as user");
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("finished")
            .expect("output");
        for bytes in [&out.stdout, &out.stderr] {
            assert!(
                !super::support::contains(bytes, API_KEY.as_bytes()),
                "key printed"
            );
        }
        out
    }

    /// As root, through the daemon like everyone else.
    async fn as_root(&self, args: &[&str]) -> Output {
        self.as_user((0, "root"), args).await
    }

    /// Connections "Marketing AC" (shared with contributors) and "Private AC" (admins only),
    /// segment "members" and export "Weekly news" on the shared one.
    async fn define(&self) {
        for (name, shared) in [("Marketing AC", true), ("Private AC", false)] {
            let host = self.env.host();
            let mut args = vec![
                "connection",
                "add",
                name,
                "--host",
                &host,
                "--api-key-stdin",
                "--accept-data-transfer",
            ];
            if shared {
                args.push("--allow-contributors");
            }
            self.as_user_stdin((0, "root"), &args, Some(API_KEY))
                .await
                .assert_ok();
        }
        let csv = self.shared_file(
            "members.csv",
            "email,first_name\nada@example.com,Ada\nalan@example.com,Alan\n",
        );
        self.as_root(&["segment", "add", "members", "--csv", &csv])
            .await
            .assert_ok();
        self.as_root(&export_args("Weekly news", "Marketing AC"))
            .await
            .assert_ok();
    }

    /// A file everyone may read, in a folder everyone may enter.
    fn shared_file(&self, name: &str, contents: &str) -> String {
        let dir = self.env.path("shared");
        if !dir.exists() {
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path.display().to_string()
    }

    async fn root_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.as_root(args).await;
        out.assert_ok();
        serde_json::from_slice(&out.stdout).expect("json")
    }

    async fn stop(mut self) {
        if let Some(daemon) = self.daemon.as_mut() {
            signal(daemon, "TERM");
            assert!(wait_exit(daemon, Duration::from_secs(15)).success());
        }
    }
}

fn export_args<'a>(name: &'a str, connection: &'a str) -> Vec<&'a str> {
    vec![
        "export",
        "add",
        name,
        "--connection",
        connection,
        "--list",
        "1",
        "--segment",
        "members",
        "--email",
        "email",
    ]
}

/// Exit 1 with a message on stderr that contains `needle`: what the user may not see does not
/// exist for them.
fn assert_unknown(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected 1; stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

/// Exit 77 with a message on stderr that contains `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(NO_PERMISSION),
        "expected 77; stdout: {}; stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_contributor_sees_only_shared_connections_by_name_type_and_status() {
    let team = Team::start().await;
    team.define().await;
    let host = team.env.host();
    let host = host.trim_start_matches("http://");
    let hint = &API_KEY[API_KEY.len() - 4..];
    for args in [
        vec!["connection", "list"],
        vec!["connection", "list", "--json"],
        vec!["connection", "show", "Marketing AC"],
        vec!["connection", "show", "Marketing AC", "--json"],
        vec!["export", "show", "Weekly news", "--json"],
        vec!["status", "--json"],
    ] {
        let out = team.as_user(CONTRIBUTOR, &args).await;
        out.assert_ok();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains(host), "{args:?} showed the host: {stdout}");
        assert!(
            !stdout.contains(hint),
            "{args:?} showed the key hint: {stdout}"
        );
        assert!(!stdout.contains("Private AC"), "{args:?}: {stdout}");
    }
    let list = team
        .as_user(CONTRIBUTOR, &["connection", "list", "--json"])
        .await;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(
        list,
        serde_json::json!([{"name": "Marketing AC", "type": "ActiveCampaign", "status": "verified"}])
    );
    // A connection kept for admins does not exist for the others.
    assert_unknown(
        &team
            .as_user(CONTRIBUTOR, &["connection", "show", "Private AC"])
            .await,
        "connection \"Private AC\" does not exist",
    );
    // An error that quotes the address (an unknown custom field) does not show it either.
    let mut args = export_args("Fields", "Marketing AC");
    args.extend(["--field", "999=first_name"]);
    let out = team.as_user(CONTRIBUTOR, &args).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("custom field 999 not found in ActiveCampaign at [address hidden]"),
        "{stderr}"
    );
    assert!(!stderr.contains(host), "{stderr}");
    // Admins see everything, the host included.
    let admin = team.as_user(ADMIN, &["connection", "list"]).await;
    admin.assert_ok();
    let stdout = String::from_utf8_lossy(&admin.stdout);
    assert!(
        stdout.contains(host) && stdout.contains("Private AC"),
        "{stdout}"
    );
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn only_admins_add_update_test_share_and_remove_connections_and_refusals_change_nothing() {
    let team = Team::start().await;
    team.define().await;
    let before = team.root_json(&["connection", "list", "--json"]).await;
    let host = team.env.host();
    for user in [CONTRIBUTOR, VIEWER] {
        let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
            (
                vec![
                    "connection",
                    "add",
                    "Mine",
                    "--host",
                    &host,
                    "--api-key-stdin",
                    "--accept-data-transfer",
                ],
                Some(API_KEY),
                "may not add connections: that needs the admin role",
            ),
            (
                vec![
                    "connection",
                    "update",
                    "Private AC",
                    "--allow-contributors",
                    "true",
                ],
                None,
                "may not share connections: that needs the admin role",
            ),
            (
                vec!["connection", "test", "Marketing AC"],
                None,
                "may not test connections",
            ),
            (
                vec!["connection", "remove", "Marketing AC", "--force"],
                None,
                "may not remove connections",
            ),
            (vec!["audit"], None, "may not read the audit log"),
            (
                vec!["trigger", "--all"],
                None,
                "may not run every export at once",
            ),
        ];
        for (args, input, needle) in cases {
            let out = team.as_user_stdin(user, &args, input).await;
            assert_refused(&out, needle);
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("user \"{}\"", user.1)),
                "the refusal names the user"
            );
        }
    }
    assert_eq!(
        team.root_json(&["connection", "list", "--json"]).await,
        before
    );
    let exports = team.root_json(&["export", "list", "--json"]).await;
    assert_eq!(
        exports.as_array().map(Vec::len),
        Some(1),
        "nothing removed: {exports}"
    );
    // An admin by name does all of it.
    team.as_user(ADMIN, &["connection", "test", "Private AC"])
        .await
        .assert_ok();
    team.as_user(
        ADMIN,
        &[
            "connection",
            "update",
            "Private AC",
            "--allow-contributors",
            "true",
        ],
    )
    .await
    .assert_ok();
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_contributor_defines_and_runs_exports_on_shared_connections_only() {
    let team = Team::start().await;
    team.define().await;
    team.as_user(CONTRIBUTOR, &export_args("Contributor's", "Marketing AC"))
        .await
        .assert_ok();
    assert_unknown(
        &team
            .as_user(CONTRIBUTOR, &export_args("Sneaky", "Private AC"))
            .await,
        "connection \"Private AC\" does not exist",
    );
    // An admin's export on the private connection is out of reach.
    team.as_root(&export_args("Private list", "Private AC"))
        .await
        .assert_ok();
    for args in [
        vec!["export", "disable", "Private list"],
        vec!["export", "remove", "Private list"],
        vec!["export", "run", "Private list"],
        vec!["trigger", "Private list"],
        vec!["cancel", "Private list"],
        vec![
            "export",
            "update",
            "Contributor's",
            "--connection",
            "Private AC",
        ],
        vec!["runs", "--export", "Private list"],
    ] {
        assert_unknown(&team.as_user(CONTRIBUTOR, &args).await, "does not exist");
    }
    let out = team
        .as_user(CONTRIBUTOR, &["export", "run", "Contributor's", "--json"])
        .await;
    out.assert_ok();
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    let run_id = outcome["run_id"].as_i64().expect("run id");
    let run = team
        .root_json(&["runs", "show", &run_id.to_string(), "--json"])
        .await;
    assert_eq!(run["run"]["requested_by"], "daemon", "{run}");
    // The contributor's listing shows their exports, not the private one.
    let list = team
        .as_user(CONTRIBUTOR, &["export", "list", "--json"])
        .await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("Contributor's") && !text.contains("Private list"),
        "{text}"
    );
    // Everything the contributor did is audited under their name.
    let audit = team.root_json(&["audit", "--json"]).await;
    let by_contributor: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["actor"] == "daemon")
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert!(by_contributor.contains(&"export.add"), "{audit}");
    assert!(by_contributor.contains(&"run.request"), "{audit}");
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn changing_a_connections_sharing_takes_effect_at_once_without_touching_its_exports() {
    let team = Team::start().await;
    team.define().await;
    let before = team
        .root_json(&["export", "show", "Weekly news", "--json"])
        .await;
    team.as_user(CONTRIBUTOR, &["export", "show", "Weekly news"])
        .await
        .assert_ok();
    team.as_root(&[
        "connection",
        "update",
        "Marketing AC",
        "--allow-contributors",
        "false",
    ])
    .await
    .assert_ok();
    for args in [
        vec!["export", "show", "Weekly news"],
        vec!["export", "disable", "Weekly news"],
        vec!["trigger", "Weekly news"],
    ] {
        assert_unknown(
            &team.as_user(CONTRIBUTOR, &args).await,
            "export \"Weekly news\" does not exist",
        );
    }
    let listed = team
        .as_user(CONTRIBUTOR, &["export", "list", "--json"])
        .await;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "[]");
    let after = team
        .root_json(&["export", "show", "Weekly news", "--json"])
        .await;
    assert_eq!(
        before["updated_at"], after["updated_at"],
        "the export was not touched"
    );
    team.as_root(&[
        "connection",
        "update",
        "Marketing AC",
        "--allow-contributors",
        "true",
    ])
    .await
    .assert_ok();
    team.as_user(CONTRIBUTOR, &["export", "disable", "Weekly news"])
        .await
        .assert_ok();
    let audit = team.root_json(&["audit", "--json"]).await;
    let shares = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "connection.share" && e["actor"] == "root")
        .count();
    assert_eq!(shares, 4, "two at add, two updates: {audit}");
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_viewer_reads_exports_runs_and_status_and_changes_nothing() {
    let team = Team::start().await;
    team.define().await;
    team.as_root(&["export", "run", "Weekly news"])
        .await
        .assert_ok();
    for args in [
        vec!["export", "list"],
        vec!["export", "show", "Weekly news"],
        vec!["runs"],
        vec!["runs", "--export", "Weekly news", "--json"],
        vec!["status"],
    ] {
        team.as_user(VIEWER, &args).await.assert_ok();
    }
    let runs = team.as_user(VIEWER, &["runs", "--json"]).await;
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("json");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    for (args, needle) in [
        (
            vec!["segment", "preview", "members"],
            "needs the contributor role",
        ),
        (vec!["segment", "list"], "needs the contributor role"),
        (
            vec!["export", "disable", "Weekly news"],
            "needs the contributor role",
        ),
        (
            vec!["export", "run", "Weekly news"],
            "needs the contributor role",
        ),
        (vec!["trigger", "Weekly news"], "needs the contributor role"),
        (vec!["cancel", "Weekly news"], "needs the contributor role"),
        (
            vec!["export", "remove", "Weekly news"],
            "needs the contributor role",
        ),
    ] {
        assert_refused(&team.as_user(VIEWER, &args).await, needle);
    }
    let export = team
        .root_json(&["export", "show", "Weekly news", "--json"])
        .await;
    assert_eq!(export["enabled"], true);
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_user_without_a_role_is_refused_everything() {
    let team = Team::start().await;
    team.define().await;
    for args in [vec!["status"], vec!["export", "list"], vec!["runs"]] {
        assert_refused(
            &team.as_user(NOBODY, &args).await,
            "user \"nobody\" has no role here",
        );
    }
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn contributors_add_segments_only_from_files_they_can_read_and_never_sql() {
    let team = Team::start().await;
    team.define().await;
    let readable = team.shared_file("theirs.csv", "email\nada@example.com\n");
    team.as_user(
        CONTRIBUTOR,
        &["segment", "add", "Theirs", "--csv", &readable],
    )
    .await
    .assert_ok();
    // The daemon could read this one; the contributor cannot.
    let private = team.env.write("private.csv", "email\nsecret@example.com\n");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = team
        .as_user(
            CONTRIBUTOR,
            &["segment", "add", "Stolen", "--csv", &private],
        )
        .await;
    assert_refused(&out, "is not readable by \"daemon\"");
    let db = format!("sqlite:{}", team.env.store_path().display());
    let out = team
        .as_user(
            CONTRIBUTOR,
            &[
                "segment",
                "add",
                "Db",
                "--sql",
                "SELECT 1 AS email",
                "--database",
                &db,
            ],
        )
        .await;
    assert_refused(&out, "may not use SQL sources: that needs the admin role");
    let segments = team.root_json(&["segment", "list", "--json"]).await;
    let mut names: Vec<&str> = segments
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Theirs", "members"]);
    // A segment read by an export on an admins-only connection is the admins' to change.
    team.as_root(&export_args("Private list", "Private AC"))
        .await
        .assert_ok();
    assert_refused(
        &team
            .as_user(
                CONTRIBUTOR,
                &["segment", "update", "members", "--csv", &readable],
            )
            .await,
        "an export on a connection kept for admins reads it",
    );
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn signal_files_are_authorized_as_their_owner_and_the_run_names_them() {
    let team = Team::start().await;
    team.define().await;
    let dir = team.env.trigger_dir();
    let drop_as = |owner: u32, name: &str, body: &str| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).expect("write");
        std::os::unix::fs::chown(&tmp, Some(owner), Some(owner)).expect("chown");
        std::fs::rename(&tmp, dir.join(format!("{name}.trigger"))).expect("rename");
    };
    drop_as(VIEWER.0, "viewer", r#"{"export":"Weekly news"}"#);
    drop_as(CONTRIBUTOR.0, "all", r#"{"all":true,"full":true}"#);
    drop_as(
        CONTRIBUTOR.0,
        "contributor",
        r#"{"export":"Weekly news","requested_by":"root"}"#,
    );
    let ctx = team.env.open_context().await.expect("store");
    let mut run = None;
    for _ in 0..200 {
        if let Some(r) = ctx
            .store
            .runs(None, 10)
            .await
            .expect("runs")
            .into_iter()
            .next()
            && r.finished_at.is_some()
        {
            run = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = run.unwrap_or_else(|| panic!("no run; log:\n{}", team.log()));
    assert_eq!(run.requested_by.as_deref(), Some("daemon (note: root)"));
    assert!(
        !run.full,
        "the contributor's {{\"all\":true,\"full\":true}} was refused"
    );
    let reasons = rejection_reasons(&dir);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("user \"sys\" (viewer) may not run exports")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("may not run every export at once")),
        "{reasons:?}"
    );
    assert_eq!(ctx.store.runs(None, 10).await.expect("runs").len(), 1);
    ctx.close().await;
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn the_actor_is_who_connects_never_the_user_variable() {
    let team = Team::start().await;
    let host = team.env.host();
    let mut cmd = team.env.command(env!("CARGO_BIN_EXE_acexport"));
    cmd.args([
        "connection",
        "add",
        "Marketing AC",
        "--host",
        &host,
        "--api-key-stdin",
        "--accept-data-transfer",
    ])
    .env("USER", "someone-else")
    .env("LOGNAME", "someone-else")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd).spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(API_KEY.as_bytes())
        .await
        .expect("key");
    let out = child.wait_with_output().await.expect("output");
    out.assert_ok();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accepted by root at"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let audit = team.root_json(&["audit", "--json"]).await;
    let text = audit.to_string();
    assert!(!text.contains("someone-else"), "{text}");
    assert!(
        audit
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["actor"] == "root"),
        "{text}"
    );
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn display_names_are_free_and_unique_ignoring_case() {
    let team = Team::start().await;
    team.define().await;
    let out = team
        .as_user_stdin(
            (0, "root"),
            &[
                "connection",
                "add",
                "marketing ac",
                "--host",
                &team.env.host(),
                "--api-key-stdin",
                "--accept-data-transfer",
            ],
            Some(API_KEY),
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = team
        .as_root(&["segment", "add", "bad\tname", "--csv", "/dev/null"])
        .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"));
    // Names are one name ignoring case, for lookups too.
    let shown = team
        .root_json(&["export", "show", "WEEKLY news", "--json"])
        .await;
    assert_eq!(shown["name"], "Weekly news");
    team.as_root(&["connection", "show", "marketing ac"])
        .await
        .assert_ok();
    team.stop().await;
}

/// The reasons the daemon wrote for the signal files it rejected.
fn rejection_reasons(trigger_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(trigger_dir.join("rejected"))
        .expect("rejected")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".reason"))
        .map(|e| std::fs::read_to_string(e.path()).expect("reason"))
        .collect()
}

/// Sends raw bytes on the control socket and returns the answer's lines.
async fn raw_request(socket: &PathBuf, bytes: &[u8], close_write: bool) -> Vec<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    if close_write {
        stream.shutdown().await.expect("shutdown");
    }
    let mut lines = BufReader::new(stream).lines();
    let mut out = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        out.push(serde_json::from_str(&line).expect("each answer line is JSON"));
    }
    out
}

#[tokio::test]
async fn garbage_on_the_control_socket_gets_an_error_and_the_daemon_keeps_serving() {
    let mut team = Team {
        env: TestEnv::new().await,
        daemon: None,
        socket: PathBuf::new(),
    };
    team.socket = team.env.path("control.sock");
    let socket = team.socket.clone();
    team.env
        .rewrite_settings(|s| s.daemon.socket = Some(socket.clone()))
        .expect("settings");
    team.start_daemon().await;
    let mut oversized = vec![b'x'; 1024 * 1024 + 10];
    oversized.push(b'\n');
    let cases: Vec<(Vec<u8>, bool, &str)> = vec![
        (br#"{"v":1,"command":{"status":{"#.to_vec(), true, "cut off"),
        (oversized, false, "over 1048576 bytes"),
        (b"{not json}\n".to_vec(), true, "not a JSON object"),
        (br#"{"v":99,"command":{"status":{"json":true}}}"#.iter().chain(b"\n").copied().collect(), true, "protocol version 99"),
        (br#"{"v":1,"command":{"format-disk":{}}}"#.iter().chain(b"\n").copied().collect(), true, "does not know this command"),
        (br#"{"v":1,"command":{"connection":{"add":{"name":"x","host":"h","key":{"api_key_file":"/etc/shadow","api_key_env":null,"api_key_stdin":false},"allow_contributors":false,"accept_data_transfer":true}}}}"#.iter().chain(b"\n").copied().collect(), true, "only the client can read"),
    ];
    for (bytes, close, needle) in cases {
        let answer = raw_request(&team.socket, &bytes, close).await;
        let last = answer.last().expect("an answer");
        assert_eq!(last["exit"], 76, "{needle}: {answer:?}");
        let text = answer
            .iter()
            .filter_map(|l| l["err"].as_str())
            .collect::<String>();
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    // Still serving, and the real client works.
    let out = team.env.run(&["status", "--json"]).await;
    out.assert_ok();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["daemon"]["up"], true, "{status}");
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_link_swapped_in_after_a_contributor_added_a_segment_does_not_lend_the_daemon_access() {
    let team = Team::start().await;
    team.define().await;
    let mine = team.shared_file("mine.csv", "email\nada@example.com\n");
    team.as_user(CONTRIBUTOR, &["segment", "add", "Mine", "--csv", &mine])
        .await
        .assert_ok();
    let mut args = export_args("Leak", "Marketing AC");
    args[8] = "Mine";
    team.as_user(CONTRIBUTOR, &args).await.assert_ok();
    // Root's file, then the contributor's file replaced by a link to it.
    let private = team.env.write("private.csv", "email\nsecret@example.com\n");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::remove_file(&mine).expect("rm");
    std::os::unix::fs::symlink(&private, &mine).expect("symlink");
    let preview = team
        .as_user(CONTRIBUTOR, &["segment", "preview", "Mine"])
        .await;
    assert_refused(&preview, "is not readable by \"daemon\"");
    assert!(
        !String::from_utf8_lossy(&preview.stdout).contains("secret"),
        "rows shown"
    );
    let out = team
        .as_user(CONTRIBUTOR, &["export", "run", "Leak", "--json"])
        .await;
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let error = outcome["error"].as_str().unwrap_or_default();
    assert!(error.contains("(uid 1) cannot read it"), "{error}");
    assert!(
        !team
            .env
            .sandbox
            .contacts()
            .iter()
            .any(|c| c.email.contains("secret")),
        "the private file's row reached ActiveCampaign"
    );
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn a_fifo_or_a_proc_file_is_refused_at_once_and_the_daemon_serves_on() {
    let team = Team::start().await;
    team.define().await;
    let fifo = team.env.path("shared/pipe.csv");
    team.shared_file("placeholder.csv", "email\n");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o666),
        0,
    )
    .expect("mkfifo");
    let started = std::time::Instant::now();
    let out = team
        .as_user(
            CONTRIBUTOR,
            &[
                "segment",
                "add",
                "Pipe",
                "--csv",
                &fifo.display().to_string(),
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not hang"
    );
    let out = team
        .as_user(
            CONTRIBUTOR,
            &["segment", "add", "Maps", "--csv", "/proc/self/maps"],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("under /proc"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    team.as_root(&["status"]).await.assert_ok();
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn an_admins_sql_segment_is_neither_read_nor_exported_by_a_contributor() {
    let team = Team::start().await;
    team.define().await;
    let db = team.env.path("vip.db");
    std::fs::write(&db, "").expect("empty database");
    let url = format!("sqlite:{}", db.display());
    team.as_root(&[
        "segment",
        "add",
        "Vip",
        "--sql",
        "SELECT 'vip@example.com' AS email",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    for args in [
        vec!["segment", "preview", "Vip"],
        vec!["segment", "show", "Vip"],
    ] {
        assert_refused(
            &team.as_user(CONTRIBUTOR, &args).await,
            "may not read SQL segments: that needs the admin role",
        );
    }
    let list = team
        .as_user(CONTRIBUTOR, &["segment", "list", "--json"])
        .await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        !text.contains("SELECT") && !text.contains("vip.db"),
        "{text}"
    );
    let mut args = export_args("Vip export", "Marketing AC");
    args[8] = "Vip";
    assert_refused(
        &team.as_user(CONTRIBUTOR, &args).await,
        "may not read SQL segments",
    );
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn idle_connections_of_one_user_cannot_lock_the_others_out() {
    let team = Team::start().await;
    // More silent connections as a user without a role than the daemon has slots: without a
    // share per user they would hold every slot until their requests time out (5 s).
    let mut idle: Vec<std::process::Child> = (0..70)
        .map(|_| connect_as(NOBODY.0, &team.socket))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = std::time::Instant::now();
    team.as_root(&["status"]).await.assert_ok();
    team.as_user(VIEWER, &["status"]).await.assert_ok();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for child in &mut idle {
        let _ = child.kill();
        let _ = child.wait();
    }
    team.stop().await;
}

/// A process running as `uid` that connects to `socket` and says nothing for 30 s.
fn connect_as(uid: u32, socket: &std::path::Path) -> std::process::Child {
    std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntime.sleep(30)",
        ])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn a silent client")
}

#[tokio::test]
#[ignore = "needs root: gives files other owners"]
async fn a_signal_file_others_could_write_or_that_has_another_name_is_refused() {
    let team = Team::start().await;
    team.define().await;
    let dir = team.env.trigger_dir();
    let place = |name: &str, mode: u32| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, r#"{"export":"Weekly news"}"#).expect("write");
        std::os::unix::fs::chown(&tmp, Some(CONTRIBUTOR.0), Some(CONTRIBUTOR.0)).expect("chown");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
        tmp
    };
    let writable = place("writable", 0o664);
    std::fs::rename(&writable, dir.join("writable.trigger")).expect("rename");
    let linked = place("linked", 0o644);
    std::fs::hard_link(&linked, dir.join("linked.trigger")).expect("link");
    let mut reasons = Vec::new();
    for _ in 0..100 {
        reasons = rejection_reasons(&dir);
        if reasons.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("can be written by others")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("other hard links")),
        "{reasons:?}"
    );
    let runs = team.root_json(&["runs", "--json"]).await;
    assert_eq!(runs, serde_json::json!([]), "nothing ran");
    team.stop().await;
}

#[tokio::test]
#[ignore = "needs root: runs the CLI as other users"]
async fn export_run_json_through_the_daemon_says_how_the_run_ended_when_the_daemon_stops() {
    use acexport::sandbox::{Fault, FaultAction};
    let mut team = Team::start().await;
    team.define().await;
    team.env.sandbox.inject(Fault {
        path_prefix: "/api/3/import/bulk_import".into(),
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(4)),
    });
    let mut cmd = team.env.command(env!("CARGO_BIN_EXE_acexport"));
    cmd.args(["export", "run", "Weekly news", "--json"])
        .uid(CONTRIBUTOR.0)
        .gid(CONTRIBUTOR.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd).spawn().expect("spawn");
    let ctx = team.env.open_context().await.expect("store");
    for _ in 0..100 {
        if !ctx.store.runs(None, 1).await.expect("runs").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.close().await;
    let daemon = team.daemon.as_mut().expect("daemon");
    signal(daemon, "TERM");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("done")
        .expect("output");
    assert!(wait_exit(daemon, Duration::from_secs(60)).success());
    team.daemon = None;
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON object on every path ({e}); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The daemon stopped the run at its next batch; the client was told so, as JSON.
    assert_eq!(outcome["status"], "interrupted", "{outcome}");
    assert_eq!(outcome["export"], "Weekly news");
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn a_client_that_hangs_up_stops_its_request_and_one_that_only_shuts_writing_gets_its_answer()
{
    use acexport::sandbox::{Fault, FaultAction};
    let mut team = Team {
        env: TestEnv::new().await,
        daemon: None,
        socket: PathBuf::new(),
    };
    team.socket = team.env.path("control.sock");
    let socket = team.socket.clone();
    team.env
        .rewrite_settings(|s| s.daemon.socket = Some(socket.clone()))
        .expect("settings");
    team.env.add_export().await;
    team.start_daemon().await;
    // Shut writing only, as `printf … | nc -U` does: the answer still comes.
    let status = br#"{"v":1,"command":{"status":{"json":true}}}"#
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<u8>>();
    let answer = raw_request(&team.socket, &status, true).await;
    assert_eq!(answer.last().expect("an answer")["exit"], 0, "{answer:?}");
    // Hang up while following a run that takes a while: the daemon stops following.
    team.env.sandbox.inject(Fault {
        path_prefix: "/api/3/import/bulk_import".into(),
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(3)),
    });
    let run = br#"{"v":1,"command":{"export":{"run":{"name":"weekly","dry_run":false,"full":false,"json":true}}}}"#
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<u8>>();
    let mut stream = UnixStream::connect(&team.socket).await.expect("connect");
    stream.write_all(&run).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    let log = team.env.path("daemon.log");
    let mut said = false;
    for _ in 0..50 {
        said = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Control client left; its request stopped");
        if said {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said, "{}", team.log());
    team.stop().await;
}
