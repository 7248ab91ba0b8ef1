//! Tests of the sandbox over loopback HTTP, as a client sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;

const TOKEN: &str = "test-token";
/// Upper bound for waiting on a condition (an import to complete); never reached when healthy.
const PATIENCE: Duration = Duration::from_secs(10);

/// Options with limits and delays off, so each test turns on only what it exercises.
fn options() -> SandboxOptions {
    SandboxOptions {
        token: TOKEN.to_owned(),
        requests_per_second: None,
        bulk_imports_per_minute: None,
        import_delay: Duration::ZERO,
        ..SandboxOptions::default()
    }
}

async fn start(opts: SandboxOptions) -> (Sandbox, Client) {
    let sandbox = Sandbox::start(opts).await.expect("sandbox starts");
    let client = Client::new(&sandbox);
    (sandbox, client)
}

struct Client {
    http: reqwest::Client,
    /// The API's base URL, `http://127.0.0.1:PORT/api/3`.
    base: String,
    /// The sandbox's own URL, for the `/_sandbox` views.
    host: String,
}

impl Client {
    fn new(sandbox: &Sandbox) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("{}/api/3", sandbox.host()),
            host: sandbox.host(),
        }
    }

    /// GETs a `/_sandbox` view with `token` as `Api-Token` (none when `None`).
    async fn view(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.host));
        if let Some(token) = token {
            request = request.header("Api-Token", token);
        }
        request.send().await.expect("request completes")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("Api-Token", TOKEN)
            .send()
            .await
            .expect("request completes")
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, serde_json::to_vec(body).expect("serializable"))
            .await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("Api-Token", TOKEN)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request completes")
    }

    /// Posts a bulk import and returns its batch id, asserting it was queued.
    async fn import(&self, contacts: Vec<Value>) -> String {
        let response = self
            .post("/import/bulk_import", &json!({"contacts": contacts}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("JSON body");
        body["batchId"].as_str().expect("batchId").to_owned()
    }

    async fn import_info(&self, batch_id: &str) -> Value {
        let response = self.get(&format!("/import/info?batchId={batch_id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON body")
    }

    /// Polls `import/info` until the batch is completed; returns the final answer.
    async fn wait_completed(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let info = self.import_info(batch_id).await;
            if info["status"] == "completed" {
                return info;
            }
            assert!(Instant::now() < deadline, "import never completed: {info}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn contact(email: &str) -> Value {
    json!({"email": email})
}

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

// --- token ---

#[tokio::test]
async fn a_wrong_token_is_answered_with_403_in_the_errors_envelope() {
    let (sandbox, _) = start(options()).await;

    let response = reqwest::Client::new()
        .get(format!("{}/api/3/users/me", sandbox.host()))
        .header("Api-Token", "wrong")
        .send()
        .await
        .expect("request completes");

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = body(response).await;
    assert_eq!(body["errors"][0]["status"], 403);
    assert_eq!(body["errors"][0]["title"], "Forbidden");
}

#[tokio::test]
async fn a_missing_token_is_answered_with_403() {
    let (sandbox, _) = start(options()).await;

    let response = reqwest::get(format!("{}/api/3/lists/1", sandbox.host()))
        .await
        .expect("request completes");

    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(sandbox.stats().forbidden, 1);
}

// --- users, lists, fields ---

#[tokio::test]
async fn users_me_describes_the_sandbox_user() {
    let (_sandbox, client) = start(options()).await;

    let response = client.get("/users/me").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body = body(response).await;
    assert_eq!(body["user"]["username"], "sandbox");
    assert_eq!(body["user"]["id"], "1");
}

#[tokio::test]
async fn a_known_list_is_returned_with_a_string_id() {
    let (_sandbox, client) = start(options()).await;

    let body = body(client.get("/lists/2").await).await;

    assert_eq!(body["list"]["id"], "2");
    assert_eq!(body["list"]["name"], "Customers");
    assert_eq!(body["list"]["stringid"], "customers");
}

#[tokio::test]
async fn an_unknown_list_is_a_404_naming_its_id() {
    let (_sandbox, client) = start(options()).await;

    let response = client.get("/lists/7").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body(response).await,
        json!({"message": "No Result found for _List with id 7"})
    );
}

#[tokio::test]
async fn fields_come_twenty_per_page_by_default_with_a_string_total() {
    let (_sandbox, client) = start(options()).await;

    let body = body(client.get("/fields").await).await;

    assert_eq!(body["fields"].as_array().map(Vec::len), Some(20));
    assert_eq!(body["meta"]["total"], "25");
    assert_eq!(body["fields"][0]["id"], "1");
}

#[tokio::test]
async fn the_second_page_of_fields_holds_the_rest() {
    let (_sandbox, client) = start(options()).await;

    let body = body(client.get("/fields?limit=20&offset=20").await).await;

    let ids: Vec<&str> = body["fields"]
        .as_array()
        .expect("fields array")
        .iter()
        .filter_map(|field| field["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["21", "22", "23", "24", "25"]);
}

#[tokio::test]
async fn an_unknown_path_is_a_404_with_a_message() {
    let (_sandbox, client) = start(options()).await;

    let response = client.get("/deals").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(body(response).await["message"].is_string());
}

// --- bulk import and import/info ---

#[tokio::test]
async fn a_bulk_import_reports_queued_then_active_then_completed() {
    let opts = SandboxOptions {
        import_delay: Duration::from_millis(200),
        ..options()
    };
    let (_sandbox, client) = start(opts).await;
    let batch = client.import(vec![contact("a@example.com")]).await;

    let first = client.import_info(&batch).await;
    let mut seen = vec![first["status"].clone()];
    let deadline = Instant::now() + PATIENCE;
    while seen.last() != Some(&json!("completed")) && Instant::now() < deadline {
        let status = client.import_info(&batch).await["status"].clone();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(
        seen,
        vec![json!(false), json!("active"), json!("completed")]
    );
}

#[tokio::test]
async fn a_completed_import_lists_the_created_contact_ids() {
    let (sandbox, client) = start(options()).await;
    let batch = client
        .import(vec![contact("a@example.com"), contact("b@example.com")])
        .await;

    let info = client.wait_completed(&batch).await;

    let a = sandbox.contact("a@example.com").expect("a imported");
    let b = sandbox.contact("b@example.com").expect("b imported");
    assert_eq!(info["success"], json!([a.id.to_string(), b.id.to_string()]));
    assert_eq!(info["failure"], json!([]));
}

#[tokio::test]
async fn an_imported_contact_keeps_its_names_fields_tags_and_list_status() {
    let (sandbox, client) = start(options()).await;
    let batch = client
        .import(vec![json!({
            "email": "Ada@Example.com", "first_name": "Ada", "last_name": "Lovelace",
            "phone": "123-456-7890", "tags": ["vip", "beta"],
            "fields": [{"id": 3, "value": "London"}, {"id": "4", "value": "1815"}],
            "subscribe": [{"listid": 1}], "unsubscribe": [{"listid": "2"}]
        })])
        .await;

    client.wait_completed(&batch).await;

    let stored = sandbox.contact("ada@example.com").expect("imported");
    assert_eq!(stored.email, "Ada@Example.com");
    assert_eq!(stored.first_name.as_deref(), Some("Ada"));
    assert_eq!(stored.last_name.as_deref(), Some("Lovelace"));
    assert_eq!(stored.phone.as_deref(), Some("123-456-7890"));
    assert_eq!(
        stored.fields,
        BTreeMap::from([(3, "London".to_owned()), (4, "1815".to_owned())])
    );
    assert_eq!(
        stored.tags,
        BTreeSet::from(["beta".to_owned(), "vip".to_owned()])
    );
    assert_eq!(
        sandbox.list_status("ada@example.com", 1),
        Some(ListStatus::Active)
    );
    assert_eq!(
        sandbox.list_status("ada@example.com", 2),
        Some(ListStatus::Unsubscribed)
    );
    assert_eq!(sandbox.members(1, ListStatus::Active), 1);
}

#[tokio::test]
async fn accepted_imports_alternate_the_spelling_of_success() {
    let (_sandbox, client) = start(options()).await;
    let mut keys = Vec::new();

    for email in ["a@example.com", "b@example.com"] {
        let response = client
            .post(
                "/import/bulk_import",
                &json!({"contacts": [contact(email)]}),
            )
            .await;
        let body = body(response).await;
        assert_eq!(body["queued_contacts"], 1);
        assert_eq!(body["message"], "Contact import queued");
        keys.push(if body.get("Success") == Some(&json!(1)) {
            "Success"
        } else if body.get("success") == Some(&json!(1)) {
            "success"
        } else {
            "missing"
        });
    }

    assert_eq!(keys, vec!["Success", "success"]);
}

#[tokio::test]
async fn an_invalid_email_rejects_the_whole_batch_naming_its_index() {
    let (sandbox, client) = start(options()).await;
    let contacts = json!({"contacts": [
        contact("good@example.com"), contact("bad@example"), contact("also(bad)@example.com")
    ]});

    let response = client.post("/import/bulk_import", &contacts).await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body(response).await;
    assert_eq!(body["success"], 0);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("The import was not queued"))
    );
    assert_eq!(
        body["failureReasons"],
        json!([
            {"contact": 1, "failureReason": "Field 'email' incorrect format"},
            {"contact": 2, "failureReason": "Field 'email' incorrect format"}
        ])
    );
    assert_eq!(sandbox.stats().bulk_imports, 0);
}

#[tokio::test]
async fn more_than_250_contacts_are_rejected() {
    let (sandbox, client) = start(options()).await;
    let contacts: Vec<Value> = (0..251)
        .map(|n| contact(&format!("p{n}@example.com")))
        .collect();

    let response = client
        .post("/import/bulk_import", &json!({"contacts": contacts}))
        .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(response).await["success"], 0);
    assert_eq!(sandbox.stats().bulk_imports, 0);
}

/// A bulk body of exactly `size` bytes: one contact whose field value pads it.
fn bulk_body_of_size(size: usize) -> Vec<u8> {
    let build = |pad: usize| {
        serde_json::to_vec(&json!({"contacts": [{
            "email": "a@example.com", "fields": [{"id": 1, "value": "x".repeat(pad)}]
        }]}))
        .expect("serializable")
    };
    let overhead = build(0).len();
    let body = build(size - overhead);
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn a_bulk_payload_of_400000_bytes_is_rejected_naming_the_limit() {
    let (_sandbox, client) = start(options()).await;

    let response = client
        .post_raw("/import/bulk_import", bulk_body_of_size(400_000))
        .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body(response).await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("400000")),
        "{body}"
    );
}

#[tokio::test]
async fn a_bulk_payload_of_399999_bytes_is_accepted() {
    let (_sandbox, client) = start(options()).await;

    let response = client
        .post_raw("/import/bulk_import", bulk_body_of_size(399_999))
        .await;

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn import_info_without_a_batch_id_is_a_400() {
    let (_sandbox, client) = start(options()).await;

    let response = client.get("/import/info").await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body(response).await,
        json!({"success": 0, "message": "'batchId' is a required field."})
    );
}

#[tokio::test]
async fn import_info_for_an_unknown_batch_is_a_404() {
    let (_sandbox, client) = start(options()).await;

    let response = client.get("/import/info?batchId=nope").await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_excluded_email_lands_in_failure() {
    let (sandbox, client) = start(options()).await;
    sandbox.exclude("blocked@example.com");
    let batch = client
        .import(vec![
            contact("Blocked@example.com"),
            contact("ok@example.com"),
        ])
        .await;

    let info = client.wait_completed(&batch).await;

    assert_eq!(info["failure"], json!(["Blocked@example.com"]));
    assert_eq!(sandbox.contact("blocked@example.com"), None);
    assert!(sandbox.contact("ok@example.com").is_some());
}

#[tokio::test]
async fn an_unsubscribed_contact_is_not_resubscribed_by_a_bulk_import() {
    let (sandbox, client) = start(options()).await;
    sandbox.unsubscribe("gone@example.com", 1);
    let batch = client
        .import(vec![
            json!({"email": "gone@example.com", "subscribe": [{"listid": 1}]}),
        ])
        .await;

    let info = client.wait_completed(&batch).await;

    assert_eq!(info["failure"], json!(["gone@example.com"]));
    assert_eq!(
        sandbox.list_status("gone@example.com", 1),
        Some(ListStatus::Unsubscribed)
    );
}

#[tokio::test]
async fn without_stored_contacts_an_import_completes_with_empty_success() {
    let opts = SandboxOptions {
        store_contacts: false,
        ..options()
    };
    let (sandbox, client) = start(opts).await;
    let batch = client
        .import(vec![
            json!({"email": "a@example.com", "subscribe": [{"listid": 1}]}),
        ])
        .await;

    let info = client.wait_completed(&batch).await;

    assert_eq!(info["success"], json!([]));
    assert_eq!(sandbox.contacts(), Vec::new());
    assert_eq!(sandbox.stats().contacts_imported, 1);
    assert_eq!(sandbox.members(1, ListStatus::Active), 1);
}

// --- limits ---

#[tokio::test]
async fn the_bulk_limit_answers_400_rate_limit_exceeded() {
    let opts = SandboxOptions {
        bulk_imports_per_minute: Some(2),
        ..options()
    };
    let (sandbox, client) = start(opts).await;
    let pair = json!({"contacts": [contact("a@example.com"), contact("b@example.com")]});
    for _ in 0..2 {
        assert_eq!(
            client.post("/import/bulk_import", &pair).await.status(),
            StatusCode::OK
        );
    }

    let response = client.post("/import/bulk_import", &pair).await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body(response).await;
    assert_eq!(body["message"], "Rate limit exceeded.");
    assert_eq!(
        body["failureReasons"][0],
        "Up to 2 imports may be requested per minute.Please batch contacts into larger \
         requests, or retry this request in a minute."
    );
    assert_eq!(sandbox.stats().bulk_rate_limited, 1);
}

#[tokio::test]
async fn single_contact_imports_do_not_use_the_multi_contact_bulk_limit() {
    let opts = SandboxOptions {
        bulk_imports_per_minute: Some(1),
        ..options()
    };
    let (_sandbox, client) = start(opts).await;
    let single = json!({"contacts": [contact("a@example.com")]});

    let first = client.post("/import/bulk_import", &single).await.status();
    let second = client.post("/import/bulk_import", &single).await.status();

    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));
}

#[tokio::test]
async fn exceeding_the_per_second_limit_answers_429_with_retry_after() {
    let opts = SandboxOptions {
        requests_per_second: Some(2),
        retry_after_secs: 7,
        ..options()
    };
    let (sandbox, client) = start(opts).await;
    client.get("/users/me").await;
    client.get("/users/me").await;

    let response = client.get("/users/me").await;

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), Some("7"));
    assert_eq!(header(&response, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&response, "ratelimit-remaining"), Some("0"));
    assert_eq!(sandbox.stats().too_many_requests, 1);
}

