//! Tests of the run operations: the pure steps, then the follow and cancel on a fresh database.

use super::*;
use crate::store::RunCounts;

fn record(id: i64, status: RunStatus, finished_at: Option<&str>) -> RunRecord {
    RunRecord {
        id,
        export_id: 1,
        export: "weekly".to_owned(),
        trigger: crate::store::TriggerKind::SignalFile,
        full: false,
        status,
        phase: "sending".to_owned(),
        started_at: "2026-01-01T10:00:00.000Z".to_owned(),
        finished_at: finished_at.map(str::to_owned),
        counts: RunCounts::default(),
        resumes_run_id: None,
        error: None,
        requested_by: None,
        owner_pid: None,
    }
}

/// A context on a fresh database holding one export (`weekly`, id 1) and no daemon.
async fn context_with_an_export(dir: &std::path::Path) -> Context {
    let mut settings = crate::settings::Settings::default();
    settings.store.path = dir.join("acexport.db");
    settings.daemon.trigger_dir = dir.join("triggers");
    let ctx = Context::open(settings).await.expect("open");
    for sql in [
        "INSERT INTO connections (name, base_url, api_key_sealed, api_key_hint, consent_at, \
         consent_by, status, checked_at, created_at, updated_at) VALUES ('ac', \
         'http://127.0.0.1:1', x'00', '…', 't', 'u', 'verified', 't', 't', 't')",
        "INSERT INTO exports (name, connection_id, list_id, list_name, email_column, \
         created_at, updated_at) VALUES ('weekly', 1, 1, 'News', 'email', 't', 't')",
    ] {
        sqlx::query(sql)
            .execute(ctx.store.pool())
            .await
            .expect("fixture");
    }
    ctx
}

async fn insert_run(ctx: &Context, status: &str, finished_at: Option<&str>) {
    sqlx::query(
        "INSERT INTO runs (export_id, trigger, status, started_at, finished_at) \
         VALUES (1, 'signal-file', ?, '2026-01-01T10:00:00.000Z', ?)",
    )
    .bind(status)
    .bind(finished_at)
    .execute(ctx.store.pool())
    .await
    .expect("run");
}

fn hand_over(wait: Duration) -> HandOver {
    HandOver {
        export: "weekly".to_owned(),
        export_id: 1,
        after_run_id: 0,
        asked_at: Instant::now(),
        wait,
    }
}

#[tokio::test]
async fn a_hand_over_nobody_picks_up_fails_once_the_wait_is_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context_with_an_export(dir.path()).await;
    let err = ctx
        .follow_run(&hand_over(Duration::ZERO), &crate::pipeline::Silent)
        .await
        .expect_err("nobody picks it up");
    assert!(
        matches!(&err, RunError::HandOverTimedOut { export, .. } if export == "weekly"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_queued_hand_over_is_followed_past_the_wait_until_its_run_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context_with_an_export(dir.path()).await;
    ctx.store
        .enqueue_run(1, crate::store::TriggerKind::SignalFile, false, None, None)
        .await
        .expect("queue");
    let asked = hand_over(Duration::ZERO);
    let follow = ctx.follow_run(&asked, &crate::pipeline::Silent);
    let finish = async {
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        insert_run(&ctx, "succeeded", Some("2026-01-01T10:00:01.000Z")).await;
    };
    let (outcome, ()) = tokio::join!(follow, finish);
    let outcome = outcome.expect("the run finished");
    assert_eq!(outcome.status, RunStatus::Succeeded);
    assert_eq!(outcome.run_id, Some(1));
}

#[tokio::test]
async fn a_followed_run_whose_daemon_stops_beating_fails_the_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context_with_an_export(dir.path()).await;
    insert_run(&ctx, "running", None).await;
    let err = ctx
        .follow_run(&hand_over(HAND_OVER_WAIT), &crate::pipeline::Silent)
        .await
        .expect_err("no daemon beats");
    assert!(
        matches!(&err, RunError::DaemonStopped { export, run_id: 1 } if export == "weekly"),
        "{err:?}"
    );
}

#[tokio::test]
async fn cancelling_an_export_with_a_running_run_asks_that_run_to_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context_with_an_export(dir.path()).await;
    assert_eq!(
        ctx.cancel_run("weekly").await.expect("cancel"),
        CancelOutcome::NothingToCancel {
            export: "weekly".to_owned()
        }
    );
    insert_run(&ctx, "running", None).await;
    assert_eq!(
        ctx.cancel_run("weekly").await.expect("cancel"),
        CancelOutcome::Stopping {
            export: "weekly".to_owned(),
            run_id: 1
        }
    );
}

#[test]
fn a_cancel_that_finds_a_running_run_stops_it_even_if_one_was_also_queued() {
    assert_eq!(
        cancel_outcome("e".to_owned(), true, Some(7)),
        CancelOutcome::Stopping {
            export: "e".to_owned(),
            run_id: 7
        }
    );
}

#[test]
fn a_cancel_that_only_finds_a_queued_run_reports_it_dequeued() {
    assert_eq!(
        cancel_outcome("e".to_owned(), true, None),
        CancelOutcome::Dequeued {
            export: "e".to_owned()
        }
    );
}

#[test]
fn a_cancel_of_an_idle_export_has_nothing_to_cancel() {
    assert_eq!(
        cancel_outcome("e".to_owned(), false, None),
        CancelOutcome::NothingToCancel {
            export: "e".to_owned()
        }
    );
}

#[test]
fn the_follower_ignores_runs_from_before_the_hand_over() {
    let old = record(4, RunStatus::Succeeded, Some("2026-01-01T10:00:01.000Z"));
    assert!(matches!(look(Some(old), 4), Look::NotStarted));
    assert!(matches!(look(None, 4), Look::NotStarted));
}

#[test]
fn the_follower_reports_a_newer_running_run_and_ends_on_a_finished_one() {
    assert!(matches!(
        look(Some(record(5, RunStatus::Running, None)), 4),
        Look::Running(_)
    ));
    let done = record(5, RunStatus::Partial, Some("2026-01-01T10:00:02.500Z"));
    assert!(matches!(look(Some(done), 4), Look::Finished(r) if r.id == 5));
}

#[test]
fn a_followed_run_reports_its_duration_from_the_history() {
    let done = record(5, RunStatus::Succeeded, Some("2026-01-01T10:00:02.500Z"));
    let outcome = outcome_of(done);
    assert_eq!(outcome.run_id, Some(5));
    assert_eq!(outcome.status, RunStatus::Succeeded);
    assert!((outcome.seconds - 2.5).abs() < 1e-9, "{}", outcome.seconds);
    assert!(outcome.plan.is_none());
}

#[test]
fn a_run_in_progress_lasts_until_now_and_an_unreadable_time_has_no_duration() {
    let running = record(5, RunStatus::Running, None);
    let now = from_text("2026-01-01T10:01:00.000Z").expect("time");
    assert_eq!(run_duration(&running, now), Some(TimeDelta::seconds(60)));
    let broken = record(5, RunStatus::Failed, Some("yesterday"));
    assert_eq!(run_duration(&broken, now), None);
}
