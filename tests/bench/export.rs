//! The export benchmark: `cargo bench --bench export`.
//!
//! Generates synthetic segments (CSV files and SQLite databases of 4 mapped columns: email,
//! first, last, phone) in a temporary folder and exports them, in this process, to the built-in
//! sandbox with its limits off, so that what is measured is acexport's own work: reading,
//! matching, planning in SQLite, batching, HTTP and recording. Three phases per size and
//! source: the initial run (every profile new), an unchanged re-run (nothing to send) and a
//! run after 1% of the profiles changed and 1% left the segment (on-leave unsubscribe).
//!
//! `-- --budget` instead runs against the sandbox enforcing ActiveCampaign's real limits scaled
//! up 60x and reports how much of the bulk-import budget the client achieves, and whether it
//! provoked any 429 or "Rate limit exceeded" answer. `--import-delay MS` sets how long the
//! sandbox keeps each import queued (and as long again active): real ActiveCampaign may take
//! minutes, which is seconds at this scale.
//!
//! `-- --cli` runs the same phases out of process, as a user runs them: the sandbox in a child
//! process of its own, and each phase `acexport export run` (a fresh process, measured from
//! outside). `-- --many` runs 20 exports of 10,000 profiles at once in an `acexport daemon`
//! against the x60-scaled limits. `-- --ten-million` adds 10M profiles to the sizes (long).
//! In those two modes `ACEXPORT_BENCH_BINARY=PATH` measures another build of `acexport` (an
//! older one, for a before and after).
//!
//! Options: `--sizes 100000,1000000`, `--sources csv,sqlite`, `--cli`, `--ten-million`,
//! `--budget`, `--many`, `--workers N`, `--import-delay MS`. Run without cargo bench's `--bench`
//! flag (as `cargo test --all-targets` does) it is a seconds-long smoke run on 2,000 profiles,
//! so the code stays exercised without slowing the test suite.

mod many;
mod outside;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acexport::pipeline::{RunOptions, RunOutcome, Silent};
use acexport::sandbox::SandboxOptions;
use acexport::sandbox::world::{World, export_input};
use acexport::service::Context;
use acexport::service::connections::AddConnection;
use acexport::service::exports::ExportInput;
use acexport::service::segments::SegmentInput;
use acexport::store::exports::OnLeave;
use acexport::store::{RunCounts, RunStatus, TriggerKind};
use secrecy::SecretString;
use sqlx::{Connection, SqliteConnection};