#[tokio::test]
async fn accepted_responses_carry_the_remaining_budget() {
    let opts = SandboxOptions {
        requests_per_second: Some(5),
        ..options()
    };
    let (_sandbox, client) = start(opts).await;

    let response = client.get("/users/me").await;

    assert_eq!(header(&response, "ratelimit-limit"), Some("5"));
    assert_eq!(header(&response, "ratelimit-remaining"), Some("4"));
}

// --- faults ---

#[tokio::test]
async fn a_status_fault_answers_in_place_of_the_endpoint() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/api/3/users".to_owned(),
        times: 1,
        action: FaultAction::Status {
            status: 503,
            retry_after: Some(3),
            body: r#"{"message":"down"}"#.to_owned(),
        },
    });

    let faulted = client.get("/users/me").await;
    let after = client.get("/users/me").await;

    assert_eq!(faulted.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&faulted, "retry-after"), Some("3"));
    assert_eq!(body(faulted).await, json!({"message": "down"}));
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_status_fault_applies_before_the_token_check() {
    let (sandbox, _) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/".to_owned(),
        times: 1,
        action: FaultAction::Status {
            status: 500,
            retry_after: None,
            body: "{}".to_owned(),
        },
    });

    let response = reqwest::get(format!("{}/api/3/users/me", sandbox.host()))
        .await
        .expect("request completes");

    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_drop_fault_closes_the_connection_without_a_response() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/import".to_owned(),
        times: 1,
        action: FaultAction::Drop,
    });

    let dropped = client
        .http
        .post(format!("{}/import/bulk_import", client.base))
        .header("Api-Token", TOKEN)
        .json(&json!({"contacts": [contact("a@example.com")]}))
        .send()
        .await;

    assert!(dropped.is_err(), "expected a transport error: {dropped:?}");
    assert_eq!(sandbox.stats().bulk_imports, 0);
    assert_eq!(sandbox.requests()[0].status, 0);
}

