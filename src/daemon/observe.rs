//! What the daemon tells a monitoring system: its `/metrics` and `/healthz` server
//! (`metrics.listen`), the liveness of its scheduling loop, and its runs' outcomes recorded into
//! the process's metrics. Recorded here, from outcomes, rather than in the engine: the engine
//! does not know which process serves metrics, and every daemon run ends in one place.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Limits, Liveness, RunFinished};
use crate::pipeline::RunOutcome;
use crate::settings::Settings;
use crate::store::queue::HEARTBEAT_STALE_SECS;
use crate::store::{RunStatus, Store, from_text};

/// `/healthz` says 503 once the scheduling loop has not ticked for this long: the same bound
/// after which `acexport status` says the daemon is not running.
pub const HEALTH_STALE: Duration = Duration::from_secs(HEARTBEAT_STALE_SECS.unsigned_abs());

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} (metrics.listen): {source}")]
pub struct ListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `metrics.listen` when it is set (validated at load).
pub async fn bind(settings: &Settings) -> Result<Option<TcpListener>, ListenError> {
    let Ok(Some(addr)) = settings.metrics_listen() else {
        return Ok(None);
    };
    metrics::bind(addr)
        .await
        .map(Some)
        .map_err(|source| ListenError { addr, source })
}

/// The running server; stopped with [`Server::stop`].
pub struct Server {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves on `listener`, if there is one.
    pub fn start(listener: Option<TcpListener>, liveness: Liveness) -> Option<Server> {
        let listener = listener?;
        match listener.local_addr() {
            Ok(addr) => tracing::info!(%addr, "Serving /metrics and /healthz"),
            Err(e) => tracing::warn!(error = %e, "Serving /metrics and /healthz"),
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(metrics::serve(
            listener,
            metrics::global(),
            liveness,
            Limits::default(),
            stop.clone(),
        ));
        Some(Server { stop, task })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Gives every export its run series and its last success from the history, so that a
/// restart does not make `acexport_last_success_timestamp_seconds` disappear.
pub async fn seed(store: &Store) {
    let exports = match store.exports().await {
        Ok(exports) => exports,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the exports for the metrics");
            return;
        }
    };
    let successes = store.last_successes().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Cannot read the last successes for the metrics");
        Vec::new()
    });
    for export in exports {
        let last = successes
            .iter()
            .find(|(name, _)| *name == export.name)
            .and_then(|(_, at)| from_text(at))
            .map(|at| at.timestamp_millis() as f64 / 1000.0);
        metrics::global().init_export(&export.name, last);
    }
}

/// The settings the metrics show.
pub fn apply_settings(settings: &Settings) {
    let ac = &settings.activecampaign;
    metrics::global().set_budget_limits(ac.requests_per_second, ac.bulk_imports_per_minute);
}

/// Records a run the daemon finished.
pub fn record_outcome(outcome: &RunOutcome) {
    let c = &outcome.counts;
    let profiles = [
        ("upserted", c.upserted),
        ("unsubscribed", c.unsubscribed),
        ("unchanged", c.unchanged),
        ("suppressed", c.suppressed),
        ("rejected", c.rejected),
        ("duplicate", c.duplicates),
        ("failed", c.failed),
    ];
    let succeeded_at = (outcome.status == RunStatus::Succeeded)
        .then(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    metrics::global().record_run(RunFinished {
        export: &outcome.export,
        status: outcome.status.as_str(),
        seconds: outcome.seconds,
        profiles: &profiles,
        succeeded_at,
    });
}