const TOKEN: &str = "benchmark-token-0001";
/// Sizes and sources of a plain `cargo bench --bench export`.
const DEFAULT_SIZES: &[usize] = &[100_000, 1_000_000];
/// Profiles of the `--budget` run: 800 imports, about 8 s at the scaled bulk limit.
const DEFAULT_BUDGET_SIZE: usize = 200_000;
/// Sandbox import delay of the `--budget` run: imports confirm after 2 × 100 ms, 12 s at real
/// scale.
const DEFAULT_BUDGET_IMPORT_DELAY: Duration = Duration::from_millis(100);
/// How much faster than ActiveCampaign the `--budget` run's limits are.
const BUDGET_SCALE: u32 = 60;
/// The size `--ten-million` adds.
const TEN_MILLION: usize = 10_000_000;
/// Profiles of the smoke run (no `--bench` flag).
const SMOKE_SIZE: usize = 2_000;
/// ActiveCampaign's limits (5 requests/s, 100 bulk imports/min) scaled up 60x.
const SCALED_REQUESTS_PER_SECOND: u32 = 5 * BUDGET_SCALE;
const SCALED_BULK_IMPORTS_PER_MINUTE: u32 = 100 * BUDGET_SCALE;
/// Client budget with the sandbox's limits off: high enough that it never binds, so the run
/// measures acexport rather than the pacing.
const UNBOUND_REQUESTS_PER_SECOND: u32 = 100_000;
const UNBOUND_BULK_IMPORTS_PER_MINUTE: u32 = 6_000_000;
/// Rows inserted per statement when generating an SQLite source.
const INSERT_ROWS: usize = 500;
/// One profile in this many changes, and one in this many leaves, in the third phase.
const CHANGE_EVERY: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Csv,
    Sqlite,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Csv => "csv",
            SourceKind::Sqlite => "sqlite",
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    sources: Vec<SourceKind>,
    budget: bool,
    /// Out of process: the sandbox in a child process, each phase an `acexport export run`.
    cli: bool,
    /// Many exports at once in a daemon, against the scaled limits.
    many: bool,
    /// `daemon.workers` of the `--many` mode (`None`: the default setting).
    workers: Option<u32>,
    /// Sandbox import delay in the `--budget` and `--many` modes.
    import_delay: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut sizes = None;
    let mut sources = vec![SourceKind::Csv, SourceKind::Sqlite];
    let mut budget = false;
    let mut cli = false;
    let mut many = false;
    let mut ten_million = false;
    let mut workers = None;
    let mut bench = false;
    let mut import_delay = DEFAULT_BUDGET_IMPORT_DELAY;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Passed by `cargo bench`; its absence means a smoke run under `cargo test`.
            "--bench" => bench = true,
            "--budget" => budget = true,
            "--cli" => cli = true,
            "--many" => many = true,
            "--ten-million" => ten_million = true,
            "--workers" => {
                let value = args.next().ok_or("--workers needs a number, e.g. 4")?;
                let n = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--workers {value}: give a number from 1 to 64"))?;
                workers = Some(n);
            }
            "--import-delay" => {
                let value = args
                    .next()
                    .ok_or("--import-delay needs milliseconds, e.g. 1000")?;
                let ms = value
                    .parse::<u64>()
                    .map_err(|_| format!("--import-delay {value}: give milliseconds, e.g. 1000"))?;
                import_delay = Duration::from_millis(ms);
            }
            "--sizes" => {
                let list = args
                    .next()
                    .ok_or("--sizes needs a list, e.g. 100000,1000000")?;
                let parsed = list
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| format!("--sizes {list}: give whole numbers, e.g. 100000"))?;
                if parsed.contains(&0) {
                    return Err("--sizes: a size must be at least 1".to_owned());
                }
                sizes = Some(parsed);
            }
            "--sources" => {
                let list = args
                    .next()
                    .ok_or("--sources needs a list, e.g. csv,sqlite")?;
                sources = list
                    .split(',')
                    .map(|s| match s.trim() {
                        "csv" => Ok(SourceKind::Csv),
                        "sqlite" => Ok(SourceKind::Sqlite),
                        other => Err(format!("--sources: unknown source {other:?} (csv, sqlite)")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            // cargo passes filters and harness flags through; none of them apply here.
            _ => {}
        }
    }
    let mut sizes = match (sizes, bench, budget) {
        (Some(sizes), true, _) => sizes,
        (None, true, false) => DEFAULT_SIZES.to_vec(),
        (None, true, true) => vec![DEFAULT_BUDGET_SIZE],
        (_, false, _) => vec![SMOKE_SIZE],
    };
    if ten_million && bench && !sizes.contains(&TEN_MILLION) {
        sizes.push(TEN_MILLION);
    }
    Ok(Options {
        sizes,
        sources,
        budget,
        cli,
        many,
        workers,
        import_delay,
    })
}

/// Requests and bulk imports the throughput runs' sandbox remembers: more than the 520 imports
/// a run may keep in flight, far fewer than a 1M run sends.
const SANDBOX_HISTORY: usize = 1_000;

/// Marks a process started by [`run_like_production`].
const CHILD: &str = "ACEXPORT_BENCH_CHILD";

/// Runs the measurements in child processes set up like production: with `MALLOC_ARENA_MAX=1`
/// (the unit sets it; glibc reads it at start), and one process per size and source, so that
/// a size's peak memory is its own and not what earlier sizes left in the allocator. `None` in
/// a child: measure here.
fn run_like_production(options: &Options) -> Option<ExitCode> {
    if std::env::var_os(CHILD).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let mut runs: Vec<Vec<String>> = Vec::new();
    if options.budget || options.many || options.sizes.len() * options.sources.len() == 1 {
        runs.push(std::env::args().skip(1).collect());
    } else {
        for size in &options.sizes {
            for source in &options.sources {
                let mut args = vec![
                    "--bench".to_owned(),
                    "--sizes".to_owned(),
                    size.to_string(),
                    "--sources".to_owned(),
                    source.name().to_owned(),
                ];
                if options.cli {
                    args.push("--cli".to_owned());
                }
                runs.push(args);
            }
        }
    }
    let mut ok = true;
    for args in runs {
        let status = std::process::Command::new(&exe)
            .args(&args)
            .env("MALLOC_ARENA_MAX", "1")
            .env(CHILD, "1")
            .status();
        ok &= status.is_ok_and(|s| s.success());
    }
    Some(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, token_file] = args.as_slice()
        && flag == outside::SERVE_SANDBOX
    {
        return serve_sandbox(Path::new(token_file));
    }
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("export bench: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(code) = run_like_production(&options) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("export bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if options.budget {
        runtime.block_on(run_budget(&options))
    } else if options.many {
        runtime.block_on(many::run_many(&options))
    } else {
        runtime.block_on(run_throughput(&options))
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("export bench: some runs did not do exactly what was expected (see table)");
            ExitCode::FAILURE
        }
        Err(message) => {
            eprintln!("export bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The sandbox child of the `--cli` mode.
fn serve_sandbox(token_file: &Path) -> ExitCode {
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(outside::serve_sandbox(token_file, SANDBOX_HISTORY)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("export bench sandbox: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One measured run.
struct Measurement {
    profiles: usize,
    source: SourceKind,
    phase: &'static str,
    seconds: f64,
    /// CPU time of the whole process (user + system) during the run: less disturbed by other
    /// load on the machine than the wall time. With `--cli`, the `acexport` process's alone.
    cpu_seconds: f64,
    rows_read: u64,
    peak_rss_mb: f64,
    /// Requests the client sent, as counted by the run.
    requests: u64,
    /// Requests the sandbox received during the run (the same, unless something is off).
    sandbox_requests: u64,
    /// Contacts in accepted bulk imports.
    contacts_sent: u64,
    /// Whether the run did exactly what the phase expects.
    check: Result<(), String>,
}

/// What one phase should have sent.
struct Expected {
    upserted: u64,
    unsubscribed: u64,
}

async fn run_throughput(options: &Options) -> Result<bool, String> {
    println!(
        "export benchmark ({}): sandbox limits off, release build, {} cores; load before: {}",
        if options.cli {
            "out of process: acexport export run, sandbox in another process"
        } else {
            "in process"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut all = Vec::new();
    for &size in &options.sizes {
        for &source in &options.sources {
            let measured = bench_one(size, source, options.cli).await?;
            for m in &measured {
                print_row(m);
            }
            all.extend(measured);
        }
    }
    println!();
    println!("{}", table(&all));
    println!("load after: {}", load_average());
    Ok(all.iter().all(|m| m.check.is_ok()))
}

/// A fresh store, sandbox and segment of `size` profiles, exported three times: in this
/// process, or with `cli` by `acexport export run` against a sandbox in another process.
async fn bench_one(size: usize, source: SourceKind, cli: bool) -> Result<Vec<Measurement>, String> {
    let outside = if cli {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a folder: {e}"))?;
        let sandbox = outside::OutsideSandbox::start(dir.path(), TOKEN).await?;
        Some((sandbox, dir))
    } else {
        None
    };
    let bench = Bench::new(
        |sandbox| {
            sandbox.requests_per_second = None;
            sandbox.bulk_imports_per_minute = None;
            sandbox.import_delay = Duration::ZERO;
            // The stand-in for ActiveCampaign shares the process: it keeps only counters and a
            // short history, so the peak RSS measured is acexport's.
            sandbox.store_contacts = false;
            sandbox.history = SANDBOX_HISTORY;
        },
        UNBOUND_REQUESTS_PER_SECOND,
        UNBOUND_BULK_IMPORTS_PER_MINUTE,
        outside.as_ref().map(|(s, _)| s.host()),
    )
    .await?;
    bench.write_source(source, size, false).await?;
    bench.add_segment_and_export(source).await?;

    let steady = (size / CHANGE_EVERY) as u64;
    let phases: [(&'static str, Expected); 3] = [
        (
            "initial",
            Expected {
                upserted: size as u64,
                unsubscribed: 0,
            },
        ),
        (
            "unchanged",
            Expected {
                upserted: 0,
                unsubscribed: 0,
            },
        ),
        (
            "1% changed + 1% left",
            Expected {
                upserted: steady,
                unsubscribed: steady,
            },
        ),
    ];
    let mut measured = Vec::new();
    for (phase, expected) in phases {
        if expected.unsubscribed > 0 {
            bench.write_source(source, size, true).await?;
        }
        let m = match &outside {
            None => bench.measure_here(size, source, phase, &expected).await?,
            Some((sandbox, _)) => {
                bench
                    .measure_cli(sandbox, size, source, phase, &expected)
                    .await?
            }
        };
        measured.push(m);
    }
    bench.close().await;
    if let Some((sandbox, _)) = outside {
        sandbox.stop().await;
    }
    Ok(measured)
}

/// Exactly the expected contacts were sent and confirmed, and nothing failed: in the run's
/// counts and in what the sandbox queued (`queued`, counted by the sandbox during the run).
fn check(
    status: RunStatus,
    error: Option<&str>,
    c: &RunCounts,
    queued: u64,
    expected: &Expected,
) -> Result<(), String> {
    if status != RunStatus::Succeeded {
        return Err(format!("run {status}: {}", error.unwrap_or("")));
    }
    let wanted = expected.upserted + expected.unsubscribed;
    if (
        c.upserted,
        c.unsubscribed,
        c.sent,
        queued,
        c.failed,
        c.rejected,
    ) != (
        expected.upserted,
        expected.unsubscribed,
        wanted,
        wanted,
        0,
        0,
    ) {
        return Err(format!(
            "expected {} upserted and {} unsubscribed; got upserted {}, unsubscribed {}, sent \
             {}, sandbox queued {queued}, failed {}, rejected {}",
            expected.upserted,
            expected.unsubscribed,
            c.upserted,
            c.unsubscribed,
            c.sent,
            c.failed,
            c.rejected
        ));
    }
    Ok(())
}

/// A world (folder, settings, sandbox) and a store holding connection `ac` to its sandbox.
struct Bench {
    world: World,
    ctx: Context,
}

impl Bench {
    /// With `host`, connection `ac` goes to that sandbox (in another process) rather than the
    /// world's own.
    async fn new(
        sandbox: impl FnOnce(&mut SandboxOptions),
        requests_per_second: u32,
        bulk: u32,
        host: Option<&str>,
    ) -> Result<Bench, String> {
        Bench::with_world(
            World::builder()
                .token(TOKEN)
                .sandbox(sandbox)
                .setting("activecampaign.requests_per_second", requests_per_second)
                .setting("activecampaign.bulk_imports_per_minute", bulk)
                .setting("export.max_profiles", 100_000_000),
            host,
        )
        .await
    }

    async fn with_world(
        builder: acexport::sandbox::world::WorldBuilder,
        host: Option<&str>,
    ) -> Result<Bench, String> {
        let world = builder
            .build()
            .await
            .map_err(|e| format!("cannot set up the benchmark: {}", error_chain(&e)))?;
        let ctx = world
            .open_context()
            .await
            .map_err(|e| format!("cannot open the store: {}", error_chain(&e)))?;
        let added = match host {
            None => world.add_connection(&ctx, "ac").await.map(|_| ()),
            Some(host) => ctx
                .add_connection(AddConnection {
                    name: "ac".to_owned(),
                    host: host.to_owned(),
                    api_key: SecretString::from(TOKEN),
                    allow_contributors: false,
                    accept_data_transfer: true,
                })
                .await
                .map(|_| ())
                .map_err(Into::into),
        };
        added.map_err(|e| format!("cannot add the connection: {}", error_chain(&e)))?;
        Ok(Bench { world, ctx })
    }

    /// One phase in this process, measured from inside.
    async fn measure_here(
        &self,
        size: usize,
        source: SourceKind,
        phase: &'static str,
        expected: &Expected,
    ) -> Result<Measurement, String> {
        let sandbox = &self.world.sandbox;
        let before = sandbox.stats();
        reset_peak_rss();
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let outcome = self.run().await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = cpu_seconds() - cpu_before;
        let peak_rss_mb = peak_rss_mb();
        let after = sandbox.stats();
        let queued = after.contacts_queued - before.contacts_queued;
        Ok(Measurement {
            profiles: size,
            source,
            phase,
            seconds,
            cpu_seconds,
            rows_read: outcome.counts.rows_read,
            peak_rss_mb,
            requests: outcome.counts.requests,
            sandbox_requests: after.requests - before.requests,
            contacts_sent: outcome.counts.sent,
            check: check(
                outcome.status,
                outcome.error.as_deref(),
                &outcome.counts,
                queued,
                expected,
            ),
        })
    }

    /// One phase as `acexport export run`, measured from outside; checked against the run's
    /// record and the sandbox's counters.
    async fn measure_cli(
        &self,
        sandbox: &outside::OutsideSandbox,
        size: usize,
        source: SourceKind,
        phase: &'static str,
        expected: &Expected,
    ) -> Result<Measurement, String> {
        let queued_before = sandbox.stat("contacts_queued").await?;
        let requests_before = sandbox.stat("requests").await?;
        let run = outside::run_acexport(&self.world, &["export", "run", "bench", "--json"]).await?;
        let queued = sandbox.stat("contacts_queued").await? - queued_before;
        let sandbox_requests = sandbox.stat("requests").await? - requests_before;
        let answer: serde_json::Value = serde_json::from_str(&run.stdout).map_err(|e| {
            format!(
                "acexport export run printed no JSON ({e}); it said: {}",
                run.stderr.trim()
            )
        })?;
        let run_id = answer["run_id"]
            .as_i64()
            .ok_or_else(|| format!("acexport export run recorded no run: {answer}"))?;
        let record = self
            .ctx
            .store
            .run(run_id)
            .await
            .map_err(|e| format!("cannot read run {run_id}: {e}"))?
            .ok_or_else(|| format!("run {run_id} is not in the store"))?;
        let mut checked = check(
            record.status,
            record.error.as_deref(),
            &record.counts,
            queued,
            expected,
        );
        if checked.is_ok() && !run.success {
            checked = Err(format!(
                "acexport exited with failure: {}",
                run.stderr.trim()
            ));
        }
        Ok(Measurement {
            profiles: size,
            source,
            phase,
            seconds: run.seconds,
            cpu_seconds: run.cpu_seconds,
            rows_read: record.counts.rows_read,
            peak_rss_mb: run.peak_rss_mb,
            requests: record.counts.requests,
            sandbox_requests,
            contacts_sent: record.counts.sent,
            check: checked,
        })
    }

    async fn close(self) {
        self.ctx.store.close().await;
        self.world.shutdown().await;
    }

    fn csv_path(&self) -> PathBuf {
        self.world.path("profiles.csv")
    }

    fn sqlite_path(&self) -> PathBuf {
        self.world.path("profiles.db")
    }

    /// Writes the segment: `size` profiles, or with `churned` 1% changed and 1% gone.
    async fn write_source(
        &self,
        source: SourceKind,
        size: usize,
        churned: bool,
    ) -> Result<(), String> {
        match source {
            SourceKind::Csv => write_csv(&self.csv_path(), 0, size, churned),
            SourceKind::Sqlite if churned => churn_sqlite(&self.sqlite_path()).await,
            SourceKind::Sqlite => write_sqlite(&self.sqlite_path(), size).await,
        }
    }

    async fn add_segment_and_export(&self, source: SourceKind) -> Result<(), String> {
        let input = match source {
            SourceKind::Csv => SegmentInput::Csv {
                path: self.csv_path(),
                delimiter: b',',
            },
            SourceKind::Sqlite => SegmentInput::Sql {
                query: "SELECT email, first, last, phone FROM profiles".to_owned(),
                database_url: Some(SecretString::from(format!(
                    "sqlite:{}",
                    self.sqlite_path().display()
                ))),
                database_env: None,
            },
        };
        self.ctx
            .add_segment("profiles", input)
            .await
            .map_err(|e| format!("cannot add the segment: {e}"))?;
        self.ctx
            .add_export(ExportInput {
                first_name: Some("first".into()),
                last_name: Some("last".into()),
                phone: Some("phone".into()),
                on_leave: OnLeave::Unsubscribe,
                ..export_input("bench", "ac", &["profiles"])
            })
            .await
            .map_err(|e| format!("cannot add the export: {e}"))?;
        Ok(())
    }

    async fn run(&self) -> Result<RunOutcome, String> {
        let options = RunOptions {
            trigger: TriggerKind::Manual,
            full: false,
            dry_run: false,
            requested_by: None,
        };
        self.ctx
            .run_export("bench", options, Arc::new(Silent))
            .await
            .map_err(|e| format!("the run could not be recorded: {e}"))
    }
}

/// `error` and its causes, for messages that must say why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Whether profile `i` left the segment in the churned version.
fn leaves(i: usize) -> bool {
    i.is_multiple_of(CHANGE_EVERY)
}

/// Whether profile `i` changed in the churned version.
fn changes(i: usize) -> bool {
    i % CHANGE_EVERY == 1
}

/// Writes profiles `first..first + size` (with `churned`, 1% changed and 1% gone).
fn write_csv(path: &Path, first: usize, size: usize, churned: bool) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(b"email,first,last,phone\n").map_err(fail)?;
    for i in first..first + size {
        if churned && leaves(i) {
            continue;
        }
        let first = if churned && changes(i) {
            "Changed"
        } else {
            "First"
        };
        writeln!(
            out,
            "user{i}@example.com,{first}{i},Last{i},+1555{:07}",
            i % 10_000_000
        )
        .map_err(fail)?;
    }
    out.flush().map_err(fail)
}

async fn sqlite_connection(path: &Path, create: bool) -> Result<SqliteConnection, String> {
    let url = format!(
        "sqlite:{}{}",
        path.display(),
        if create { "?mode=rwc" } else { "" }
    );
    SqliteConnection::connect(&url)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

async fn write_sqlite(path: &Path, size: usize) -> Result<(), String> {
    let fail = |e: sqlx::Error| format!("cannot write {}: {e}", path.display());
    let mut conn = sqlite_connection(path, true).await?;
    sqlx::raw_sql(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; \
         CREATE TABLE profiles (id INTEGER PRIMARY KEY, email TEXT NOT NULL, first TEXT, \
         last TEXT, phone TEXT);",
    )
    .execute(&mut conn)
    .await
    .map_err(fail)?;
    let mut tx = conn.begin().await.map_err(fail)?;
    let mut start = 0;
    while start < size {
        let end = (start + INSERT_ROWS).min(size);
        let mut sql = String::from("INSERT INTO profiles (id, email, first, last, phone) VALUES ");
        for i in start..end {
            if i > start {
                sql.push(',');
            }
            // Generated values hold no quotes, so they can be inlined.
            let _ = write!(
                sql,
                "({i},'user{i}@example.com','First{i}','Last{i}','+1555{:07}')",
                i % 10_000_000
            );
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        start = end;
    }
    tx.commit().await.map_err(fail)?;
    conn.close().await.map_err(fail)
}

/// The SQLite counterpart of a churned CSV: the same rows change and leave.
async fn churn_sqlite(path: &Path) -> Result<(), String> {
    let fail = |e: sqlx::Error| format!("cannot change {}: {e}", path.display());
    let mut conn = sqlite_connection(path, false).await?;
    let sql = format!(
        "UPDATE profiles SET first = 'Changed' || id WHERE id % {CHANGE_EVERY} = 1; \
         DELETE FROM profiles WHERE id % {CHANGE_EVERY} = 0;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .map_err(fail)?;
    conn.close().await.map_err(fail)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux 4.0+).
fn reset_peak_rss() {
    // Without it (another OS, or no permission) the peak covers the whole process so far.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last reset, in MB; 0 where /proc is not available.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time this process used so far (user + system), in seconds; 0 where /proc is not
/// available.
fn cpu_seconds() -> f64 {
    // utime and stime: fields 14 and 15 of /proc/self/stat.
    stat_ticks(&[11, 12])
}

/// The sum of fields of /proc/self/stat, counted from the one after the command name (field 3,
/// the state, is index 0), in seconds; 0 where /proc is not available.
fn stat_ticks(indexes: &[usize]) -> f64 {
    // USER_HZ is 100 on every Linux architecture that matters here.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; it ends at the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = indexes
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    ticks / TICKS_PER_SECOND
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn print_row(m: &Measurement) {
    println!(
        "  {} {} {}: {:.2} s ({:.2} s CPU), {} requests, {} contacts sent, peak RSS {:.0} MB, load {}{}",
        m.profiles,
        m.source.name(),
        m.phase,
        m.seconds,
        m.cpu_seconds,
        m.requests,
        m.contacts_sent,
        m.peak_rss_mb,
        load_average(),
        match &m.check {
            Ok(()) => String::new(),
            Err(why) => format!(" -- UNEXPECTED: {why}"),
        }
    );
    let _ = std::io::stdout().flush();
}

/// The results as a Markdown table.
fn table(all: &[Measurement]) -> String {
    let mut out = String::from(
        "| profiles | source | phase | wall s | CPU s | profiles/s | peak RSS MB | requests | \
         contacts sent | as expected |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for m in all {
        let requests = if m.requests == m.sandbox_requests {
            m.requests.to_string()
        } else {
            format!("{} (sandbox saw {})", m.requests, m.sandbox_requests)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} | {} |",
            m.profiles,
            m.source.name(),
            m.phase,
            m.seconds,
            m.cpu_seconds,
            m.rows_read as f64 / m.seconds,
            m.peak_rss_mb,
            requests,
            m.contacts_sent,
            if m.check.is_ok() { "yes" } else { "NO" }
        );
    }
    out
}

/// The `--budget` mode: real limits scaled up 60x on the sandbox and in the client.
async fn run_budget(options: &Options) -> Result<bool, String> {
    let mut ok = true;
    for &size in &options.sizes {
        let bench = Bench::new(
            |sandbox| {
                sandbox.requests_per_second = Some(SCALED_REQUESTS_PER_SECOND);
                sandbox.bulk_imports_per_minute = Some(SCALED_BULK_IMPORTS_PER_MINUTE);
                // Real imports take seconds to minutes; scaled down too.
                sandbox.import_delay = options.import_delay;
                sandbox.store_contacts = false;
                // Every request, for the densest second and the polls per import.
                sandbox.history = usize::MAX;
            },
            SCALED_REQUESTS_PER_SECOND,
            SCALED_BULK_IMPORTS_PER_MINUTE,
            None,
        )
        .await?;
        let sandbox = &bench.world.sandbox;
        bench.write_source(SourceKind::Csv, size, false).await?;
        bench.add_segment_and_export(SourceKind::Csv).await?;
        let load = load_average();
        let started = Instant::now();
        let outcome = bench.run().await?;
        let seconds = started.elapsed().as_secs_f64();
        let stats = sandbox.stats();
        let bulk_times: Vec<Instant> = sandbox
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/import/bulk_import") && r.status == 200)
            .map(|r| r.at)
            .collect();
        let allowed_per_minute = f64::from(SCALED_BULK_IMPORTS_PER_MINUTE);
        // Over the span from the first import to the last: the pace while sending.
        let achieved_per_minute = match (bulk_times.first(), bulk_times.last()) {
            (Some(first), Some(last)) if bulk_times.len() > 1 => {
                (bulk_times.len() - 1) as f64 / last.duration_since(*first).as_secs_f64() * 60.0
            }
            _ => 0.0,
        };
        let share = achieved_per_minute / allowed_per_minute * 100.0;
        let densest_second = sandbox.max_requests_in_window(Duration::from_secs(1), None);
        let polls = sandbox
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/import/info"))
            .count();
        let confirm_time = options.import_delay * 2;
        let expected = Expected {
            upserted: size as u64,
            unsubscribed: 0,
        };
        let checked = check(
            outcome.status,
            outcome.error.as_deref(),
            &outcome.counts,
            stats.contacts_queued,
            &expected,
        );
        println!(
            "budget run: {size} profiles from CSV, limits {SCALED_REQUESTS_PER_SECOND} \
             requests/s and {SCALED_BULK_IMPORTS_PER_MINUTE} bulk imports/min (ActiveCampaign's \
             x{BUDGET_SCALE}); imports take {} ms to confirm ({:.0} s at real scale); load \
             before {load}",
            confirm_time.as_millis(),
            (confirm_time * BUDGET_SCALE).as_secs_f64()
        );
        println!("| measure | value |\n|---|---:|");
        println!("| wall s | {seconds:.2} |");
        println!("| bulk imports accepted | {} |", stats.bulk_imports);
        println!("| bulk imports/min achieved (first to last import) | {achieved_per_minute:.0} |");
        println!("| share of the bulk-import budget | {share:.1}% |");
        println!(
            "| requests sent (densest second) | {} ({densest_second}, limit {SCALED_REQUESTS_PER_SECOND}) |",
            outcome.counts.requests
        );
        println!(
            "| import/info polls per import | {:.2} |",
            polls as f64 / stats.bulk_imports.max(1) as f64
        );
        println!("| 429 answers | {} |", stats.too_many_requests);
        println!(
            "| bulk \"Rate limit exceeded\" answers | {} |",
            stats.bulk_rate_limited
        );
        println!(
            "| as expected | {} |",
            match &checked {
                Ok(()) => "yes".to_owned(),
                Err(why) => format!("NO: {why}"),
            }
        );
        println!("load after: {}", load_average());
        ok &= checked.is_ok() && stats.too_many_requests == 0 && stats.bulk_rate_limited == 0;
        bench.close().await;
    }
    Ok(ok)
}