#[tokio::test]
async fn after_a_drop_fault_the_next_request_is_served() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/users".to_owned(),
        times: 1,
        action: FaultAction::Drop,
    });
    let _dropped = client
        .http
        .get(format!("{}/users/me", client.base))
        .header("Api-Token", TOKEN)
        .send()
        .await;

    let response = client.get("/users/me").await;

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_delay_fault_makes_a_client_time_out() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/users".to_owned(),
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(30)),
    });

    let result = client
        .http
        .get(format!("{}/users/me", client.base))
        .header("Api-Token", TOKEN)
        .timeout(Duration::from_millis(100))
        .send()
        .await;

    assert!(result.is_err_and(|error| error.is_timeout()));
}

#[tokio::test]
async fn a_faulted_bulk_import_is_logged_with_its_contact_count() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/import/bulk_import".to_owned(),
        times: 1,
        action: FaultAction::Status {
            status: 500,
            retry_after: None,
            body: "{}".to_owned(),
        },
    });
    let pair = json!({"contacts": [contact("a@example.com"), contact("b@example.com")]});

    client.post("/import/bulk_import", &pair).await;

    let record = &sandbox.requests()[0];
    assert_eq!((record.status, record.contacts), (500, 2));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_delayed_response() {
    let (sandbox, client) = start(options()).await;
    sandbox.inject(Fault {
        path_prefix: "/users".to_owned(),
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(30)),
    });
    let pending = tokio::spawn(async move {
        client
            .http
            .get(format!("{}/users/me", client.base))
            .header("Api-Token", TOKEN)
            .send()
            .await
    });
    let deadline = Instant::now() + PATIENCE;
    while sandbox.stats().faults_applied == 0 {
        assert!(
            Instant::now() < deadline,
            "the delayed request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let stopped = tokio::time::timeout(PATIENCE, sandbox.shutdown()).await;

    assert!(stopped.is_ok(), "shutdown waited for the delay");
    let answer = pending.await.expect("request task");
    assert!(answer.is_err(), "expected a dropped connection: {answer:?}");
}

// --- inspection and lifecycle ---

#[tokio::test]
async fn the_request_log_records_bulk_contact_counts() {
    let (sandbox, client) = start(options()).await;
    client.get("/users/me").await;
    client
        .import(vec![contact("a@example.com"), contact("b@example.com")])
        .await;

    let log: Vec<(String, String, u16, usize)> = sandbox
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.status, r.contacts))
        .collect();

    assert_eq!(
        log,
        vec![
            ("GET".to_owned(), "/api/3/users/me".to_owned(), 200, 0),
            (
                "POST".to_owned(),
                "/api/3/import/bulk_import".to_owned(),
                200,
                2
            ),
        ]
    );
}

