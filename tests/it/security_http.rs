//! A hostile ActiveCampaign host, as an attacker would set one up on loopback: it redirects to
//! another host, proxies wait in the environment, and error bodies echo the API key and the
//! contacts. The key never leaves for another host, no proxy is used unless the settings name
//! one, and no server text reaches the database, the logs or the terminal as it was sent.
//!
//! The hostile servers here are plain `TcpListener`s speaking just enough HTTP/1.1, so that
//! they see every byte a client sends them (a connection counts even without a request).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{API_KEY, OutputExt, TestEnv, closed_port, contains, database_bytes};

/// A second loopback address: "another host" for a redirect, still on this machine.
const OTHER_LOOPBACK: &str = "127.0.0.2";
/// Longest request head a test server reads.
const MAX_HEAD: usize = 64 * 1024;
/// What ActiveCampaign's `users/me` says, for servers that answer as ActiveCampaign would.
const USER_ME: &str = r#"{"user":{"id":"7","username":"other-host-user","email":"u@x.example"}}"#;

/// One request as a test server read it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// The request target as sent: a path, or an absolute URL when sent to a proxy.
    target: String,
    /// The whole head as sent, to look for headers.
    head: String,
    body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (any case), if sent.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// How a test server answers one request.
enum Reply {
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Passed on to the sandbox, whose answer is returned: the server behaves.
    Forward,
}

impl Reply {
    fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("Content-Type", "application/json".to_owned())],
            body: body.into(),
        }
    }

    fn redirect(status: u16, location: String) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("Location", location)],
            body: String::new(),
        }
    }
}

type Answer = dyn Fn(&Received) -> Reply + Send + Sync;

