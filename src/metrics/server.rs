//! The daemon's `/metrics` and `/healthz` server: a small hyper 1 HTTP/1 server (hyper is in
//! the tree through reqwest already; axum is only in the optional `sandbox` feature). It answers
//! GET only, with tiny responses, one request per connection, at most
//! [`Limits::max_connections`] connections at once (more are closed at once rather than
//! queued), and a connection that does not send its request within [`Limits::read_timeout`],
//! or is not done within [`Limits::deadline`], is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Metrics;

/// hyper's smallest read buffer; a GET request for two short paths fits many times over.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long to wait before accepting again after an accept error (out of file descriptors,
/// say), so that a persistent error does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bounds on the server's work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; a Prometheus server and a probe or two need a handful.
    pub max_connections: usize,
    /// Longest wait for a request's headers.
    pub read_timeout: Duration,
    /// Longest life of a connection, answer included.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
        }
    }
}

/// Whether the daemon's scheduling loop is alive: the loop beats at every tick, and
/// `/healthz` answers 200 while the last beat is younger than the staleness bound.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<LivenessState>,
}

#[derive(Debug)]
struct LivenessState {
    stale_after: Duration,
    /// When the loop last beat; `None` before its first tick.
    last_beat: Mutex<Option<Instant>>,
    /// Set when the daemon stops scheduling (shutdown): it is draining, not healthy.
    stopping: std::sync::atomic::AtomicBool,
}

/// What `/healthz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    /// The loop has not ticked yet.
    Starting,
    /// The last tick is this old (at least the staleness bound).
    Stale(Duration),
    /// The daemon is shutting down.
    Stopping,
}

impl Liveness {
    /// A loop is stale once its last beat is `stale_after` old.
    pub fn new(stale_after: Duration) -> Liveness {
        Liveness {
            inner: Arc::new(LivenessState {
                stale_after,
                last_beat: Mutex::new(None),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        *self
            .inner
            .last_beat
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The loop stopped scheduling for good.
    pub fn stop(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        if self
            .inner
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Health::Stopping;
        }
        let last = *self
            .inner
            .last_beat
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match last.map(|at| at.elapsed()) {
            None => Health::Starting,
            Some(age) if age >= self.inner.stale_after => Health::Stale(age),
            Some(_) => Health::Alive,
        }
    }
}

/// Binds the server's socket (before the daemon reports ready, so a taken port stops the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` is cancelled, then waits up to
/// [`Limits::deadline`] for the connections in hand.
pub async fn serve(
    listener: TcpListener,
    metrics: &'static Metrics,
    liveness: Liveness,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "Metrics server cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "Metrics server busy; connection closed");
            continue; // dropping the stream closes it
        };
        let liveness = liveness.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&request, metrics, &liveness);
                async move { Ok::<_, Infallible>(answer) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.read_timeout)
                .keep_alive(false)
                .max_buf_size(MAX_REQUEST_BYTES);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.deadline, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Metrics connection ended"),
                Err(_) => tracing::debug!(%peer, "Metrics connection took too long; dropped"),
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(limits.deadline, tracker.wait()).await;
}

/// The answer to one request. The request's body is never read: GET has none worth reading.
fn answer(
    request: &Request<Incoming>,
    metrics: &Metrics,
    liveness: &Liveness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        "/healthz" => match liveness.health() {
            Health::Alive => text(StatusCode::OK, "ok\n"),
            Health::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            Health::Stopping => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
            Health::Stale(age) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the scheduling loop last ran {} s ago\n", age.as_secs()),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Metrics that live as long as the test process, as the global ones do.
    fn metrics() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    /// A server on a free loopback port; it stops when the returned token is cancelled.
    async fn start(liveness: Liveness, limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            metrics(),
            liveness,
            limits,
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    fn alive() -> Liveness {
        let liveness = Liveness::new(Duration::from_secs(3600));
        liveness.beat();
        liveness
    }

    async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_prometheus_text_format() {
        let (addr, _stop) = start(alive(), Limits::default()).await;

        let answer = get(addr, "/metrics").await;

        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = answer.text().await.expect("body");
        assert!(
            body.contains("# TYPE acexport_queue_length gauge"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn healthz_is_200_while_the_loop_beats_and_503_once_it_is_stale_or_stopping() {
        let stale = Liveness::new(Duration::ZERO);
        stale.beat();
        let stopping = alive();
        stopping.stop();
        let cases = [
            (alive(), 200, "ok"),
            (Liveness::new(Duration::from_secs(30)), 503, "starting"),
            (stale, 503, "the scheduling loop last ran"),
            (stopping, 503, "stopping"),
        ];
        for (liveness, status, says) in cases {
            let (addr, _stop) = start(liveness, Limits::default()).await;

            let answer = get(addr, "/healthz").await;

            assert_eq!(answer.status(), status);
            let body = answer.text().await.expect("body");
            assert!(body.contains(says), "{body}");
        }
    }

    #[tokio::test]
    async fn only_get_is_answered_and_other_paths_are_not_found() {
        let (addr, _stop) = start(alive(), Limits::default()).await;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");

        let post = client
            .post(format!("http://{addr}/metrics"))
            .body("x")
            .send()
            .await
            .expect("answer");
        let other = get(addr, "/../etc/passwd").await;

        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()[ALLOW], "GET");
        assert_eq!(other.status(), 404);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (addr, _stop) = start(alive(), limits).await;
        // Two idle connections hold both permits (they send nothing).
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }

        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut buf))
            .await
            .expect("closed, not left waiting");

        assert!(
            read.is_err() || buf.is_empty(),
            "no answer beyond the cap: {:?}",
            String::from_utf8_lossy(&buf)
        );
        drop(idle);
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_request_is_disconnected_after_the_read_timeout() {
        let limits = Limits {
            read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _stop) = start(alive(), limits).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");

        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf))
            .await
            .expect("the server hangs up");

        assert!(
            read.is_err() || !buf.starts_with(b"HTTP/1.1 200"),
            "{buf:?}"
        );
    }
}