#[tokio::test]
async fn max_requests_in_window_counts_only_the_matching_paths() {
    let (sandbox, client) = start(options()).await;
    client.get("/users/me").await;
    client.get("/lists/2").await;
    client.get("/lists/1").await;

    let lists = sandbox.max_requests_in_window(Duration::from_secs(60), Some("/lists"));
    let all = sandbox.max_requests_in_window(Duration::from_secs(60), None);

    assert_eq!((lists, all), (2, 3));
}

#[tokio::test]
async fn the_stats_view_answers_with_the_token() {
    let (_sandbox, client) = start(options()).await;
    client.get("/users/me").await;

    let response = client.view("/_sandbox/stats", Some(TOKEN)).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await["requests"], 1);
}

#[tokio::test]
async fn the_stats_view_shows_the_peak_attempts_per_second_and_bulk_imports_per_minute() {
    // Limit of 2 a second: the third request is refused, yet it was sent and counts.
    let opts = SandboxOptions {
        requests_per_second: Some(2),
        ..options()
    };
    let (_sandbox, client) = start(opts).await;
    let import = json!({"contacts": [{"email": "a@example.com"}, {"email": "b@example.com"}]});
    client.post("/import/bulk_import", &import).await;
    client.post("/import/bulk_import", &import).await;
    let refused = client.get("/users/me").await;

    let stats = body(client.view("/_sandbox/stats", Some(TOKEN)).await).await;

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stats["peak_requests_per_second"], 3);
    assert_eq!(stats["peak_bulk_imports_per_minute"], 2);
}

