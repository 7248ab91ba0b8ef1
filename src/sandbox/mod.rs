//! The built-in ActiveCampaign sandbox: an in-memory server speaking the parts of
//! ActiveCampaign's API v3 that acexport uses, with its limits, quirks and failure modes.
//!
//! It is the test double of every integration test and benchmark, and `acexport sandbox` lets
//! users try a configuration without touching a real account. Tests start one with
//! [`Sandbox::start`], point a connection at [`Sandbox::host`], and inspect what arrived through
//! the inspection methods; [`Sandbox::inject`] makes it misbehave on purpose.
//!
//! Layout: `state` holds the data, `api` the routes and handlers (split into gate, auth, catalog,
//! bulk, inspection and error envelopes), `limits` the sliding windows, `faults` the injected
//! failures; this file is the public face and the server start. Only the endpoints acexport
//! calls are served. The whole module exists only with the `sandbox` cargo feature (on by
//! default), so a `--no-default-features` build carries neither it nor axum.

mod api;
mod faults;
mod limits;
mod state;
pub mod world;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{Fault, FaultAction};
pub use state::{EmptyValues, ListStatus, RequestRecord, SandboxContact, SandboxStats};

use api::{PendingImport, Shared};
use faults::{ConnHandle, KillableListener};

/// "5 requests per second per account" (ActiveCampaign rate-limit docs).
const DEFAULT_REQUESTS_PER_SECOND: u32 = 5;
/// "100 req/min for multi-contact requests" (ActiveCampaign bulk import docs).
const DEFAULT_BULK_IMPORTS_PER_MINUTE: u32 = 100;
/// More custom fields than one default page (20) holds, so clients must paginate.
const DEFAULT_FIELD_COUNT: u64 = 25;
/// Requests and bulk imports remembered: far more than any test looks at, a few MB at most.
const DEFAULT_HISTORY: usize = 10_000;

/// A random token (128 bits from the thread's CSPRNG, as 32 hex digits), for a sandbox started
/// without one: unguessable, so the profiles its views show are no one else's to read.
pub fn generate_token() -> String {
    format!("sbx-{:032x}", rand::random::<u128>())
}

/// How the sandbox behaves.
#[derive(Clone)]
pub struct SandboxOptions {
    /// Expected `Api-Token` value, for the API and the `/_sandbox` views alike.
    pub token: String,
    /// General limit per sliding second; `None` turns it off.
    pub requests_per_second: Option<u32>,
    /// Limit on multi-contact bulk imports per sliding minute; `None` turns it off.
    pub bulk_imports_per_minute: Option<u32>,
    /// `Retry-After` sent with a 429.
    pub retry_after_secs: u64,
    /// Added to every API response.
    pub latency: Duration,
    /// How long a bulk import stays queued (`import/info` says `status: false`) before it is
    /// processed; it then reports `"active"` for as long again before `"completed"`.
    pub import_delay: Duration,
    /// Lists as `(id, name)`.
    pub lists: Vec<(u64, String)>,
    /// Custom text fields as `(id, title)`.
    pub fields: Vec<(u64, String)>,
    /// `false` keeps only counters (no per-contact data) so huge benchmarks stay flat in memory.
    pub store_contacts: bool,
    /// How many of the latest requests [`Sandbox::requests`] keeps, and how many bulk imports
    /// `import/info` still knows (an older, finished one answers 404 like an unknown id). Counters
    /// keep counting. Bounds the memory of a long-running sandbox.
    pub history: usize,
    /// What an empty string for a name, the phone or a custom field does in a bulk import.
    pub empty_values: EmptyValues,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            // A fixed default would let anyone who read this code read the views.
            token: generate_token(),
            requests_per_second: Some(DEFAULT_REQUESTS_PER_SECOND),
            bulk_imports_per_minute: Some(DEFAULT_BULK_IMPORTS_PER_MINUTE),
            retry_after_secs: 1,
            latency: Duration::ZERO,
            import_delay: Duration::from_millis(200),
            lists: vec![(1, "Newsletter".to_owned()), (2, "Customers".to_owned())],
            fields: (1..=DEFAULT_FIELD_COUNT)
                .map(|id| (id, format!("Field {id}")))
                .collect(),
            store_contacts: true,
            history: DEFAULT_HISTORY,
            empty_values: EmptyValues::Clear,
        }
    }
}

// The token is a credential, even a sandbox one: keep it out of Debug output.
impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("token", &"<redacted>")
            .field("requests_per_second", &self.requests_per_second)
            .field("bulk_imports_per_minute", &self.bulk_imports_per_minute)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("latency", &self.latency)
            .field("import_delay", &self.import_delay)
            .field("lists", &self.lists)
            .field("fields", &self.fields.len())
            .field("store_contacts", &self.store_contacts)
            .field("history", &self.history)
            .field("empty_values", &self.empty_values)
            .finish()
    }
}

