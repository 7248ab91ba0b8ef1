//! The HTTP client for one ActiveCampaign account: every call takes a budget permit per
//! attempt, is classified by [`retry::classify`], and retried with bounded, jittered backoff.
//! Errors never carry the API key, and URLs (which may hold an email in a query) are stripped
//! from transport errors.
//!
//! What a server says in an error body is never kept as it was sent: only ActiveCampaign's
//! message fields are read, and they are scrubbed of the connection's key, of the values of
//! the contacts in the request, of addresses and of phone-like numbers, escaped and capped
//! ([`ServerTextScrubber`]), before any error carries them.
//!
//! No redirect is followed: a 3xx is an error naming both hosts. reqwest would follow it and
//! keep the `Api-Token` header (it drops only the standard credential headers), sending the key
//! to whatever host the answer names, over plain http too.

use std::borrow::Cow;
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::budget::{AccountBudget, RequestKind, budget_for};
use super::endpoint;
use super::host::BaseUrl;
use super::retry::{Attempt, Verdict, backoff, classify};
use super::wire;
use crate::escape::untrusted_capped;
use crate::redact::ServerTextScrubber;
use crate::settings::{ActiveCampaignSettings, ProxyUrl};

/// ActiveCampaign's largest page (`limit` max, AC pagination docs).
const MAX_PAGE: usize = 100;
/// Most custom fields read from one account: far more than any account defines, and a bound on
/// what a host that never stops paging can make us hold.
const MAX_FIELDS: usize = 10_000;
/// Connect timeout: an unreachable host should fail fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest redirect target shown, in characters: a DNS name (253) with a port.
const MAX_SHOWN_TARGET_CHARS: usize = 260;
/// Most bytes of an error body read: ActiveCampaign's are a few hundred bytes, and only their
/// message fields are kept; a hostile server could send gigabytes.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Most bytes of a success body read: ActiveCampaign's largest answers (a page of 100 fields,
/// the outcome of a 250-contact import) are tens of kilobytes; a hostile server could send
/// gigabytes, and the whole body is held in memory to be parsed.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Longest batch id accepted from a bulk import: ActiveCampaign's are UUIDs (36 characters).
const MAX_BATCH_ID_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AcError {
    /// `answer`: the status and ActiveCampaign's scrubbed message (see [`describe_answer`]).
    #[error("ActiveCampaign rejected the API key for {host} ({answer})")]
    Rejected { host: String, answer: String },
    #[error("{what} not found in ActiveCampaign at {host}")]
    NotFound { host: String, what: String },
    /// `answer`: the status and ActiveCampaign's scrubbed message (see [`describe_answer`]).
    #[error("ActiveCampaign at {host} refused the request ({answer})")]
    Refused {
        host: String,
        status: u16,
        answer: String,
    },
    #[error(
        "the API key for {host} holds characters that cannot be sent in an HTTP header; paste \
         it again as ActiveCampaign shows it (Settings > Developer)"
    )]
    UnsendableKey { host: String },
    #[error("ActiveCampaign at {host} answered HTTP {status} {attempts} times in a row; giving up")]
    Server {
        host: String,
        status: u16,
        attempts: u32,
    },
    #[error("ActiveCampaign at {host} kept throttling for more than {waited_secs} s; giving up")]
    Throttled { host: String, waited_secs: u64 },
    /// A 3xx answer: never followed, so the key only ever goes to the configured host.
    #[error(
        "{host} answered with a redirect to {target} (HTTP {status}); acexport never follows \
         redirects, so the API key is only ever sent to the host you configured"
    )]
    Redirect {
        host: String,
        /// The host the answer pointed to (escaped and capped), or what was wrong with it.
        target: String,
        status: u16,
    },
    #[error("the proxy {proxy} (activecampaign.proxy) cannot be used")]
    Proxy { proxy: String },
    #[error("cannot reach ActiveCampaign at {host}: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("secure connection to {host} failed (TLS): {detail}")]
    Tls { host: String, detail: String },
    #[error("ActiveCampaign at {host} did not answer within {secs} s ({attempts} attempts)")]
    Timeout {
        host: String,
        secs: u64,
        attempts: u32,
    },
    #[error("unexpected answer from ActiveCampaign at {host}: {detail}")]
    Decode { host: String, detail: String },
    /// The run is stopping: the request was not sent (its batch stays for the next run).
    #[error("not sent: the run is stopping")]
    Stopped,
    /// The run was aborted while the request waited or was in flight.
    #[error("aborted")]
    Aborted,
}

