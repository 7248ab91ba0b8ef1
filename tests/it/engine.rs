//! The export engine against the sandbox over loopback, with a real SQLite store: what
//! `acexport export run` promises, one behaviour per test.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acexport::pipeline::{RunOptions, RunOutcome, Silent};
use acexport::sandbox::{Fault, FaultAction, ListStatus, Sandbox, SandboxOptions};
use acexport::service::Context;
use acexport::service::connections::AddConnection;
use acexport::service::exports::ExportInput;
use acexport::settings::Settings;
use acexport::store::RunStatus;
use acexport::store::TriggerKind;
use acexport::store::exports::OnLeave;
use secrecy::SecretString;

const TOKEN: &str = "engine-test-token-0001";

/// One test's world (folder, settings file, sandbox) and a context on its store holding
/// connection `ac`. It derefs to the world, so tests reach `h.sandbox` and `h.dir` directly.
struct Harness {
    world: acexport::sandbox::world::World,
    ctx: Context,
}

impl std::ops::Deref for Harness {
    type Target = acexport::sandbox::world::World;

    fn deref(&self) -> &Self::Target {
        &self.world
    }
}

fn fast_sandbox() -> SandboxOptions {
    acexport::sandbox::world::test_sandbox_options(TOKEN)
}

/// The settings of the harness's world in `dir` as a new process reads them: its settings
/// file, without a test's tweak.
fn settings_in(dir: &std::path::Path) -> Settings {
    acexport::sandbox::world::World::load_settings(dir).expect("settings")
}

/// `n` profiles: email, first, last, phone, tier.
fn csv_rows(n: usize) -> String {
    let mut out = String::from("email,first,last,phone,tier\n");
    for i in 0..n {
        out.push_str(&format!(
            "user{i}@example.com,First{i},Last{i},555-{i:04},gold\n"
        ));
    }
    out
}

impl Harness {
    async fn new(sandbox: SandboxOptions, tweak: impl FnOnce(&mut Settings)) -> Harness {
        let world = acexport::sandbox::world::World::builder()
            .sandbox_options(sandbox)
            .setting("activecampaign.requests_per_second", 1000)
            .setting("activecampaign.bulk_imports_per_minute", 60_000)
            .setting("activecampaign.retry_base_ms", 10)
            .setting("activecampaign.max_attempts", 4)
            .setting("activecampaign.timeout_secs", 5)
            .build()
            .await
            .expect("world");
        let mut settings = settings_in(world.dir.path());
        tweak(&mut settings);
        let ctx = Context::open(settings).await.expect("context");
        world.add_connection(&ctx, "ac").await.expect("connection");
        Harness { world, ctx }
    }

    fn csv(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write csv");
        path
    }

    async fn segment(&self, name: &str, text: &str) {
        self.world
            .add_csv_segment(&self.ctx, name, text)
            .await
            .expect("segment");
    }

    async fn export(&self, segments: &[&str], on_leave: OnLeave) {
        self.ctx
            .add_export(ExportInput {
                name: "weekly".into(),
                connection: "ac".into(),
                list_id: 1,
                segments: segments.iter().map(|s| s.to_string()).collect(),
                email: "email".into(),
                first_name: Some("first".into()),
                last_name: Some("last".into()),
                phone: Some("phone".into()),
                fields: vec![(3, "tier".into())],
                tags: vec!["acexport".into()],
                schedule: None,
                timezone: None,
                on_leave,
                enabled: true,
            })
            .await
            .expect("export");
    }

    async fn run(&self) -> RunOutcome {
        self.run_with(false, false).await
    }

    async fn run_with(&self, full: bool, dry_run: bool) -> RunOutcome {
        let options = RunOptions {
            trigger: TriggerKind::Manual,
            full,
            dry_run,
            requested_by: None,
        };
        self.ctx
            .run_export("weekly", options, Arc::new(Silent))
            .await
            .expect("run recorded")
    }

    /// The next `times` bulk imports get `action` instead of an answer.
    fn fail_bulk_imports(&self, times: u32, action: FaultAction) {
        self.sandbox.inject(Fault {
            path_prefix: "/api/3/import/bulk_import".into(),
            times,
            action,
        });
    }