/// A running sandbox; it stops when dropped or on [`Sandbox::shutdown`].
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Cancelled to stop the server (graceful: requests in flight finish).
    stop: CancellationToken,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Starts a sandbox on a free loopback port.
    pub async fn start(opts: SandboxOptions) -> io::Result<Sandbox> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), opts).await
    }

    /// Starts a sandbox on `addr`.
    pub async fn start_on(addr: SocketAddr, opts: SandboxOptions) -> io::Result<Sandbox> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shared, queue) = Shared::new(opts);
        let stop = CancellationToken::new();
        let server = tokio::spawn(run(
            listener,
            Arc::clone(&shared),
            queue,
            stop.clone().cancelled_owned(),
        ));
        Ok(Sandbox {
            addr,
            shared,
            stop,
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a connection stores, e.g. `http://127.0.0.1:41234`.
    pub fn host(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until requests in flight have finished.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "Sandbox server stopped with an error"),
                Err(error) => tracing::warn!(%error, "Sandbox server task failed"),
            }
        }
    }

    /// The contact with this email (case-insensitive).
    pub fn contact(&self, email: &str) -> Option<SandboxContact> {
        lock(&self.shared.state).contact(email)
    }

    /// All stored contacts, by id.
    pub fn contacts(&self) -> Vec<SandboxContact> {
        lock(&self.shared.state).contacts()
    }

    /// The contact's status on the list, if it has one.
    pub fn list_status(&self, email: &str, list_id: u64) -> Option<ListStatus> {
        lock(&self.shared.state).list_status(email, list_id)
    }

    /// How many contacts have this status on the list. With `store_contacts: false` this counts
    /// the subscribe (or unsubscribe) operations applied, not distinct contacts.
    pub fn members(&self, list_id: u64, status: ListStatus) -> usize {
        lock(&self.shared.state).members(list_id, status)
    }

    /// Puts the email on the exclusion list: bulk imports of it land in `failure`.
    pub fn exclude(&self, email: &str) {
        lock(&self.shared.state).exclude(email);
    }

    /// As if the person unsubscribed from the list (creates the contact if missing).
    pub fn unsubscribe(&self, email: &str, list_id: u64) {
        lock(&self.shared.state).unsubscribe(email, list_id);
    }

    /// As if mail to the person bounced (creates the contact if missing; needs stored
    /// contacts): bulk imports no longer subscribe them to the list.
    pub fn bounce(&self, email: &str, list_id: u64) {
        lock(&self.shared.state).bounce(email, list_id);
    }

    /// Queues a fault behind those already queued.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.state).faults.push(fault);
    }

    /// The latest API requests received (up to [`SandboxOptions::history`]), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        let mut requests: Vec<_> = lock(&self.shared.state).requests.iter().cloned().collect();
        // Records are written when the answer is ready, so a delayed request lands late.
        requests.sort_by_key(|record| record.at);
        requests
    }

    pub fn stats(&self) -> SandboxStats {
        lock(&self.shared.state).stats()
    }

    /// The most requests (whose path starts with `path_prefix`, with or without `/api/3`) that
    /// arrived within any window of length `window`: what a client's limiter let through.
    pub fn max_requests_in_window(&self, window: Duration, path_prefix: Option<&str>) -> usize {
        let mut times: Vec<_> = {
            let state = lock(&self.shared.state);
            state
                .requests
                .iter()
                .filter(|record| {
                    path_prefix.is_none_or(|prefix| path_matches(&record.path, prefix))
                })
                .map(|record| record.at)
                .collect()
        };
        times.sort_unstable();
        limits::max_in_window(&times, window)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves a sandbox on `listener` (from [`bind`]) until `shutdown` completes (the
/// `acexport sandbox` command, which binds first to say where it listens).
pub async fn serve(
    listener: TcpListener,
    opts: SandboxOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!("Sandbox listening on http://{local}");
    let (shared, queue) = Shared::new(opts);
    run(listener, shared, queue, shutdown).await
}

/// Binds the sandbox's listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("Could not bind the sandbox to {addr}: {error}"),
        )
    })
}

/// Runs the HTTP server and the import worker until `shutdown` completes.
async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    queue: mpsc::UnboundedReceiver<PendingImport>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let closing = shared.closing.clone();
    let worker = tokio::spawn(api::process_imports(Arc::clone(&shared), queue));
    let app = api::router(shared).into_make_service_with_connect_info::<ConnHandle>();
    let on_shutdown = closing.clone();
    let result = axum::serve(KillableListener::new(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Cuts injected delays and latency short so shutdown never waits on them.
            on_shutdown.cancel();
        })
        .await;
    closing.cancel();
    if let Err(error) = worker.await {
        tracing::warn!(%error, "Sandbox import worker failed");
    }
    result
}

/// Whether `path` starts with `prefix`, also when the prefix leaves out `/api/3`.
fn path_matches(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        || path
            .strip_prefix("/api/3")
            .is_some_and(|p| p.starts_with(prefix))
}

/// Locks a sandbox mutex; a panic in another holder cannot leave the data half-written in a way
/// that matters to a test double, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
