//! The metric families acexport exposes, on prometheus-client. Labels carry definitions only
//! (export names, API path templates, run statuses, outcome words), never a profile value, and
//! every label's values are bounded: export names are capped at [`MAX_EXPORT_LABELS`], endpoints
//! are path templates, statuses are HTTP codes or a transport failure's kind.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Most distinct export names given their own series; later ones are counted together under
/// [`OTHER_EXPORTS`]. Far above any real installation, low enough that a runaway script
/// creating exports cannot grow the scrape without bound.
pub const MAX_EXPORT_LABELS: usize = 500;
/// The export label of exports beyond [`MAX_EXPORT_LABELS`]: not a valid export name (names
/// have no parentheses), so it cannot be mistaken for one.
pub const OTHER_EXPORTS: &str = "(other)";
/// Run statuses a finished run can have; their series exist from the start for every export
/// the daemon knows, so that `increase()` sees the first failure.
const FINISHED_STATUSES: [&str; 5] = ["succeeded", "partial", "failed", "cancelled", "interrupted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    export: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabels {
    export: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    export: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A run that ended, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct RunFinished<'a> {
    pub export: &'a str,
    /// The run status word (`succeeded`, `partial`, `failed`, ...).
    pub status: &'a str,
    pub seconds: f64,
    /// Profiles by outcome word (`upserted`, `unchanged`, `rejected`, ...).
    pub profiles: &'a [(&'static str, u64)],
    /// When it finished, in Unix seconds, if it succeeded.
    pub succeeded_at: Option<f64>,
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    profiles: Family<ProfileLabels, Counter>,
    run_duration: HistogramFamily<ExportLabels>,
    last_success: Family<ExportLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    running: Gauge,
    queued: Gauge,
    requests: Family<RequestLabels, Counter>,
    throttled: Family<EndpointLabels, Counter>,
    permits: Family<KindLabels, Counter>,
    permit_wait: Family<KindLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    budget_limit: Family<LimitLabels, Gauge>,
    /// Export names that have their own series (see [`MAX_EXPORT_LABELS`]).
    exports: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Run durations from half a second to about 4.5 hours (1M new contacts take at least 40
/// minutes at ActiveCampaign's bulk-import limit).
fn run_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 16))
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::with_prefix("acexport"),
            runs: Family::default(),
            profiles: Family::default(),
            run_duration: Family::new_with_constructor(run_duration_histogram),
            last_success: Family::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            requests: Family::default(),
            throttled: Family::default(),
            permits: Family::default(),
            permit_wait: Family::default(),
            budget_limit: Family::default(),
            exports: Mutex::new(HashSet::new()),
        };
        metrics.registered()
    }

    /// Registers every family under its name and help text. (The families are shared handles:
    /// the registry encodes the same values the fields record into.)
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "runs",
            "Runs this daemon finished, by export and status",
            self.runs.clone(),
        );
        r.register(
            "profiles",
            "Profiles of finished runs by outcome: upserted, unsubscribed, unchanged, suppressed, \
             rejected, duplicate, failed",
            self.profiles.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Wall-clock duration of finished runs",
            self.run_duration.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When the export's latest succeeded run finished (Unix time)",
            self.last_success.clone(),
        );
        r.register(
            "runs_running",
            "Runs in progress in this daemon",
            self.running.clone(),
        );
        r.register(
            "queue_length",
            "Runs waiting in the queue (refreshed every few seconds)",
            self.queued.clone(),
        );
        r.register(
            "activecampaign_requests",
            "HTTP requests to ActiveCampaign (retries included) by API path template and HTTP \
             status, or timeout, connection or tls when no answer came",
            self.requests.clone(),
        );
        r.register(
            "activecampaign_throttled",
            "Answers that asked to slow down (HTTP 429, or a bulk import's rate-limit 400), by API \
             path template",
            self.throttled.clone(),
        );
        r.register(
            "activecampaign_budget_permits",
            "Rate permits this process took, by kind: request, bulk_import, poll (import/info)",
            self.permits.clone(),
        );
        r.register(
            "activecampaign_budget_wait_seconds",
            "Time spent waiting for rate permits, by kind",
            self.permit_wait.clone(),
        );
        r.register(
            "activecampaign_budget_limit",
            "The configured budget per account: requests_per_second, bulk_imports_per_minute",
            self.budget_limit.clone(),
        );
        self
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric type.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %e, "Cannot encode the metrics");
        }
        text
    }

    /// The label for `export`: its name while fewer than [`MAX_EXPORT_LABELS`] have one.
    fn export_label(&self, export: &str) -> String {
        let mut known = self.exports.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(export) {
            return export.to_owned();
        }
        if known.len() < MAX_EXPORT_LABELS {
            known.insert(export.to_owned());
            return export.to_owned();
        }
        OTHER_EXPORTS.to_owned()
    }

    /// Creates an export's run series at zero, and its last success when one is known.
    pub fn init_export(&self, export: &str, last_success: Option<f64>) {
        let label = self.export_label(export);
        for status in FINISHED_STATUSES {
            // Creating the series is the point; the guard it returns is not needed.
            let _ = self.runs.get_or_create(&RunLabels {
                export: label.clone(),
                status: status.to_owned(),
            });
        }
        if let Some(at) = last_success {
            self.last_success
                .get_or_create(&ExportLabels { export: label })
                .set(at);
        }
    }

    /// Records a finished run.
    pub fn record_run(&self, run: RunFinished<'_>) {
        let export = self.export_label(run.export);
        self.runs
            .get_or_create(&RunLabels {
                export: export.clone(),
                status: run.status.to_owned(),
            })
            .inc();
        for &(outcome, count) in run.profiles {
            self.profiles
                .get_or_create(&ProfileLabels {
                    export: export.clone(),
                    outcome,
                })
                .inc_by(count);
        }
        let labels = ExportLabels { export };
        self.run_duration
            .get_or_create(&labels)
            .observe(run.seconds.max(0.0));
        if let Some(at) = run.succeeded_at {
            self.last_success.get_or_create(&labels).set(at);
        }
    }

    pub fn set_running(&self, runs: usize) {
        self.running.set(i64::try_from(runs).unwrap_or(i64::MAX));
    }

    pub fn set_queue_length(&self, queued: usize) {
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    /// Records one HTTP attempt: `status` is the HTTP status code, or `timeout`, `connection`
    /// or `tls` when no answer came.
    pub fn record_request(&self, endpoint: &'static str, status: Cow<'static, str>) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
    }

    /// Records an answer asking to slow down (429).
    pub fn record_throttled(&self, endpoint: &'static str) {
        self.throttled
            .get_or_create(&EndpointLabels { endpoint })
            .inc();
    }

    /// Records a rate permit of `kind` and how long it was waited for.
    pub fn record_permit(&self, kind: &'static str, waited: Duration) {
        let labels = KindLabels { kind };
        self.permits.get_or_create(&labels).inc();
        self.permit_wait
            .get_or_create(&labels)
            .inc_by(waited.as_secs_f64());
    }

    /// The budget per account in force (the settings' limits).
    pub fn set_budget_limits(&self, requests_per_second: u32, bulk_imports_per_minute: u32) {
        for (limit, value) in [
            ("requests_per_second", requests_per_second),
            ("bulk_imports_per_minute", bulk_imports_per_minute),
        ] {
            self.budget_limit
                .get_or_create(&LimitLabels { limit })
                .set(i64::from(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_with<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn a_finished_run_counts_its_status_profiles_duration_and_success_time() {
        let metrics = Metrics::new();

        metrics.record_run(RunFinished {
            export: "weekly",
            status: "succeeded",
            seconds: 3.0,
            profiles: &[("upserted", 40), ("rejected", 2)],
            succeeded_at: Some(1_800_000_000.0),
        });

        let text = metrics.encode();
        for expected in [
            "acexport_runs_total{export=\"weekly\",status=\"succeeded\"} 1",
            "acexport_profiles_total{export=\"weekly\",outcome=\"upserted\"} 40",
            "acexport_profiles_total{export=\"weekly\",outcome=\"rejected\"} 2",
            "acexport_run_duration_seconds_count{export=\"weekly\"} 1",
            "acexport_last_success_timestamp_seconds{export=\"weekly\"} 1800000000",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }

    #[test]
    fn a_known_export_has_zero_series_for_every_finished_status_before_its_first_run() {
        let metrics = Metrics::new();

        metrics.init_export("daily", None);

        let text = metrics.encode();
        for status in FINISHED_STATUSES {
            let series = format!("acexport_runs_total{{export=\"daily\",status=\"{status}\"}} 0");
            assert!(text.contains(&series), "{series} missing from:\n{text}");
        }
        assert!(line_with(&text, "acexport_last_success_timestamp_seconds{").is_none());
    }

    #[test]
    fn exports_beyond_the_label_cap_are_counted_together() {
        let metrics = Metrics::new();
        for i in 0..MAX_EXPORT_LABELS {
            metrics.init_export(&format!("e{i}"), None);
        }

        for name in ["late-1", "late-2"] {
            metrics.record_run(RunFinished {
                export: name,
                status: "failed",
                seconds: 1.0,
                profiles: &[],
                succeeded_at: None,
            });
        }

        let text = metrics.encode();
        assert!(
            text.contains("acexport_runs_total{export=\"(other)\",status=\"failed\"} 2"),
            "{text}"
        );
        assert!(!text.contains("late-1"), "no series of its own");
    }

    #[test]
    fn requests_permits_and_limits_are_exposed_with_their_labels() {
        let metrics = Metrics::new();

        metrics.record_request("import/bulk_import", Cow::Borrowed("200"));
        metrics.record_request("lists/:id", Cow::Borrowed("timeout"));
        metrics.record_throttled("import/info");
        metrics.record_permit("bulk_import", Duration::from_millis(1500));
        metrics.set_budget_limits(5, 100);
        metrics.set_queue_length(3);

        let text = metrics.encode();
        for expected in [
            "acexport_activecampaign_requests_total{endpoint=\"import/bulk_import\",status=\"200\"} 1",
            "acexport_activecampaign_requests_total{endpoint=\"lists/:id\",status=\"timeout\"} 1",
            "acexport_activecampaign_throttled_total{endpoint=\"import/info\"} 1",
            "acexport_activecampaign_budget_permits_total{kind=\"bulk_import\"} 1",
            "acexport_activecampaign_budget_wait_seconds_total{kind=\"bulk_import\"} 1.5",
            "acexport_activecampaign_budget_limit{limit=\"bulk_imports_per_minute\"} 100",
            "acexport_queue_length 3",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }
}