    fn bulk_requests(&self) -> usize {
        self.sandbox
            .requests()
            .iter()
            .filter(|r| r.path.contains("bulk_import"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_member_arrives_with_all_mapped_fields() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(600)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(
        (outcome.counts.rows_read, outcome.counts.upserted),
        (600, 600)
    );
    assert_eq!(
        h.bulk_requests(),
        3,
        "600 contacts need three imports of at most 250"
    );
    let c = h
        .sandbox
        .contact("USER7@example.com")
        .expect("contact arrived");
    assert_eq!(c.first_name.as_deref(), Some("First7"));
    assert_eq!(c.last_name.as_deref(), Some("Last7"));
    assert_eq!(c.phone.as_deref(), Some("555-0007"));
    assert_eq!(c.fields.get(&3).map(String::as_str), Some("gold"));
    assert!(c.tags.contains("acexport"));
    assert_eq!(h.sandbox.members(1, ListStatus::Active), 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_and_duplicate_rows_are_counted_and_explained() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    let text = "email,first,last,phone,tier\n\
                a@example.com,A,,,\n\
                not-an-email,B,,,\n\
                A@EXAMPLE.COM,Dup,,,\n\
                c@example,C,,,\n\
                ,D,,,\n\
                e@example.com,E,,,\n";
    h.segment("members", text).await;
    h.segment(
        "others",
        "email,first,last,phone,tier\ne@example.com,E2,,,\nf@example.com,F,,,\n",
    )
    .await;
    h.export(&["members", "others"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let c = outcome.counts;
    assert_eq!(
        (c.rows_read, c.rejected, c.duplicates, c.upserted),
        (8, 3, 2, 3)
    );
    assert_eq!(
        h.sandbox
            .contact("a@example.com")
            .and_then(|c| c.first_name)
            .as_deref(),
        Some("A"),
        "first occurrence wins"
    );
    assert_eq!(
        h.sandbox
            .contact("e@example.com")
            .and_then(|c| c.first_name)
            .as_deref(),
        Some("E"),
        "segment order wins"
    );
    let issues = h
        .ctx
        .store
        .run_issues(outcome.run_id.expect("id"), 100)
        .await
        .expect("issues");
    let rows: Vec<(String, Option<i64>)> =
        issues.iter().map(|i| (i.source.clone(), i.row)).collect();
    assert_eq!(
        rows,
        vec![
            ("members".into(), Some(3)),
            ("members".into(), Some(5)),
            ("members".into(), Some(6))
        ]
    );
    assert_eq!(issues[1].email.as_deref(), Some("c***@example"));
    assert!(
        issues.iter().all(|i| !i.reason.contains("example")),
        "reasons never quote values"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_of_an_unchanged_segment_sends_nothing() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(300)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.run().await;
    let before = h.bulk_requests();

    let second = h.run().await;

    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(
        (
            second.counts.unchanged,
            second.counts.upserted,
            second.counts.sent
        ),
        (300, 0, 0)
    );
    assert_eq!(
        h.bulk_requests(),
        before,
        "no import for an unchanged segment"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_changed_rows_are_sent_again_and_full_resends_all() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(50)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.run().await;
    let changed = csv_rows(50)
        .replace("First3,", "Firsty,")
        .replace("555-0010", "555-9999");
    h.csv("members.csv", &changed);

    let second = h.run().await;
    assert_eq!((second.counts.upserted, second.counts.unchanged), (2, 48));
    assert_eq!(
        h.sandbox
            .contact("user3@example.com")
            .and_then(|c| c.first_name)
            .as_deref(),
        Some("Firsty")
    );

    let full = h.run_with(true, false).await;
    assert_eq!(full.counts.upserted, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn members_who_left_are_unsubscribed_when_asked() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(10)).await;
    h.export(&["members"], OnLeave::Unsubscribe).await;
    h.run().await;
    let fewer: String = csv_rows(10)
        .lines()
        .filter(|l| !l.starts_with("user2@") && !l.starts_with("user5@"))
        .map(|l| format!("{l}\n"))
        .collect();
    h.csv("members.csv", &fewer);

    let second = h.run().await;

    assert_eq!(second.status, RunStatus::Succeeded, "{:?}", second.error);
    assert_eq!(
        (second.counts.unsubscribed, second.counts.unchanged),
        (2, 8)
    );
    assert_eq!(
        h.sandbox.list_status("user2@example.com", 1),
        Some(ListStatus::Unsubscribed)
    );
    assert_eq!(
        h.sandbox.list_status("user1@example.com", 1),
        Some(ListStatus::Active)
    );
    let third = h.run().await;
    assert_eq!(
        (third.counts.unsubscribed, third.counts.sent),
        (0, 0),
        "leavers are forgotten once done"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn members_who_left_are_kept_on_the_list_by_default() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(5)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.run().await;
    h.csv("members.csv", &csv_rows(3));

    let second = h.run().await;

    assert_eq!((second.counts.unsubscribed, second.counts.sent), (0, 0));
    assert_eq!(
        h.sandbox.list_status("user4@example.com", 1),
        Some(ListStatus::Active)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_excluded_address_is_reported_suppressed_and_not_sent_again() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.sandbox.exclude("user1@example.com");
    h.segment("members", &csv_rows(5)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(
        (
            outcome.counts.upserted,
            outcome.counts.suppressed,
            outcome.counts.failed
        ),
        (4, 1, 0)
    );
    let issues = h
        .ctx
        .store
        .run_issues(outcome.run_id.expect("id"), 10)
        .await
        .expect("issues");
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].email.as_deref(), Some("u***@example.com"));
    assert_eq!(issues[0].kind.as_str(), "suppressed");
    let again = h.run().await;
    assert_eq!(
        (again.counts.sent, again.counts.suppressed, again.status),
        (0, 1, RunStatus::Succeeded),
        "suppressed members are not sent again while unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bounced_address_is_suppressed_with_its_reason() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.sandbox.bounce("user3@example.com", 1);
    h.segment("members", &csv_rows(4)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!((outcome.counts.suppressed, outcome.counts.failed), (1, 0));
    let issues = h
        .ctx
        .store
        .run_issues(outcome.run_id.expect("id"), 10)
        .await
        .expect("issues");
    assert!(issues[0].reason.contains("bounced"), "{}", issues[0].reason);
    assert_eq!(
        h.sandbox.list_status("user3@example.com", 1),
        Some(ListStatus::Bounced)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_for_one_contact_is_resent_without_it() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.fail_bulk_imports(1, FaultAction::Status {
            status: 400,
            retry_after: None,
            body: r#"{"success":0,"message":"JSON payload did not pass validation.","failureReasons":[{"contact":2,"failureReason":"Field 'email' incorrect format"}]}"#.into(),
        });
    h.segment("members", &csv_rows(5)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Partial);
    assert_eq!((outcome.counts.upserted, outcome.counts.failed), (4, 1));
    assert!(h.sandbox.contact("user2@example.com").is_none());
    let issues = h
        .ctx
        .store
        .run_issues(outcome.run_id.expect("id"), 10)
        .await
        .expect("issues");
    assert!(
        issues[0].reason.contains("incorrect format"),
        "{:?}",
        issues[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_with_retry_after_is_waited_out() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.fail_bulk_imports(
        3,
        FaultAction::Status {
            status: 429,
            retry_after: Some(1),
            body: "{}".into(),
        },
    );
    h.segment("members", &csv_rows(20)).await;
    h.export(&["members"], OnLeave::Keep).await;
    let started = std::time::Instant::now();

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.counts.upserted, 20);
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "Retry-After was honoured"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_dropped_connections_and_timeouts_are_retried() {
    let h = Harness::new(fast_sandbox(), |s| s.activecampaign.timeout_secs = 1).await;
    for action in [
        FaultAction::Status {
            status: 503,
            retry_after: None,
            body: String::new(),
        },
        FaultAction::Drop,
        FaultAction::Delay(Duration::from_millis(1500)),
    ] {
        h.fail_bulk_imports(1, action);
    }
    h.segment("members", &csv_rows(20)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.counts.upserted, 20);
    assert!(outcome.counts.requests >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_keeps_failing_fails_the_batch_with_the_last_error() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.fail_bulk_imports(
        100,
        FaultAction::Status {
            status: 500,
            retry_after: None,
            body: String::new(),
        },
    );
    h.segment("members", &csv_rows(5)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Partial);
    assert_eq!(outcome.counts.failed, 5);
    let issues = h
        .ctx
        .store
        .run_issues(outcome.run_id.expect("id"), 10)
        .await
        .expect("issues");
    assert!(
        issues[0].reason.contains("HTTP 500"),
        "{}",
        issues[0].reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn more_profiles_than_the_limit_fail_the_run_before_sending() {
    let h = Harness::new(fast_sandbox(), |s| s.export.max_profiles = 10).await;
    h.segment("members", &csv_rows(11)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("11 valid profiles") && error.contains("export.max_profiles"),
        "{error}"
    );
    assert_eq!(h.bulk_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_fails_the_run_and_marks_the_connection() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(5)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.sandbox.inject(Fault {
        path_prefix: "/api/3/users/me".into(),
        times: 1,
        action: FaultAction::Status {
            status: 403,
            retry_after: None,
            body: r#"{"message":"Forbidden"}"#.into(),
        },
    });

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(
        outcome
            .error
            .unwrap_or_default()
            .contains("rejected the API key")
    );
    assert_eq!(h.bulk_requests(), 0);
    let connection = h
        .ctx
        .store
        .connection("ac")
        .await
        .expect("q")
        .expect("exists");
    assert_eq!(connection.status.as_str(), "rejected");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_sends_nothing_and_changes_nothing() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(30)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let plan = h.run_with(false, true).await;

    assert_eq!(plan.run_id, None);
    assert_eq!(plan.plan.as_ref().map(|p| p.adds), Some(30));
    assert_eq!(h.bulk_requests(), 0);
    let real = h.run().await;
    assert_eq!(real.counts.upserted, 30, "the dry run left no state behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_by_shutdown_resumes_without_resending_confirmed_batches() {
    let mut sandbox = fast_sandbox();
    sandbox.latency = Duration::from_millis(20);
    let h = Harness::new(sandbox, |s| s.activecampaign.requests_per_second = 40).await;
    h.segment("members", &csv_rows(10_000)).await;
    h.export(&["members"], OnLeave::Keep).await;
    let export_id = h.ctx.find_export("weekly").await.expect("export").id;
    let (control, store) = (h.ctx.control.clone(), h.ctx.store.clone());
    tokio::spawn(async move {
        // Shut down once the first batches are confirmed.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(Some(run)) = store.running_run(export_id).await
                && run.counts.upserted > 0
            {
                control.shutdown();
                return;
            }
        }
    });

    let first = h.run().await;
    assert_eq!(first.status, RunStatus::Interrupted, "{:?}", first.error);
    assert!(first.counts.upserted > 0 && first.counts.upserted < 10_000);
    assert_eq!(
        first.counts.sent,
        first.counts.upserted + first.counts.failed,
        "a soft stop confirms and keeps the imports already sent"
    );

    // A new process (fresh context) resumes the export.
    let ctx = Context::open(settings_in(h.dir.path())).await.expect("ctx");
    let options = RunOptions {
        trigger: TriggerKind::Manual,
        full: false,
        dry_run: false,
        requested_by: None,
    };
    let second = ctx
        .run_export("weekly", options, Arc::new(Silent))
        .await
        .expect("run");

    assert_eq!(second.status, RunStatus::Succeeded, "{:?}", second.error);
    assert_eq!(
        second.counts.unchanged, first.counts.upserted,
        "confirmed batches are not sent again"
    );
    assert_eq!(second.counts.upserted, 10_000 - first.counts.upserted);
    assert_eq!(h.sandbox.members(1, ListStatus::Active), 10_000);
    let run = ctx
        .store
        .run(second.run_id.expect("id"))
        .await
        .expect("q")
        .expect("run");
    assert_eq!(run.resumes_run_id, first.run_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_rate_never_exceeds_the_budget_and_provokes_no_429() {
    // The per-second limit binds here (10 imports and their polls at 20/s). The per-minute
    // bulk limit would need minutes of imports to bind: the budget's unit tests and the
    // benchmark's `--budget` mode check it.
    let sandbox = SandboxOptions {
        requests_per_second: Some(20),
        ..fast_sandbox()
    };
    let h = Harness::new(sandbox, |s| s.activecampaign.requests_per_second = 20).await;
    h.segment("members", &csv_rows(2500)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(h.sandbox.stats().too_many_requests, 0);
    assert!(
        h.sandbox
            .max_requests_in_window(Duration::from_secs(1), None)
            <= 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_keep_going_while_earlier_ones_await_confirmation() {
    // ActiveCampaign queues imports and may take minutes to process them. 60 imports that each
    // take 2 × 1.5 s to confirm: sending must not wait for confirmations (it did, at 32 in
    // flight), and polls must not crowd out imports.
    let sandbox = SandboxOptions {
        import_delay: Duration::from_millis(1500),
        store_contacts: false,
        ..fast_sandbox()
    };
    let h = Harness::new(sandbox, |_| {}).await;
    h.segment("members", &csv_rows(15_000)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.counts.upserted, 15_000);
    let imports: Vec<Instant> = h
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/import/bulk_import") && r.status == 200)
        .map(|r| r.at)
        .collect();
    assert_eq!(imports.len(), 60);
    let sending = imports[59].duration_since(imports[0]);
    assert!(
        sending < Duration::from_millis(1500),
        "all 60 imports should be sent before the first could be confirmed; took {sending:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn someone_who_unsubscribed_is_never_resubscribed_and_is_reported() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.sandbox.unsubscribe("user2@example.com", 1);
    h.segment("members", &csv_rows(4)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(
        (
            outcome.counts.upserted,
            outcome.counts.suppressed,
            outcome.counts.failed
        ),
        (3, 1, 0)
    );
    assert_eq!(
        h.sandbox.list_status("user2@example.com", 1),
        Some(ListStatus::Unsubscribed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_rate_limit_answer_is_waited_out_and_retried() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.fail_bulk_imports(1, FaultAction::Status {
            status: 400,
            retry_after: Some(1),
            body: r#"{"success":0,"message":"Rate limit exceeded.","failureReasons":["Up to 100 imports may be requested per minute."]}"#.into(),
        });
    h.segment("members", &csv_rows(10)).await;
    h.export(&["members"], OnLeave::Keep).await;

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!((outcome.counts.upserted, outcome.counts.failed), (10, 0));
    assert_eq!(h.bulk_requests(), 2, "the refused import was sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_stops_the_run_at_a_batch_boundary() {
    let mut sandbox = fast_sandbox();
    sandbox.latency = Duration::from_millis(20);
    let h = Harness::new(sandbox, |s| s.activecampaign.requests_per_second = 30).await;
    h.segment("members", &csv_rows(10_000)).await;
    h.export(&["members"], OnLeave::Keep).await;
    let export_id = h.ctx.find_export("weekly").await.expect("export").id;
    let store = h.ctx.store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(run)) = store.running_run(export_id).await
                && run.counts.upserted > 0
            {
                store.cancel_export(export_id).await.expect("cancel");
                return;
            }
        }
    });

    let outcome = h.run().await;

    assert_eq!(outcome.status, RunStatus::Cancelled, "{:?}", outcome.error);
    assert!(outcome.counts.upserted > 0 && outcome.counts.upserted < 10_000);
    assert_eq!(
        h.sandbox.stats().contacts_queued,
        outcome.counts.upserted,
        "every import sent was confirmed and kept; none was sent after the stop"
    );
    let next = h.run().await;
    assert_eq!(
        next.counts.unchanged, outcome.counts.upserted,
        "what was confirmed is kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_connection_purges_its_exports_delivery_state_and_history() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(20)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.run().await;
    let count = |table: &'static str| {
        let pool = h.ctx.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(count("delivery_state").await, 20);

    let removed = h.ctx.remove_connection("ac", true).await.expect("removed");

    assert_eq!(removed, vec!["weekly".to_owned()]);
    for table in [
        "delivery_state",
        "runs",
        "run_issues",
        "exports",
        "connections",
    ] {
        assert_eq!(count(table).await, 0, "{table} purged");
    }
    let audit: String = sqlx::query_scalar("SELECT group_concat(action) FROM audit_log")
        .fetch_one(h.ctx.store.pool())
        .await
        .expect("audit");
    assert!(audit.contains("connection.remove"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_failure_is_reported_as_such_at_once_and_nothing_is_saved() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    // https to a server that speaks plain HTTP: the handshake cannot succeed.
    let host = format!("https://{}", h.sandbox.addr());
    let before = h.sandbox.stats().requests;

    let err = h
        .ctx
        .add_connection(AddConnection {
            name: "tls".into(),
            host,
            api_key: SecretString::from(TOKEN),
            allow_contributors: false,
            accept_data_transfer: true,
        })
        .await
        .expect_err("refused");

    let text = err.to_string();
    assert!(
        text.contains("TLS") && text.contains(&h.sandbox.addr().to_string()),
        "{text}"
    );
    assert!(!text.contains(TOKEN));
    assert_eq!(
        h.sandbox.stats().requests,
        before,
        "no HTTP request was understood"
    );
    assert!(h.ctx.store.connection("tls").await.expect("q").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_an_export_to_another_account_sends_everyone_there() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(30)).await;
    h.export(&["members"], OnLeave::Keep).await;
    h.run().await;
    let other = Sandbox::start(fast_sandbox())
        .await
        .expect("second account");
    h.ctx
        .add_connection(AddConnection {
            name: "other".into(),
            host: other.host(),
            api_key: SecretString::from(TOKEN),
            allow_contributors: false,
            accept_data_transfer: true,
        })
        .await
        .expect("connection");

    let patch = acexport::service::exports::ExportPatch {
        connection: Some("other".into()),
        ..Default::default()
    };
    h.ctx.update_export("weekly", patch).await.expect("moved");
    let moved = h.run().await;

    assert_eq!((moved.counts.upserted, moved.counts.unchanged), (30, 0));
    assert_eq!(other.members(1, ListStatus::Active), 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_while_reading_stops_before_anything_is_sent() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(200_000)).await;
    h.export(&["members"], OnLeave::Keep).await;
    let export_id = h.ctx.find_export("weekly").await.expect("export").id;
    let (control, store) = (h.ctx.control.clone(), h.ctx.store.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(Some(run)) = store.running_run(export_id).await
                && run.phase == "reading"
            {
                control.shutdown();
                return;
            }
        }
    });

    let outcome = h.run().await;

    assert_eq!(
        outcome.status,
        RunStatus::Interrupted,
        "{:?}",
        outcome.error
    );
    assert!(
        outcome.counts.rows_read < 200_000,
        "{}",
        outcome.counts.rows_read
    );
    assert_eq!(h.bulk_requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_update_failed_is_still_unsubscribed_when_leaving() {
    let h = Harness::new(fast_sandbox(), |_| {}).await;
    h.segment("members", &csv_rows(3)).await;
    h.export(&["members"], OnLeave::Unsubscribe).await;
    h.run().await;
    // user1 changes, and the import carrying the change fails.
    h.csv("members.csv", &csv_rows(3).replace("First1,", "Changed,"));
    // Exactly the client's attempts (max_attempts = 4): the import carrying it fails.
    h.fail_bulk_imports(
        4,
        FaultAction::Status {
            status: 500,
            retry_after: None,
            body: String::new(),
        },
    );
    let failed = h.run().await;
    assert_eq!(
        (failed.status, failed.counts.failed),
        (RunStatus::Partial, 1)
    );

    // Then user1 leaves, with the server working again.
    let without_user1: String = csv_rows(3)
        .lines()
        .filter(|l| !l.starts_with("user1@"))
        .map(|l| format!("{l}\n"))
        .collect();
    h.csv("members.csv", &without_user1);
    let left = h.run().await;

    assert_eq!(left.status, RunStatus::Succeeded, "{:?}", left.error);
    assert_eq!(left.counts.unsubscribed, 1);
    assert_eq!(
        h.sandbox.list_status("user1@example.com", 1),
        Some(ListStatus::Unsubscribed)
    );
}