#[tokio::test]
async fn the_views_refuse_a_request_without_the_token_or_with_a_wrong_one_and_show_no_profile() {
    let (sandbox, client) = start(options()).await;
    sandbox.unsubscribe("ada.lovelace@example.com", 1);

    for path in [
        "/_sandbox/contacts",
        "/_sandbox/contacts?list=1",
        "/_sandbox/stats",
    ] {
        for token in [None, Some("wrong"), Some(""), Some("test-token-but-longer")] {
            let response = client.view(path, token).await;

            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path} {token:?}");
            let text = response.text().await.expect("body");
            assert!(!text.contains("ada.lovelace"), "{path} {token:?}: {text}");
        }
    }
}

#[tokio::test]
async fn the_contacts_view_filters_by_list() {
    let (sandbox, client) = start(options()).await;
    sandbox.unsubscribe("a@example.com", 1);
    sandbox.unsubscribe("b@example.com", 2);

    let response = client.view("/_sandbox/contacts?list=2", Some(TOKEN)).await;

    let body = body(response).await;
    assert_eq!(body["total"], 1);
    assert_eq!(body["contacts"][0]["status"], "Unsubscribed");
}

#[tokio::test]
async fn latency_is_added_to_every_response() {
    let opts = SandboxOptions {
        latency: Duration::from_millis(50),
        ..options()
    };
    let (_sandbox, client) = start(opts).await;
    let started = Instant::now();

    client.get("/users/me").await;

    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn after_shutdown_the_port_refuses_connections() {
    let (sandbox, _) = start(options()).await;
    let host = sandbox.host();

    sandbox.shutdown().await;

    assert!(
        reqwest::get(format!("{host}/api/3/users/me"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn serve_stops_when_its_shutdown_future_completes() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = bind(addr).await.expect("bind");
    let server = tokio::spawn(serve(listener, options(), async {
        stopped.await.ok();
    }));

    stop.send(()).ok();

    let result = tokio::time::timeout(PATIENCE, server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[test]
fn the_default_token_is_made_up_for_each_sandbox_and_hidden_from_debug_output() {
    let (first, second) = (SandboxOptions::default(), SandboxOptions::default());

    assert_ne!(first.token, second.token);
    assert!(first.token.len() >= 32, "{}", first.token);
    assert!(!format!("{first:?}").contains(&first.token));
}
