//! Cleared values: a mapped value acexport sent before and that is now empty in the source is
//! sent empty, so ActiveCampaign clears it; a value acexport never sent is still left out, so
//! what ActiveCampaign holds from elsewhere is never overwritten with a blank. Whether
//! ActiveCampaign honours an empty string is not documented: the sandbox is tried both ways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acexport::pipeline::{RunOptions, RunOutcome, Silent};
use acexport::sandbox::world::{World, export_input, test_sandbox_options};
use acexport::sandbox::{EmptyValues, SandboxContact, SandboxOptions};
use acexport::service::Context;
use acexport::service::exports::{ExportInput, ExportPatch};
use acexport::store::{RunStatus, TriggerKind};

const TOKEN: &str = "cleared-test-token-0005";
/// Upper bound for an import another tool sent to be applied; never reached when healthy.
const PATIENCE: Duration = Duration::from_secs(10);

/// A world with connection `ac`, and a context on its store.
struct Harness {
    world: World,
    ctx: Context,
}

impl Harness {
    async fn new(empty_values: EmptyValues) -> Harness {
        let sandbox = SandboxOptions {
            empty_values,
            ..test_sandbox_options(TOKEN)
        };
        let world = World::builder()
            .sandbox_options(sandbox)
            .setting("activecampaign.requests_per_second", 1000)
            .setting("activecampaign.bulk_imports_per_minute", 60_000)
            .build()
            .await
            .expect("world");
        let ctx = world.open_context().await.expect("context");
        world.add_connection(&ctx, "ac").await.expect("connection");
        Harness { world, ctx }
    }

    /// Writes segment `members` (columns email, first, phone, tier), adding it the first time.
    async fn members(&self, rows: &str) {
        let text = format!("email,first,phone,tier\n{rows}");
        if self.world.csv_path("members").exists() {
            std::fs::write(self.world.csv_path("members"), text).expect("rewrite csv");
        } else {
            self.world
                .add_csv_segment(&self.ctx, "members", &text)
                .await
                .expect("segment");
        }
    }

    /// Export `weekly` of `members`, mapping first name, phone and custom field 3 from `tier`.
    fn full_mapping() -> ExportInput {
        ExportInput {
            first_name: Some("first".into()),
            phone: Some("phone".into()),
            fields: vec![(3, "tier".into())],
            ..export_input("weekly", "ac", &["members"])
        }
    }

    async fn export(&self, input: ExportInput) {
        self.world
            .add_export(&self.ctx, input)
            .await
            .expect("export");
    }

    async fn run(&self) -> RunOutcome {
        let options = RunOptions {
            trigger: TriggerKind::Manual,
            full: false,
            dry_run: false,
            requested_by: None,
        };
        let outcome = self
            .ctx
            .run_export("weekly", options, Arc::new(Silent))
            .await
            .expect("run recorded");
        assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
        outcome
    }

    fn contact(&self, email: &str) -> SandboxContact {
        self.world.sandbox.contact(email).expect("contact exists")
    }