impl AcError {
    /// The key is invalid or lacks permission: the connection must be marked rejected.
    pub fn is_rejected_key(&self) -> bool {
        matches!(self, AcError::Rejected { .. })
    }

    /// Every later request of the run would fail the same way (a rejected key, a redirect):
    /// the run stops instead of sending the rest.
    pub fn stops_the_run(&self) -> bool {
        matches!(self, AcError::Rejected { .. } | AcError::Redirect { .. })
    }
}

/// Retry and timeout behaviour. Defaults follow the settings; tests shorten the backoff.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeout: Duration,
    pub requests_per_second: u32,
    pub bulk_imports_per_minute: u32,
    /// Attempts for transient failures (5xx, timeouts, dropped connections).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Longest total wait on throttling before a call gives up.
    pub max_throttle_wait: Duration,
    /// The proxy the settings name, if any; the environment's proxy variables are ignored.
    pub proxy: Option<ProxyUrl>,
    /// The folder of the account budgets that every process using it shares (the state
    /// folder's `locks/`); `None` keeps the budget in this process.
    pub budget_dir: Option<PathBuf>,
}

impl ClientOptions {
    pub fn from_settings(s: &ActiveCampaignSettings) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(s.timeout_secs),
            requests_per_second: s.requests_per_second,
            bulk_imports_per_minute: s.bulk_imports_per_minute,
            max_attempts: s.max_attempts,
            retry_base: Duration::from_millis(s.retry_base_ms),
            retry_cap: Duration::from_secs(30),
            max_throttle_wait: Duration::from_secs(900),
            proxy: s.proxy.clone(),
            budget_dir: None,
        }
    }
}

/// A response that passed classification: a body, or (for bulk imports only) a refusal that
/// names contacts, which is an outcome for the caller rather than an error: the rest is sent
/// again. Parsed here, so that no error ever carries a raw body (it may quote contacts).
enum Answer {
    Body(bytes::Bytes),
    BulkRejected(Vec<(usize, String)>),
}

pub struct Client {
    http: reqwest::Client,
    base: BaseUrl,
    /// Makes what the server says fit to keep; knows this connection's key.
    scrub: ServerTextScrubber,
    budget: Arc<AccountBudget>,
    options: ClientOptions,
    /// Requests sent, retries included (reported in run counts).
    requests: AtomicU64,
    /// Cancelled when the run is aborted: waits and requests in flight end at once.
    abort: CancellationToken,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(
        base: BaseUrl,
        key: SecretString,
        options: ClientOptions,
        abort: CancellationToken,
    ) -> Result<Client, AcError> {
        let mut token =
            HeaderValue::from_str(key.expose_secret()).map_err(|_| AcError::UnsendableKey {
                host: base.host().to_owned(),
            })?;
        token.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("Api-Token", token);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("acexport/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            // reqwest reads HTTP(S)_PROXY and ALL_PROXY by default: whoever sets one in the
            // service's environment would receive every key. Only the settings name a proxy.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT.min(options.timeout))
            .timeout(options.timeout);
        if let Some(proxy) = &options.proxy {
            // The URL was checked when the settings were loaded; its error would name it.
            let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|_| AcError::Proxy {
                proxy: proxy.redacted(),
            })?;
            builder = builder.proxy(proxy);
        }
        let http = builder.build().map_err(|e| AcError::Unreachable {
            host: base.host().to_owned(),
            detail: error_chain(&e.without_url()),
        })?;
        let budget = budget_for(
            options.budget_dir.as_deref(),
            base.host(),
            options.requests_per_second,
            options.bulk_imports_per_minute,
        );
        Ok(Client {
            http,
            base,
            scrub: ServerTextScrubber::new(&key),
            budget,
            options,
            requests: AtomicU64::new(0),
            abort,
        })
    }