/// A loopback HTTP server answering each request with `answer`, one request per connection.
struct TestServer {
    addr: SocketAddr,
    /// Connections accepted, whether or not a request followed.
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Listens on `ip` (a loopback address), forwarding to `sandbox` when told to.
    async fn start(
        ip: &str,
        sandbox: Option<SocketAddr>,
        answer: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind on loopback");
        let addr = listener.local_addr().expect("local address");
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let task = tokio::spawn({
            let (connections, received) = (connections.clone(), received.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (received, answer) = (received.clone(), answer.clone());
                    tokio::spawn(serve(stream, sandbox, received, answer));
                }
            }
        });
        TestServer {
            addr,
            connections,
            received,
            task,
        }
    }

    /// `http://ADDR`, as a connection's host or a proxy URL.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("requests").clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    sandbox: Option<SocketAddr>,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Answer>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    received.lock().expect("requests").push(request.clone());
    let (status, headers, body) = match answer(&request) {
        Reply::Answer {
            status,
            headers,
            body,
        } => (status, headers, body.into_bytes()),
        Reply::Forward => {
            let sandbox = sandbox.expect("a forwarding server knows the sandbox");
            forward(&request, sandbox).await
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?.to_owned();
    let mut request = Received {
        method,
        target,
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while request.body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.body.extend_from_slice(&chunk[..n]);
    }
    Some(request)
}

/// Sends `request` on to the sandbox and returns its answer.
async fn forward(
    request: &Received,
    sandbox: SocketAddr,
) -> (u16, Vec<(&'static str, String)>, Vec<u8>) {
    let path = match request.target.find("://") {
        Some(i) => request.target[i + 3..]
            .find('/')
            .map_or("/", |p| &request.target[i + 3 + p..]),
        None => request.target.as_str(),
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("forwarding client");
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("method");
    let mut outgoing = client
        .request(method, format!("http://{sandbox}{path}"))
        .body(request.body.clone());
    for name in ["api-token", "content-type"] {
        if let Some(value) = request.header(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = outgoing.send().await.expect("the sandbox answers");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("the sandbox's body").to_vec();
    (
        status,
        vec![("Content-Type", "application/json".to_owned())],
        body,
    )
}

/// `connection add crm --host HOST` with the key on stdin, the transfer accepted.
async fn add_connection(env: &TestEnv, host: &str) -> std::process::Output {
    env.run_stdin(
        &[
            "connection",
            "add",
            "crm",
            "--host",
            host,
            "--api-key-stdin",
            "--accept-data-transfer",
        ],
        API_KEY,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Finding 2: redirects

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_fails_connection_add_and_the_key_never_reaches_that_host() {
    let env = TestEnv::new().await;
    let other = TestServer::start(OTHER_LOOPBACK, None, |_| Reply::json(200, USER_ME)).await;
    let location = format!("{}/api/3/users/me", other.url());
    let redirecting = TestServer::start("127.0.0.1", None, move |_| {
        Reply::redirect(302, location.clone())
    })
    .await;

    let out = add_connection(&env, &redirecting.url()).await;

    out.assert_fails_with(
        1,
        &format!(
            "{} answered with a redirect to {} (HTTP 302)",
            redirecting.addr, other.addr
        ),
    );
    assert!(
        out.stderr_text().contains("never follows redirects"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(other.connections(), 0, "the other host was contacted");
    assert_eq!(redirecting.received().len(), 1, "a redirect is not retried");
    assert!(env.list_json("connection").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_during_connection_test_fails_it_and_the_connection_is_not_verified() {
    let env = TestEnv::new().await;
    let other = TestServer::start(OTHER_LOOPBACK, None, |_| Reply::json(200, USER_ME)).await;
    let hostile = Arc::new(AtomicBool::new(false));
    let location = format!("{}/api/3/users/me", other.url());
    let server = TestServer::start("127.0.0.1", Some(env.sandbox.addr()), {
        let hostile = hostile.clone();
        move |_| {
            if hostile.load(Ordering::SeqCst) {
                Reply::redirect(301, location.clone())
            } else {
                Reply::Forward
            }
        }
    })
    .await;
    add_connection(&env, &server.url()).await.assert_ok();
    hostile.store(true, Ordering::SeqCst);

    let out = env.run(&["connection", "test", "crm"]).await;

    out.assert_fails_with(1, &format!("redirect to {} (HTTP 301)", other.addr));
    assert_eq!(other.connections(), 0, "the other host was contacted");
    let saved = env.show_json("connection", "crm").await;
    assert_ne!(saved["status"], "verified", "{saved}");
    let detail = saved["status_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("redirect"), "{saved}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_307_on_a_bulk_import_fails_the_run_and_the_contacts_never_reach_the_other_host() {
    let env = TestEnv::new().await;
    let other = TestServer::start(OTHER_LOOPBACK, None, |_| {
        Reply::json(200, r#"{"success":1,"batchId":"stolen"}"#)
    })
    .await;
    let location = format!("{}/api/3/import/bulk_import", other.url());
    let server = TestServer::start("127.0.0.1", Some(env.sandbox.addr()), move |request| {
        if request.target.ends_with("import/bulk_import") {
            Reply::redirect(307, location.clone())
        } else {
            Reply::Forward
        }
    })
    .await;
    add_connection(&env, &server.url()).await.assert_ok();
    env.add_csv_segment("members").await;
    env.run(&crate::support::export_add_args(&[]))
        .await
        .assert_ok();

    let out = env.run(&["export", "run", "weekly"]).await;

    assert_eq!(
        other.connections(),
        0,
        "the contacts went to the other host"
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let runs = env.run(&["runs", "--export", "weekly", "--json"]).await;
    runs.assert_ok();
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&runs.stdout_text()).expect("runs --json");
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "{} answered with a redirect to {} (HTTP 307)",
            server.addr, other.addr
        )),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 3: proxies

/// Panics naming `what` if any of `secrets` is in `text`.
fn assert_none_in(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} holds {secret:?}:\n{text}");
    }
}

/// Every spelling of the proxy variables curl-like tools read, pointing at `proxy`.
fn proxy_variables(proxy: &str) -> Vec<(&'static str, String)> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.to_owned()))
    .chain([("NO_PROXY", String::new()), ("no_proxy", String::new())])
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_variables_in_the_environment_are_ignored_and_the_host_is_reached_directly() {
    let env = TestEnv::new().await;
    let proxy = TestServer::start("127.0.0.1", None, |_| Reply::json(502, "{}")).await;
    let vars = proxy_variables(&proxy.url());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = env.host();

    let out = env
        .run_with(
            &[
                "connection",
                "add",
                "crm",
                "--host",
                &host,
                "--api-key-stdin",
                "--accept-data-transfer",
            ],
            Some(API_KEY),
            &vars,
        )
        .await;

    out.assert_ok();
    assert_eq!(proxy.connections(), 0, "the environment's proxy was used");
    assert_eq!(env.requests_to("users/me"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_proxy_named_in_the_settings_is_used_and_its_password_never_shown() {
    let proxy = TestServer::start("127.0.0.1", None, |request| {
        if request.target.ends_with("/api/3/users/me") {
            Reply::json(200, r#"{"user":{"id":"7","username":"via-proxy"}}"#)
        } else {
            Reply::json(404, "{}")
        }
    })
    .await;
    let proxy_url = format!("http://proxy-user:proxy-pw-5eCret@{}", proxy.addr);
    let env = TestEnv::with_settings(&format!("[activecampaign]\nproxy = \"{proxy_url}\"\n")).await;
    let env_proxy = TestServer::start("127.0.0.1", None, |_| Reply::json(502, "{}")).await;
    let vars = proxy_variables(&env_proxy.url());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Nothing listens there: only a proxy can answer for it.
    let host = format!("http://127.0.0.1:{}", closed_port());

    let out = env
        .run_with(
            &[
                "connection",
                "add",
                "crm",
                "--host",
                &host,
                "--api-key-stdin",
                "--accept-data-transfer",
            ],
            Some(API_KEY),
            &vars,
        )
        .await;
    let config = env.run(&["check-config"]).await;

    out.assert_ok();
    assert_eq!(
        env.show_json("connection", "crm").await["export_user"],
        "via-proxy"
    );
    let seen = proxy.received();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, format!("{host}/api/3/users/me"));
    assert!(seen[0].header("proxy-authorization").is_some(), "{seen:?}");
    assert_eq!(
        env_proxy.connections(),
        0,
        "the environment's proxy was used"
    );
    config.assert_ok();
    let shown = config.stdout_text();
    assert!(shown.contains("activecampaign.proxy = "), "{shown}");
    assert!(shown.contains(&proxy.addr.to_string()), "{shown}");
    for output in [&out, &config] {
        assert_none_in(&output.stdout_text(), &["proxy-pw-5eCret"], "stdout");
        assert_none_in(&output.stderr_text(), &["proxy-pw-5eCret"], "stderr");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_is_neither_https_nor_on_loopback_is_refused_naming_the_key() {
    let env = TestEnv::new().await;
    for proxy in [
        "http://user:pw-hidden-1@192.0.2.10:3128",
        "socks5://127.0.0.1:1080",
        "ftp://proxy.example",
        "not a url",
    ] {
        let bad = env.write(
            "bad.toml",
            &format!("[activecampaign]\nproxy = \"{proxy}\"\n"),
        );

        let out = env.run(&["--config", &bad, "check-config"]).await;

        out.assert_fails_with(78, "settings key activecampaign.proxy");
        assert!(out.stderr_text().contains("https"), "{}", out.stderr_text());
        assert_none_in(&out.stderr_text(), &["pw-hidden-1"], "stderr");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_proxy_is_accepted_by_check_config() {
    let env = TestEnv::new().await;
    let good = env.write(
        "good.toml",
        "[activecampaign]\nproxy = \"https://proxy.example:8443\"\n",
    );

    let out = env.run(&["--config", &good, "check-config"]).await;

    out.assert_ok();
    assert!(
        out.stdout_text()
            .contains("activecampaign.proxy = \"https://proxy.example:8443\""),
        "{}",
        out.stdout_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 5: server text

/// Every text column that keeps what a server said: runs' errors, run issues' reasons and
/// connections' status details.
async fn stored_server_text(env: &TestEnv) -> Vec<String> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(env.store_path())
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("open the store");
    let mut texts = Vec::new();
    for query in [
        "SELECT error FROM runs WHERE error IS NOT NULL",
        "SELECT reason FROM run_issues",
        "SELECT status_detail FROM connections WHERE status_detail IS NOT NULL",
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(query)
            .fetch_all(&pool)
            .await
            .expect("read the store");
        texts.extend(rows.into_iter().map(|(text,)| text));
    }
    pool.close().await;
    texts
}

/// What the echoing `users/me` says besides the key it was sent.
const ECHOED_EMAIL: &str = "owner.person@example.com";
const ECHOED_PHONE: &str = "202 555 0143";
const ECHOED_NAME: &str = "Zelda Quux";

#[tokio::test(flavor = "multi_thread")]
async fn an_error_body_echoing_the_key_and_a_person_is_stored_and_shown_scrubbed() {
    let env = TestEnv::new().await;
    let hostile = Arc::new(AtomicBool::new(false));
    let server = TestServer::start("127.0.0.1", Some(env.sandbox.addr()), {
        let hostile = hostile.clone();
        move |request| {
            if !hostile.load(Ordering::SeqCst) {
                return Reply::Forward;
            }
            let key = request.header("api-token").unwrap_or_default();
            let body = serde_json::json!({
                "message": format!(
                    "Api-Token {key} of {ECHOED_EMAIL} (tel. +1 {ECHOED_PHONE}) is \
                     suspended\u{1b}[2J"
                ),
                "owner": {"name": ECHOED_NAME, "token": key},
            });
            Reply::json(403, body.to_string())
        }
    })
    .await;
    add_connection(&env, &server.url()).await.assert_ok();
    hostile.store(true, Ordering::SeqCst);

    let test = env.run(&["connection", "test", "crm"]).await;
    let show = env.run(&["connection", "show", "crm"]).await;
    let list = env.run(&["connection", "list"]).await;

    test.assert_fails_with(1, "is suspended");
    let secrets = [API_KEY, ECHOED_EMAIL, ECHOED_PHONE, ECHOED_NAME, "\u{1b}"];
    for output in [&test, &show, &list] {
        assert_none_in(&output.stdout_text(), &secrets, "stdout");
        assert_none_in(&output.stderr_text(), &secrets, "stderr");
    }
    for text in stored_server_text(&env).await {
        assert_none_in(&text, &secrets, "the database");
    }
    // Text only: a lone ESC byte may well stand in the file's binary parts.
    let bytes = database_bytes(&env.store_path());
    for secret in &secrets[..4] {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{secret:?} is in the database file"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_error_body_is_reported_by_its_size_only() {
    let env = TestEnv::new().await;
    let server = TestServer::start("127.0.0.1", None, |request| {
        let key = request.header("api-token").unwrap_or_default();
        Reply::Answer {
            status: 400,
            headers: vec![("Content-Type", "text/html".to_owned())],
            body: format!("<html>bad token {key} for {ECHOED_EMAIL}</html>"),
        }
    })
    .await;

    let out = add_connection(&env, &server.url()).await;

    let length = format!("<html>bad token {API_KEY} for {ECHOED_EMAIL}</html>").len();
    out.assert_fails_with(
        1,
        &format!("HTTP 400 with an unreadable body ({length} bytes)"),
    );
    assert_none_in(&out.stderr_text(), &[ECHOED_EMAIL, "<html>"], "stderr");
}

/// Two contacts with names and phones no message of acexport's own would hold.
const PEOPLE_CSV: &str = "email,first_name,last_name,phone\n\
                          ada@example.com,Augusta,Byron-King,+44 20 7946 0958\n\
                          alan@example.com,Mathison,Turingham,020-7946-0321\n";

/// Every string value of every contact in a bulk import body.
fn contact_values(body: &[u8]) -> Vec<String> {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut values = Vec::new();
    for contact in body["contacts"].as_array().into_iter().flatten() {
        for value in contact.as_object().into_iter().flat_map(|c| c.values()) {
            if let Some(text) = value.as_str() {
                values.push(text.to_owned());
            }
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_import_errors_echoing_the_key_and_the_contacts_are_stored_without_them() {
    let env = TestEnv::new().await;
    let echoed = Arc::new(Mutex::new(Vec::<String>::new()));
    let server = TestServer::start("127.0.0.1", Some(env.sandbox.addr()), {
        let echoed = echoed.clone();
        move |request| {
            if !request.target.ends_with("import/bulk_import") {
                return Reply::Forward;
            }
            let key = request.header("api-token").unwrap_or_default().to_owned();
            let values = contact_values(&request.body);
            echoed.lock().expect("echoed").extend(values.iter().cloned());
            let said = format!("{} (token {key})", values.join(", "));
            if values.len() > 4 {
                // A validation refusal naming the first contact, as ActiveCampaign words it.
                let body = serde_json::json!({
                    "success": 0,
                    "message": format!("JSON payload did not pass validation: {said}"),
                    "failureReasons": [{"contact": 0, "failureReason": format!("Bad contact {said}")}],
                });
                Reply::json(400, body.to_string())
            } else {
                let body = serde_json::json!({
                    "errors": [{"title": format!("Refused {said}"), "detail": format!("for {said}")}],
                });
                Reply::json(422, body.to_string())
            }
        }
    })
    .await;
    add_connection(&env, &server.url()).await.assert_ok();
    let csv = env.write("people.csv", PEOPLE_CSV);
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();
    env.run(&crate::support::export_add_args(&[
        "--first-name",
        "first_name",
        "--last-name",
        "last_name",
        "--phone",
        "phone",
    ]))
    .await
    .assert_ok();

    let run = env.run(&["export", "run", "weekly"]).await;
    let runs = env.run(&["runs", "--export", "weekly", "--json"]).await;
    let runs_json: Vec<serde_json::Value> =
        serde_json::from_str(&runs.stdout_text()).expect("runs --json");
    let run_id = runs_json[0]["id"].as_i64().expect("run id").to_string();
    let show = env.run(&["runs", "show", &run_id]).await;

    assert_eq!(
        run.code(),
        Some(2),
        "both contacts failed: {}",
        run.stderr_text()
    );
    let mut secrets: Vec<String> = echoed.lock().expect("echoed").clone();
    secrets.sort();
    secrets.dedup();
    assert!(secrets.iter().any(|v| v.contains("Augusta")), "{secrets:?}");
    assert!(
        secrets.iter().any(|v| v.contains("Turingham")),
        "{secrets:?}"
    );
    secrets.push(API_KEY.to_owned());
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let stored = stored_server_text(&env).await;
    assert!(
        stored.iter().any(|t| t.contains("Bad contact"))
            && stored.iter().any(|t| t.contains("Refused")),
        "the parsed messages are kept: {stored:?}"
    );
    for text in &stored {
        assert_none_in(text, &secrets, "the database");
    }
    for output in [&run, &runs, &show] {
        assert_none_in(&output.stdout_text(), &secrets, "stdout");
        assert_none_in(&output.stderr_text(), &secrets, "stderr");
    }
}