    /// Another tool on the account imports `contact` (bulk-import JSON); returns once applied.
    async fn set_elsewhere(&self, contact: serde_json::Value) {
        let url = format!("{}/api/3/import/bulk_import", self.world.host());
        let answer = reqwest::Client::new()
            .post(url)
            .header("Api-Token", TOKEN)
            .json(&serde_json::json!({ "contacts": [contact] }))
            .send()
            .await
            .expect("bulk import over loopback");
        assert!(answer.status().is_success(), "{}", answer.status());
        let deadline = Instant::now() + PATIENCE;
        while self.world.sandbox.stats().pending_imports > 0 {
            assert!(Instant::now() < deadline, "the import was never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_and_a_field_removed_in_the_source_are_cleared_on_the_next_run() {
    let h = Harness::new(EmptyValues::Clear).await;
    h.members("ada@example.com,Ada,555-0101,gold\nalan@example.com,Alan,555-0202,silver\n")
        .await;
    h.export(Harness::full_mapping()).await;
    h.run().await;
    assert_eq!(
        h.contact("ada@example.com").phone.as_deref(),
        Some("555-0101")
    );

    h.members("ada@example.com,Ada,,\nalan@example.com,Alan,555-0202,silver\n")
        .await;
    let second = h.run().await;
    let third = h.run().await;

    let ada = h.contact("ada@example.com");
    assert_eq!(ada.phone, None, "the removed phone is cleared");
    assert_eq!(ada.fields.get(&3), None, "the removed field is cleared");
    assert_eq!(ada.first_name.as_deref(), Some("Ada"));
    let alan = h.contact("alan@example.com");
    assert_eq!(alan.phone.as_deref(), Some("555-0202"));
    assert_eq!(alan.fields.get(&3).map(String::as_str), Some("silver"));
    assert_eq!((second.counts.upserted, second.counts.unchanged), (1, 1));
    assert_eq!(
        (third.counts.sent, third.counts.unchanged),
        (0, 2),
        "a cleared value is cleared once, not on every run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_never_sent_is_not_sent_empty_over_what_activecampaign_holds() {
    let h = Harness::new(EmptyValues::Clear).await;
    h.set_elsewhere(serde_json::json!({
        "email": "ada@example.com", "phone": "+1 555 0199", "fields": [{"id": 3, "value": "platinum"}]
    }))
    .await;
    h.members("ada@example.com,Ada,,\n").await;
    h.export(Harness::full_mapping()).await;
    h.run().await;

    h.members("ada@example.com,Augusta,,\n").await;
    let second = h.run().await;

    let ada = h.contact("ada@example.com");
    assert_eq!(second.counts.upserted, 1, "the new first name was sent");
    assert_eq!(ada.first_name.as_deref(), Some("Augusta"));
    assert_eq!(ada.phone.as_deref(), Some("+1 555 0199"));
    assert_eq!(ada.fields.get(&3).map(String::as_str), Some("platinum"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_mapping_clears_neither_a_newly_mapped_nor_an_unmapped_field() {
    let h = Harness::new(EmptyValues::Clear).await;
    h.set_elsewhere(serde_json::json!({
        "email": "ada@example.com", "fields": [{"id": 3, "value": "platinum"}]
    }))
    .await;
    h.members("ada@example.com,Ada,555-0101,\n").await;
    h.export(ExportInput {
        fields: Vec::new(),
        ..Harness::full_mapping()
    })
    .await;
    h.run().await;

    // The phone is no longer mapped; field 3 now is, from a column empty for Ada.
    let patch = ExportPatch {
        phone: Some(None),
        fields: Some(vec![(3, "tier".into())]),
        ..ExportPatch::default()
    };
    h.ctx.update_export("weekly", patch).await.expect("update");
    h.members("ada@example.com,Augusta,,\n").await;
    let second = h.run().await;

    let ada = h.contact("ada@example.com");
    assert_eq!(second.counts.upserted, 1, "the new first name was sent");
    assert_eq!(ada.first_name.as_deref(), Some("Augusta"));
    assert_eq!(
        ada.phone.as_deref(),
        Some("555-0101"),
        "an unmapped field is no longer acexport's to clear"
    );
    assert_eq!(ada.fields.get(&3).map(String::as_str), Some("platinum"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_field_mapped_after_the_first_run_is_cleared_once_it_was_sent() {
    let h = Harness::new(EmptyValues::Clear).await;
    h.members("ada@example.com,Ada,555-0101,gold\n").await;
    h.export(ExportInput {
        fields: Vec::new(),
        ..Harness::full_mapping()
    })
    .await;
    h.run().await;
    let patch = ExportPatch {
        fields: Some(vec![(3, "tier".into())]),
        ..ExportPatch::default()
    };
    h.ctx.update_export("weekly", patch).await.expect("update");
    h.run().await;
    assert_eq!(
        h.contact("ada@example.com")
            .fields
            .get(&3)
            .map(String::as_str),
        Some("gold")
    );

    h.members("ada@example.com,Ada,555-0101,\n").await;
    h.run().await;

    let ada = h.contact("ada@example.com");
    assert_eq!(ada.fields.get(&3), None);
    assert_eq!(ada.phone.as_deref(), Some("555-0101"));
}

#[tokio::test(flavor = "multi_thread")]
async fn where_activecampaign_ignores_empty_values_the_run_still_succeeds_and_sends_once() {
    let h = Harness::new(EmptyValues::Ignore).await;
    h.members("ada@example.com,Ada,555-0101,gold\n").await;
    h.export(Harness::full_mapping()).await;
    h.run().await;

    h.members("ada@example.com,Ada,,\n").await;
    let second = h.run().await;
    let third = h.run().await;

    let ada = h.contact("ada@example.com");
    assert_eq!(second.counts.upserted, 1);
    assert_eq!(
        ada.phone.as_deref(),
        Some("555-0101"),
        "this ActiveCampaign keeps a value sent empty"
    );
    assert_eq!(third.counts.sent, 0, "the empty value is not sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn fields_of_members_delivered_before_they_were_recorded_are_learned_never_guessed() {
    let h = Harness::new(EmptyValues::Clear).await;
    h.members("ada@example.com,Ada,555-0101,\nalan@example.com,Alan,555-0202,\n")
        .await;
    h.export(Harness::full_mapping()).await;
    h.run().await;
    // As the schema upgrade leaves state written before fields were recorded.
    sqlx::query("UPDATE delivery_state SET sent_fields = NULL")
        .execute(h.ctx.store.pool())
        .await
        .expect("forget the fields");

    // Ada is unchanged: her fields are learned. Alan's phone went before anything was learned.
    h.members("ada@example.com,Ada,555-0101,\nalan@example.com,Alan,,\n")
        .await;
    h.run().await;
    h.members("ada@example.com,Ada,,\nalan@example.com,Alan,,\n")
        .await;
    h.run().await;

    assert_eq!(
        h.contact("ada@example.com").phone,
        None,
        "learned, then cleared"
    );
    assert_eq!(
        h.contact("alan@example.com").phone.as_deref(),
        Some("555-0202"),
        "not known to be acexport's, so not blanked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_member_whose_phone_was_removed_while_away_has_it_cleared() {
    let h = Harness::new(EmptyValues::Clear).await;
    let both = "ada@example.com,Ada,555-0101,gold\nalan@example.com,Alan,555-0202,silver\n";
    h.members(both).await;
    h.export(ExportInput {
        on_leave: acexport::store::exports::OnLeave::Unsubscribe,
        ..Harness::full_mapping()
    })
    .await;
    h.run().await;
    // Ada leaves: acexport unsubscribes her (`left`).
    h.members("alan@example.com,Alan,555-0202,silver\n").await;
    let left = h.run().await;
    assert_eq!(left.counts.unsubscribed, 1);

    // She returns without a phone.
    h.members("ada@example.com,Ada,,gold\nalan@example.com,Alan,555-0202,silver\n")
        .await;
    let back = h.run().await;

    assert_eq!(back.counts.upserted, 1, "{:?}", back.counts);
    assert_eq!(
        h.world.sandbox.list_status("ada@example.com", 1),
        Some(acexport::sandbox::ListStatus::Active),
        "re-subscribed"
    );
    assert_eq!(
        h.contact("ada@example.com").phone.as_deref(),
        None,
        "the phone sent before she left is cleared"
    );
}