    pub fn host(&self) -> &str {
        self.base.host()
    }

    /// Requests sent so far, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// "Connect": checks the key and returns the ActiveCampaign user it belongs to.
    pub async fn users_me(&self) -> Result<wire::User, AcError> {
        let answer = self
            .call(Method::GET, "users/me", &[], None, RequestKind::Plain)
            .await?;
        let parsed: wire::UserEnvelope = self.decode(&answer, "users/me")?;
        Ok(parsed.user)
    }

    pub async fn list(&self, id: i64) -> Result<wire::List, AcError> {
        let path = format!("lists/{id}");
        match self
            .call(Method::GET, &path, &[], None, RequestKind::Plain)
            .await
        {
            Ok(answer) => {
                let parsed: wire::ListEnvelope = self.decode(&answer, "lists")?;
                Ok(parsed.list)
            }
            Err(AcError::Refused { status: 404, .. }) => Err(AcError::NotFound {
                host: self.host().to_owned(),
                what: format!("list {id}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Every custom field, across pages (several tools missed fields past the first 20).
    pub async fn fields(&self) -> Result<Vec<wire::Field>, AcError> {
        let mut all = Vec::new();
        loop {
            let offset = all.len().to_string();
            let limit = MAX_PAGE.to_string();
            let query = [("limit", limit.as_str()), ("offset", offset.as_str())];
            let answer = self
                .call(Method::GET, "fields", &query, None, RequestKind::Plain)
                .await?;
            let page: wire::FieldsPage = self.decode(&answer, "fields")?;
            let got = page.fields.len();
            all.extend(page.fields);
            let total = page.meta.and_then(|m| m.total()).unwrap_or(0);
            // A short page is the last one, whatever `total` claims: a hostile or broken host
            // announcing a billion fields one per page would otherwise keep this loop going.
            if got < MAX_PAGE || all.len() >= total {
                return Ok(all);
            }
            if all.len() >= MAX_FIELDS {
                return Err(AcError::Decode {
                    host: self.host().to_owned(),
                    detail: format!("fields: more than {MAX_FIELDS} custom fields were listed"),
                });
            }
        }
    }

    /// Queues a bulk import. `body` is the serialised request (measured by the caller).
    /// Every bulk import counts against the bulk budget, single-contact ones included
    /// (ActiveCampaign limits those even more strictly).
    ///
    /// `go_on` is asked after the rate permit is granted and before each attempt is sent: a
    /// run told to stop leaves its unsent imports for the next run (`AcError::Stopped`)
    /// instead of sending them after the stop.
    pub async fn bulk_import(
        &self,
        body: Vec<u8>,
        go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<wire::BulkOutcome, AcError> {
        let answer = self
            .call_gated(
                Method::POST,
                "import/bulk_import",
                &[],
                Some(body),
                RequestKind::BulkImport,
                Some(go_on),
            )
            .await;
        match answer? {
            Answer::Body(body) => {
                let parsed: wire::BulkAccepted = self.decode(&body, "import/bulk_import")?;
                match parsed.batch_id {
                    Some(batch_id) if self.usable_batch_id(&batch_id) => {
                        Ok(wire::BulkOutcome::Queued { batch_id })
                    }
                    Some(_) => Err(AcError::Decode {
                        host: self.host().to_owned(),
                        detail: "bulk import accepted with a batchId that is not an id \
                                 (ActiveCampaign sends a UUID)"
                            .to_owned(),
                    }),
                    None => Err(AcError::Decode {
                        host: self.host().to_owned(),
                        detail: "bulk import accepted without a batchId".to_owned(),
                    }),
                }
            }
            Answer::BulkRejected(rejected) => Ok(wire::BulkOutcome::Rejected(rejected)),
        }
    }

    pub async fn import_info(&self, batch_id: &str) -> Result<wire::ImportInfo, AcError> {
        let query = [("batchId", batch_id)];
        let answer = self
            .call(Method::GET, "import/info", &query, None, RequestKind::Poll)
            .await?;
        self.decode(&answer, "import/info")
    }

    /// The id of the contact with this email, if ActiveCampaign has one. Only a contact whose
    /// email is the one asked for counts: a filter the server ignored would otherwise answer
    /// with someone else.
    pub async fn find_contact(&self, email: &str) -> Result<Option<String>, AcError> {
        let query = [("email", email)];
        let answer = self
            .call(Method::GET, "contacts", &query, None, RequestKind::Plain)
            .await?;
        let page: wire::ContactsPage = self.decode(&answer, "contacts")?;
        Ok(page
            .contacts
            .into_iter()
            .find(|c| c.email.trim().eq_ignore_ascii_case(email.trim()))
            .map(|c| c.id))
    }

    /// The contact's status code on the list (1 active, 2 unsubscribed, 3 bounced, ...), or
    /// `None` when it has none there.
    pub async fn list_status(&self, contact_id: &str, list_id: i64) -> Result<Option<u8>, AcError> {
        let path = format!("contacts/{contact_id}/contactLists");
        let answer = self
            .call(Method::GET, &path, &[], None, RequestKind::Plain)
            .await?;
        let lists: wire::ContactListsPage = self.decode(&answer, "contactLists")?;
        Ok(lists.status_on(list_id))
    }

    /// Subscribes the contact to the list with `contactLists` status 1, which (unlike a bulk
    /// import) also re-subscribes someone who is unsubscribed from it: only for members
    /// acexport itself unsubscribed.
    pub async fn resubscribe(&self, contact_id: &str, list_id: i64) -> Result<(), AcError> {
        let body = wire::resubscribe_body(contact_id, list_id).map_err(|e| AcError::Decode {
            host: self.host().to_owned(),
            detail: format!("contactLists: {e}"),
        })?;
        self.call(
            Method::POST,
            "contactLists",
            &[],
            Some(body),
            RequestKind::Plain,
        )
        .await?;
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        body: &[u8],
        what: &str,
    ) -> Result<T, AcError> {
        serde_json::from_slice(body).map_err(|e| AcError::Decode {
            host: self.host().to_owned(),
            detail: format!("{what}: {}", json_problem(&e)),
        })
    }

    /// A batch id goes into the run history and the next request: an id, not server prose.
    fn usable_batch_id(&self, id: &str) -> bool {
        !id.is_empty()
            && id.chars().count() <= MAX_BATCH_ID_CHARS
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && self.scrub.hide_secrets(id) == id
    }

    /// One logical call: permit, send, classify, and retry or fail.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        kind: RequestKind,
    ) -> Result<bytes::Bytes, AcError> {
        match self
            .call_gated(method, path, query, body, kind, None)
            .await?
        {
            Answer::Body(body) => Ok(body),
            // Only bulk imports are answered so.
            Answer::BulkRejected(rejected) => Err(AcError::Refused {
                host: self.host().to_owned(),
                status: StatusCode::BAD_REQUEST.as_u16(),
                answer: format!("HTTP 400: refused for {} named contact(s)", rejected.len()),
            }),
        }
    }

    /// [`Client::call`], asking `go_on` (when given) before each attempt is sent.
    async fn call_gated(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        kind: RequestKind,
        go_on: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Result<Answer, AcError> {
        let url = self.base.api(path);
        let body = body.map(bytes::Bytes::from);
        let mut failures = 0u32;
        let mut throttled = Duration::ZERO;
        let host = self.host().to_owned();
        let endpoint = endpoint::template(path);
        let metrics = crate::metrics::global();
        loop {
            let asked = Instant::now();
            self.wait_or_abort(self.budget.acquire(kind)).await?;
            metrics.record_permit(permit_kind(kind), asked.elapsed());
            if go_on.is_some_and(|go_on| !go_on()) {
                return Err(AcError::Stopped);
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut request = self.http.request(method.clone(), &url).query(query);
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let result = self.wait_or_abort(send(request)).await?;
            metrics.record_request(endpoint, attempt_status(&result));
            let (verdict, last) = match &result {
                Ok(answer) => (
                    classify(Attempt::Response {
                        status: answer.status,
                        retry_after: answer.retry_after.as_deref(),
                        body: &answer.body,
                    }),
                    LastProblem::Status(answer.status),
                ),
                Err(e) => {
                    let attempt = if e.is_timeout() {
                        Attempt::Timeout
                    } else if is_tls(e) {
                        Attempt::Tls
                    } else {
                        Attempt::Connection
                    };
                    (
                        classify(attempt),
                        LastProblem::Transport(attempt, self.transport_detail(e)),
                    )
                }
            };
            match verdict {
                Verdict::Success => {
                    let answer = result.map_err(|_| AcError::Aborted)?;
                    if answer.body_cut {
                        return Err(AcError::Decode {
                            host,
                            detail: format!(
                                "the answer is more than {MAX_BODY_BYTES} bytes, far more than \
                                 ActiveCampaign sends; it was not read"
                            ),
                        });
                    }
                    return Ok(Answer::Body(answer.body));
                }
                Verdict::Throttled(wait) => {
                    metrics.record_throttled(endpoint);
                    throttled += wait;
                    if throttled > self.options.max_throttle_wait {
                        return Err(AcError::Throttled {
                            host,
                            waited_secs: throttled.as_secs(),
                        });
                    }
                    tracing::warn!(host = %host, wait_ms = wait.as_millis() as u64, "ActiveCampaign throttled a request; pausing the account");
                    self.budget.pause_for(wait);
                }
                Verdict::Transient => {
                    failures += 1;
                    if failures >= self.options.max_attempts {
                        return Err(last.into_error(host, failures, self.options.timeout));
                    }
                    let wait = backoff(
                        failures - 1,
                        self.options.retry_base,
                        self.options.retry_cap,
                    );
                    tracing::warn!(host = %host, attempt = failures, wait_ms = wait.as_millis() as u64, problem = %last, "Request failed; retrying");
                    self.wait_or_abort(tokio::time::sleep(wait)).await?;
                }
                Verdict::Permanent => {
                    // A bulk import's answer may quote its contacts: remove their values too.
                    let scrub = match (&body, kind) {
                        (Some(sent), RequestKind::BulkImport) => {
                            self.scrub.with_values(wire::bulk_contact_values(sent))
                        }
                        _ => self.scrub.clone(),
                    };
                    if let Ok(answer) = &result
                        && answer.status == StatusCode::BAD_REQUEST
                        && kind == RequestKind::BulkImport
                        && let Some(rejected) = wire::parse_bulk_rejection(&answer.body)
                    {
                        let rejected = rejected
                            .into_iter()
                            .map(|(index, reason)| (index, scrub.scrub(&reason)))
                            .collect();
                        return Ok(Answer::BulkRejected(rejected));
                    }
                    return Err(match result {
                        Ok(answer) if answer.status.is_redirection() => {
                            self.redirect_error(&url, &answer)
                        }
                        Ok(answer) => self.permanent_error(&answer, &scrub),
                        Err(e) => AcError::Tls {
                            host,
                            detail: self.transport_detail(&e),
                        },
                    });
                }
            }
        }
    }

    fn permanent_error(&self, answer: &Received, scrub: &ServerTextScrubber) -> AcError {
        let host = self.host().to_owned();
        let described = describe_answer(answer, scrub);
        if answer.status == StatusCode::FORBIDDEN {
            return AcError::Rejected {
                host,
                answer: described,
            };
        }
        AcError::Refused {
            host,
            status: answer.status.as_u16(),
            answer: described,
        }
    }

    /// A transport error on one line, saying which proxy it went through, if any.
    fn transport_detail(&self, e: &reqwest::Error) -> String {
        // The chain can quote the server (a TLS failure names its certificate's hosts): it is
        // bounded and escaped like any other server text.
        let chain = crate::escape::untrusted_capped(
            &self.scrub.hide_secrets(&error_chain(e)),
            crate::redact::MAX_SERVER_MESSAGE_CHARS,
        )
        .into_owned();
        match &self.options.proxy {
            Some(proxy) => format!("{chain} (through the proxy {})", proxy.redacted()),
            None => chain,
        }
    }

    /// A 3xx answer, naming where it pointed.
    fn redirect_error(&self, url: &str, answer: &Received) -> AcError {
        AcError::Redirect {
            host: self.host().to_owned(),
            target: redirect_target(url, answer.location.as_deref(), &self.scrub),
            status: answer.status.as_u16(),
        }
    }

    /// Awaits `fut` unless the run is aborted first (`AcError::Aborted`).
    pub async fn wait_or_abort<T>(&self, fut: impl Future<Output = T>) -> Result<T, AcError> {
        tokio::select! {
            biased;
            () = self.abort.cancelled() => Err(AcError::Aborted),
            out = fut => Ok(out),
        }
    }
}

/// Where a redirect from `url` points: the host and port only (a path or query could hold
/// anything), without the key (a host name can hold it too), escaped and capped, since the
/// server chose it.
/// The `kind` label of a rate permit.
fn permit_kind(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Plain => "request",
        RequestKind::BulkImport => "bulk_import",
        RequestKind::Poll => "poll",
    }
}

/// The `status` label of an attempt: its HTTP status, or how it failed without one.
fn attempt_status(result: &Result<Received, reqwest::Error>) -> Cow<'static, str> {
    match result {
        Ok(answer) => Cow::Owned(answer.status.as_u16().to_string()),
        Err(e) if e.is_timeout() => Cow::Borrowed("timeout"),
        Err(e) if is_tls(e) => Cow::Borrowed("tls"),
        Err(_) => Cow::Borrowed("connection"),
    }
}

fn redirect_target(url: &str, location: Option<&str>, scrub: &ServerTextScrubber) -> String {
    let Some(location) = location else {
        return "no location".to_owned();
    };
    let target = match Url::parse(url).and_then(|base| base.join(location)) {
        Ok(to) => match (to.host_str(), to.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => "a location without a host".to_owned(),
        },
        Err(_) => "an unreadable location".to_owned(),
    };
    untrusted_capped(&scrub.hide_secrets(&target), MAX_SHOWN_TARGET_CHARS).into_owned()
}

/// An error answer as errors carry it: `HTTP 404: <message>`, with ActiveCampaign's message
/// fields only, scrubbed; never the body itself.
fn describe_answer(answer: &Received, scrub: &ServerTextScrubber) -> String {
    let status = answer.status.as_u16();
    if answer.body_cut {
        return format!(
            "HTTP {status} with an unreadable body (more than {MAX_ERROR_BODY_BYTES} bytes)"
        );
    }
    match wire::error_text(&answer.body) {
        wire::ErrorText::Message(message) => format!("HTTP {status}: {}", scrub.scrub(&message)),
        wire::ErrorText::NoMessage => format!("HTTP {status}"),
        wire::ErrorText::Unreadable => format!(
            "HTTP {status} with an unreadable body ({} bytes)",
            answer.body.len()
        ),
    }
}

/// What is wrong with a JSON answer, without quoting it: serde's messages quote the values
/// they stumbled on, and those are the server's text.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not JSON",
        Category::Data => "does not hold the expected fields",
        Category::Eof => "ends early",
    };
    format!(
        "the body {problem} (line {}, column {})",
        e.line(),
        e.column()
    )
}

/// What one attempt got back.
struct Received {
    status: StatusCode,
    retry_after: Option<String>,
    /// Where a 3xx pointed; reported, never followed.
    location: Option<String>,
    /// At most [`MAX_BODY_BYTES`] of a success, [`MAX_ERROR_BODY_BYTES`] of an error.
    body: bytes::Bytes,
    /// The body was longer than its cap and was not read to its end.
    body_cut: bool,
}

async fn send(request: reqwest::RequestBuilder) -> Result<Received, reqwest::Error> {
    let response = request.send().await.map_err(reqwest::Error::without_url)?;
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let retry_after = header(RETRY_AFTER);
    let location = header(LOCATION);
    // Read in chunks up to a cap, never whole: a hostile server could send gigabytes.
    let cap = if status.is_success() {
        MAX_BODY_BYTES
    } else {
        MAX_ERROR_BODY_BYTES
    };
    let mut response = response;
    let mut body = bytes::BytesMut::new();
    let mut body_cut = false;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(reqwest::Error::without_url)?
    {
        if body.len() + chunk.len() > cap {
            body_cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Received {
        status,
        retry_after,
        location,
        body: body.freeze(),
        body_cut,
    })
}

enum LastProblem {
    Status(StatusCode),
    Transport(Attempt<'static>, String),
}

impl std::fmt::Display for LastProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastProblem::Status(s) => write!(f, "HTTP {}", s.as_u16()),
            LastProblem::Transport(_, detail) => f.write_str(detail),
        }
    }
}

impl LastProblem {
    fn into_error(self, host: String, attempts: u32, timeout: Duration) -> AcError {
        match self {
            LastProblem::Status(status) => AcError::Server {
                host,
                status: status.as_u16(),
                attempts,
            },
            LastProblem::Transport(Attempt::Timeout, _) => AcError::Timeout {
                host,
                secs: timeout.as_secs(),
                attempts,
            },
            LastProblem::Transport(_, detail) => AcError::Unreachable { host, detail },
        }
    }
}

/// The error and its causes on one line ("error sending request: connection refused").
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn is_tls(e: &reqwest::Error) -> bool {
    // Certificate and handshake failures, in rustls' wording: not transient, never retried.
    const TLS_FAILURES: &[&str] = &[
        "certificate",
        "tls handshake",
        "invalid peer",
        "unknownissuer",
        "handshake failure",
        "corrupt message",
        "invalidcontenttype",
        "peer misbehaved",
        "peer is incompatible",
        "received fatal alert",
        "no application protocol",
    ];
    let chain = error_chain(e).to_ascii_lowercase();
    TLS_FAILURES.iter().any(|needle| chain.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrubber for the key `k3y-0123456789abcdef`.
    fn scrub() -> ServerTextScrubber {
        ServerTextScrubber::new(&SecretString::from("k3y-0123456789abcdef"))
    }

    #[test]
    fn a_redirect_is_shown_by_the_host_it_points_to_and_nothing_else() {
        let from = "https://acme.api-us1.com/api/3/users/me";
        for (location, shown) in [
            (
                Some("https://evil.example/api/3/users/me?k=1"),
                "evil.example",
            ),
            (Some("http://user:pw@127.0.0.2:8080/x"), "127.0.0.2:8080"),
            (Some("/elsewhere"), "acme.api-us1.com"),
            (Some("//other.example/x"), "other.example"),
            (Some("https://"), "an unreadable location"),
            (Some("data:text/plain,hello"), "a location without a host"),
            (None, "no location"),
            (
                Some("https://K3Y-0123456789ABCDEF.evil.example/"),
                "***.evil.example",
            ),
        ] {
            assert_eq!(
                redirect_target(from, location, &scrub()),
                shown,
                "{location:?}"
            );
        }
    }

    #[test]
    fn a_hostile_redirect_target_is_capped() {
        let long = format!("https://{}.example/", "a".repeat(400));
        let shown = redirect_target("https://acme.api-us1.com/", Some(&long), &scrub());
        assert!(
            shown.chars().count() <= MAX_SHOWN_TARGET_CHARS + 1,
            "{shown}"
        );
    }

    fn answer(status: u16, body: &str) -> Received {
        Received {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after: None,
            location: None,
            body: bytes::Bytes::from(body.to_owned()),
            body_cut: false,
        }
    }

    #[test]
    fn an_error_answer_is_described_by_its_status_and_scrubbed_message_only() {
        let cases = [
            (
                answer(404, r#"{"message":"No Result found for _List with id 7"}"#),
                "HTTP 404: No Result found for _List with id 7",
            ),
            (
                answer(
                    403,
                    r#"{"message":"key k3y-0123456789abcdef of a@b.example","k":"x"}"#,
                ),
                "HTTP 403: key *** of [address]",
            ),
            (
                answer(422, r#"{"owner":"k3y-0123456789abcdef"}"#),
                "HTTP 422",
            ),
            (answer(400, ""), "HTTP 400"),
            (
                answer(400, "<html>k3y-0123456789abcdef</html>"),
                "HTTP 400 with an unreadable body (33 bytes)",
            ),
            (
                Received {
                    body_cut: true,
                    ..answer(400, "{")
                },
                "HTTP 400 with an unreadable body (more than 65536 bytes)",
            ),
        ];
        for (answer, described) in cases {
            assert_eq!(describe_answer(&answer, &scrub()), described);
        }
    }

    /// A loopback server answering every connection with `head` then `body_len` bytes of
    /// `fill` inside a JSON user object, as a hostile host could.
    async fn hostile_server(body_len: usize) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let open = br#"{"user":{"id":"1","username":""#;
                    let close = br#""}}"#;
                    let len = open.len() + body_len + close.len();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(open).await;
                    let chunk = vec![b'a'; 1 << 20];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = stream.write_all(close).await;
                });
            }
        });
        addr
    }

    fn options() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(20),
            requests_per_second: 1000,
            bulk_imports_per_minute: 1000,
            max_attempts: 1,
            retry_base: Duration::from_millis(1),
            retry_cap: Duration::from_millis(1),
            max_throttle_wait: Duration::from_secs(1),
            proxy: None,
            budget_dir: None,
        }
    }

    /// A hostile host answers 200 with a body far larger than any ActiveCampaign answer: it
    /// is refused, not read whole into memory (gigabytes would end the daemon).
    #[tokio::test]
    async fn a_huge_success_body_is_refused_not_read_whole() {
        let addr = hostile_server(MAX_BODY_BYTES + (1 << 20)).await;
        let base = BaseUrl::parse(&format!("http://{addr}")).expect("loopback base");
        let client = Client::new(
            base,
            SecretString::from("k3y-0123456789abcdef"),
            options(),
            CancellationToken::new(),
        )
        .expect("client");

        let result = client.users_me().await;

        assert!(result.is_err(), "a body over the cap must not be accepted");
        let error = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("more than"), "{error}");
    }

    /// A host that announces a billion custom fields and sends one per page: the first short
    /// page ends the listing, so the loop neither spins nor grows.
    #[tokio::test]
    async fn a_host_announcing_endless_fields_is_read_to_its_first_short_page() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let pages = std::sync::Arc::new(AtomicUsize::new(0));
        let served = pages.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let n = served.fetch_add(1, Ordering::SeqCst);
                    let body = format!(
                        r#"{{"fields":[{{"id":"{n}","title":"F{n}"}}],"meta":{{"total":"1000000000"}}}}"#
                    );
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        });
        let base = BaseUrl::parse(&format!("http://{addr}")).expect("loopback base");
        let client = Client::new(
            base,
            SecretString::from("k3y-0123456789abcdef"),
            options(),
            CancellationToken::new(),
        )
        .expect("client");

        let fields = client.fields().await.expect("fields");

        assert_eq!(fields.len(), 1);
        assert_eq!(pages.load(Ordering::SeqCst), 1, "one page asked for");
    }

    #[test]
    fn a_decoding_problem_does_not_quote_the_body() {
        let e = serde_json::from_str::<wire::UserEnvelope>(
            r#"{"user":{"id":{"secret":"k3y-0123456789abcdef"}}}"#,
        )
        .expect_err("not a user");

        let shown = json_problem(&e);

        assert!(!shown.contains("k3y"), "{shown}");
        assert!(
            shown.starts_with("the body does not hold the expected fields (line 1"),
            "{shown}"
        );
    }
}
