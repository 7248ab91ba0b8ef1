//! Outcomes of a run as `acexport export run` reports them: contacts ActiveCampaign will not
//! subscribe are `suppressed` (counted apart, not sent again), not `failed`; members acexport
//! itself unsubscribed are re-subscribed when they return, people who unsubscribed themselves
//! never are.

use acexport::sandbox::ListStatus;
use serde_json::Value;

use crate::support::{OutputExt, TestEnv};

/// Four members: two ActiveCampaign imports, one who unsubscribed from list 1 themselves and
/// one on the account's exclusion list.
const MEMBERS: &str = "email,first_name\nada@example.com,Ada\nalan@example.com,Alan\n\
                       gone@example.com,Gone\nbarred@example.com,Barred\n";

/// Connection `crm`, segment `members` from `csv` and export `weekly` to list 1, plus `extra`.
async fn export_of(env: &TestEnv, csv: &str, extra: &[&str]) {
    env.add_connection("crm").await;
    let path = env.write("members.csv", csv);
    env.run(&["segment", "add", "members", "--csv", &path])
        .await
        .assert_ok();
    env.run(&crate::support::export_add_args(extra))
        .await
        .assert_ok();
}

/// `export run weekly --json`: the exit code and the printed object.
async fn run_json(env: &TestEnv) -> (Option<i32>, Value) {
    let out = env.run(&["export", "run", "weekly", "--json"]).await;
    let json = serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| {
        panic!(
            "export run --json printed no JSON ({e}):\n{}\n{}",
            out.stdout_text(),
            out.stderr_text()
        )
    });
    (out.code(), json)
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribed_and_excluded_contacts_are_suppressed_and_every_run_succeeds_sending_nothing_again()
 {
    let env = TestEnv::new().await;
    env.sandbox.unsubscribe("gone@example.com", 1);
    env.sandbox.exclude("barred@example.com");
    export_of(&env, MEMBERS, &["--first-name", "first_name"]).await;

    let mut runs = Vec::new();
    let mut imports = Vec::new();
    for _ in 0..3 {
        runs.push(run_json(&env).await);
        imports.push(env.requests_to("/import/bulk_import"));
    }

    for (i, (code, json)) in runs.iter().enumerate() {
        assert_eq!(*code, Some(0), "run {}: {json}", i + 1);
        assert_eq!(json["status"], "succeeded", "run {}: {json}", i + 1);
        assert_eq!(json["counts"]["suppressed"], 2, "run {}: {json}", i + 1);
        assert_eq!(json["counts"]["failed"], 0, "run {}: {json}", i + 1);
    }
    assert_eq!(runs[0].1["counts"]["upserted"], 2);
    assert_eq!(imports[0], 1);
    assert_eq!(
        (imports[1], imports[2]),
        (1, 1),
        "runs two and three send nothing"
    );
    for (_, json) in &runs[1..] {
        assert_eq!(json["counts"]["sent"], 0, "{json}");
        assert_eq!(json["counts"]["unchanged"], 2, "{json}");
    }
    assert_eq!(
        env.sandbox.list_status("gone@example.com", 1),
        Some(ListStatus::Unsubscribed),
        "never re-subscribed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_summary_and_runs_show_give_the_suppressed_contacts_with_their_reasons() {
    let env = TestEnv::new().await;
    env.sandbox.unsubscribe("gone@example.com", 1);
    env.sandbox.exclude("barred@example.com");
    export_of(&env, MEMBERS, &[]).await;

    let out = env.run(&["export", "run", "weekly"]).await;
    out.assert_ok();
    let summary = out.stdout_text();
    let shown = env.run(&["runs", "show", "1"]).await;
    shown.assert_ok();
    let shown = shown.stdout_text();

    assert!(summary.contains("suppressed 2"), "{summary}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("suppressed") && l.ends_with(" 2")),
        "{shown}"
    );
    let rows: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("suppressed "))
        .collect();
    assert!(
        rows.iter()
            .any(|l| l.contains("g***@example.com") && l.contains("unsubscribed")),
        "{shown}"
    );
    assert!(
        rows.iter()
            .any(|l| l.contains("b***@example.com") && l.contains("exclusion")),
        "{shown}"
    );
    assert!(
        !shown.contains("gone@") && !shown.contains("barred@"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suppressed_contact_is_sent_again_when_its_values_change() {
    let env = TestEnv::new().await;
    env.sandbox.exclude("barred@example.com");
    export_of(&env, MEMBERS, &["--first-name", "first_name"]).await;
    run_json(&env).await;
    env.write("members.csv", &MEMBERS.replace("Barred", "Changed"));

    let (code, json) = run_json(&env).await;

    assert_eq!(
        (code, &json["status"]),
        (Some(0), &Value::from("succeeded"))
    );
    assert_eq!(json["counts"]["sent"], 1, "{json}");
    assert_eq!(json["counts"]["suppressed"], 1, "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suppressed_contact_is_checked_again_once_the_recheck_days_have_passed() {
    let env = TestEnv::with_settings("[export]\nsuppressed_recheck_days = 0\n").await;
    env.sandbox.exclude("barred@example.com");
    export_of(&env, MEMBERS, &[]).await;
    run_json(&env).await;

    let (code, json) = run_json(&env).await;

    assert_eq!(
        (code, &json["status"]),
        (Some(0), &Value::from("succeeded"))
    );
    assert_eq!(json["counts"]["sent"], 1, "{json}");
    assert_eq!(json["counts"]["suppressed"], 1, "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_acexport_unsubscribed_is_resubscribed_on_return_but_one_who_left_by_themselves_is_not()
 {
    let env = TestEnv::new().await;
    export_of(
        &env,
        MEMBERS,
        &["--on-leave", "unsubscribe", "--first-name", "first_name"],
    )
    .await;
    // Gone and Barred are ordinary members here.
    run_json(&env).await;
    // Ada leaves the segment: acexport unsubscribes her. Alan unsubscribes himself.
    env.write("members.csv", &MEMBERS.replace("ada@example.com,Ada\n", ""));
    let (_, left) = run_json(&env).await;
    assert_eq!(left["counts"]["unsubscribed"], 1, "{left}");
    env.sandbox.unsubscribe("alan@example.com", 1);
    // Ada comes back, and both have changed.
    env.write(
        "members.csv",
        &MEMBERS.replace(",Ada", ",Ada2").replace(",Alan", ",Alan2"),
    );

    let (code, back) = run_json(&env).await;
    let (_, again) = run_json(&env).await;

    assert_eq!(code, Some(0), "{back}");
    assert_eq!(back["status"], "succeeded", "{back}");
    assert_eq!(
        env.sandbox.list_status("ada@example.com", 1),
        Some(ListStatus::Active),
        "acexport's own unsubscribe is undone"
    );
    assert_eq!(
        env.sandbox
            .contact("ada@example.com")
            .and_then(|c| c.first_name),
        Some("Ada2".to_owned())
    );
    assert_eq!(
        env.sandbox.list_status("alan@example.com", 1),
        Some(ListStatus::Unsubscribed),
        "someone who unsubscribed themselves stays unsubscribed"
    );
    assert_eq!(
        (&back["counts"]["upserted"], &back["counts"]["suppressed"]),
        (&Value::from(1), &Value::from(1)),
        "{back}"
    );
    let resubscribes = env
        .sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/3/contactLists")
        .count();
    assert_eq!(resubscribes, 1, "one re-subscribe, Ada's");
    assert_eq!(
        (&again["counts"]["sent"], &again["status"]),
        (&Value::from(0), &Value::from("succeeded")),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_counts_the_suppressed_members_it_would_hold_back() {
    let env = TestEnv::new().await;
    env.sandbox.unsubscribe("gone@example.com", 1);
    export_of(&env, MEMBERS, &[]).await;
    run_json(&env).await;

    let out = env
        .run(&["export", "run", "weekly", "--dry-run", "--json"])
        .await;

    out.assert_ok();
    let json: Value = serde_json::from_str(&out.stdout_text()).expect("JSON");
    assert_eq!(
        (&json["plan"]["suppressed"], &json["plan"]["unchanged"]),
        (&Value::from(1), &Value::from(3)),
        "{json}"
    );
}
