//! `--many`: many exports on one account, run at the same moment by one `acexport daemon` (a
//! process of its own, as systemd runs it) against the sandbox enforcing ActiveCampaign's
//! limits scaled up 60x. Reports how much of the account's bulk-import budget the exports keep
//! busy together, and whether they provoked any 429 or "Rate limit exceeded" answer.

use std::process::Stdio;
use std::time::{Duration, Instant};

use acexport::sandbox::world::{World, export_input};
use acexport::service::exports::ExportInput;
use acexport::service::segments::SegmentInput;
use acexport::store::RunStatus;
use acexport::store::exports::OnLeave;

use crate::{
    BUDGET_SCALE, Bench, Expected, Options, SCALED_BULK_IMPORTS_PER_MINUTE,
    SCALED_REQUESTS_PER_SECOND, TOKEN, check, load_average, outside, write_csv,
};

/// Exports run at once, and profiles in each (distinct ones: no two exports share a contact).
const EXPORTS: usize = 20;
const PROFILES_EACH: usize = 10_000;
/// The smoke run's exports and profiles (no `--bench` flag).
const SMOKE_EXPORTS: usize = 2;
const SMOKE_PROFILES_EACH: usize = 500;
/// Longest wait for the daemon to start beating.
const DAEMON_START: Duration = Duration::from_secs(30);
/// Longest wait for every run to finish: far more than the budget needs.
const RUNS_DONE: Duration = Duration::from_secs(600);
/// How often the run history is read while waiting.
const POLL: Duration = Duration::from_millis(50);

pub async fn run_many(options: &Options) -> Result<bool, String> {
    let smoke = options
        .sizes
        .first()
        .is_some_and(|&s| s == crate::SMOKE_SIZE);
    let (exports, each) = if smoke {
        (SMOKE_EXPORTS, SMOKE_PROFILES_EACH)
    } else {
        (EXPORTS, PROFILES_EACH)
    };
    let mut builder = World::builder()
        .token(TOKEN)
        .sandbox(|sandbox| {
            sandbox.requests_per_second = Some(SCALED_REQUESTS_PER_SECOND);
            sandbox.bulk_imports_per_minute = Some(SCALED_BULK_IMPORTS_PER_MINUTE);
            sandbox.import_delay = options.import_delay;
            sandbox.store_contacts = false;
            // Every request, for the budget share and the densest second.
            sandbox.history = usize::MAX;
        })
        .setting(
            "activecampaign.requests_per_second",
            SCALED_REQUESTS_PER_SECOND,
        )
        .setting(
            "activecampaign.bulk_imports_per_minute",
            SCALED_BULK_IMPORTS_PER_MINUTE,
        );
    if let Some(workers) = options.workers {
        builder = builder.setting("daemon.workers", workers);
    }
    let bench = Bench::with_world(builder, None).await?;
    let workers = bench
        .world
        .settings()
        .map_err(|e| format!("cannot read the settings: {e}"))?
        .daemon
        .workers;
    for e in 0..exports {
        add_export(&bench, e, each).await?;
    }

    let daemon = Daemon::start(&bench.world).await?;
    let up = Instant::now();
    while !bench.ctx.daemon_is_up().await.unwrap_or(false) {
        if up.elapsed() > DAEMON_START {
            daemon.stop().await;
            return Err("the daemon did not start beating".to_owned());
        }
        tokio::time::sleep(POLL).await;
    }
    let load = load_average();
    // Every export queued at the same moment, through the daemon's control socket.
    let started = Instant::now();
    let trigger = outside::run_acexport(&bench.world, &["trigger", "--all"]).await?;
    if !trigger.success {
        daemon.stop().await;
        return Err(format!(
            "acexport trigger --all failed: {}",
            trigger.stderr.trim()
        ));
    }
    let runs = loop {
        let runs = bench
            .ctx
            .store
            .runs(None, (exports * 2) as u32)
            .await
            .map_err(|e| format!("cannot read the runs: {e}"))?;
        let finished = runs
            .iter()
            .filter(|r| r.status != RunStatus::Running)
            .count();
        if finished >= exports {
            break runs;
        }
        if started.elapsed() > RUNS_DONE {
            daemon.stop().await;
            return Err(format!("{finished} of {exports} runs finished in time"));
        }
        tokio::time::sleep(POLL).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    daemon.stop().await;

    let sandbox = &bench.world.sandbox;
    let stats = sandbox.stats();
    let bulk_times: Vec<Instant> = sandbox
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/import/bulk_import") && r.status == 200)
        .map(|r| r.at)
        .collect();
    // Over the span from the first import to the last: the pace while sending.
    let achieved_per_minute = match (bulk_times.first(), bulk_times.last()) {
        (Some(first), Some(last)) if bulk_times.len() > 1 => {
            (bulk_times.len() - 1) as f64 / last.duration_since(*first).as_secs_f64() * 60.0
        }
        _ => 0.0,
    };
    let share = achieved_per_minute / f64::from(SCALED_BULK_IMPORTS_PER_MINUTE) * 100.0;
    let densest_second = sandbox.max_requests_in_window(Duration::from_secs(1), None);
    let expected = Expected {
        upserted: each as u64,
        unsubscribed: 0,
    };
    let mut problems = Vec::new();
    for run in &runs {
        let queued = run.counts.sent; // each export's own contacts; the total is checked below
        if let Err(why) = check(
            run.status,
            run.error.as_deref(),
            &run.counts,
            queued,
            &expected,
        ) {
            problems.push(format!("{}: {why}", run.export));
        }
    }
    let total = (exports * each) as u64;
    if stats.contacts_queued != total {
        problems.push(format!(
            "the sandbox queued {} contacts, not {total}",
            stats.contacts_queued
        ));
    }
    println!(
        "many exports: {exports} exports of {each} profiles on one account, queued at once in \
         one daemon (daemon.workers {workers}); limits {SCALED_REQUESTS_PER_SECOND} requests/s \
         and {SCALED_BULK_IMPORTS_PER_MINUTE} bulk imports/min (ActiveCampaign's \
         x{BUDGET_SCALE}); imports take {} ms to confirm; load before {load}",
        (options.import_delay * 2).as_millis()
    );
    println!("| measure | value |\n|---|---:|");
    println!("| wall s (trigger to the last run's end) | {seconds:.2} |");
    println!("| bulk imports accepted | {} |", stats.bulk_imports);
    println!("| bulk imports/min achieved (first to last import) | {achieved_per_minute:.0} |");
    println!("| share of the bulk-import budget | {share:.1}% |");
    println!("| busiest second (limit {SCALED_REQUESTS_PER_SECOND}) | {densest_second} |");
    println!("| 429 answers | {} |", stats.too_many_requests);
    println!(
        "| bulk \"Rate limit exceeded\" answers | {} |",
        stats.bulk_rate_limited
    );
    println!(
        "| as expected | {} |",
        if problems.is_empty() {
            "yes".to_owned()
        } else {
            format!("NO: {}", problems.join("; "))
        }
    );
    println!("load after: {}", load_average());
    let ok = problems.is_empty() && stats.too_many_requests == 0 && stats.bulk_rate_limited == 0;
    bench.close().await;
    Ok(ok)
}

/// Segment and export number `e`, of `each` profiles no other export has.
async fn add_export(bench: &Bench, e: usize, each: usize) -> Result<(), String> {
    let name = format!("many-{e:02}");
    let path = bench.world.path(&format!("{name}.csv"));
    write_csv(&path, e * each, each, false)?;
    bench
        .ctx
        .add_segment(
            &name,
            SegmentInput::Csv {
                path,
                delimiter: b',',
            },
        )
        .await
        .map_err(|e| format!("cannot add segment {name}: {e}"))?;
    bench
        .ctx
        .add_export(ExportInput {
            first_name: Some("first".into()),
            last_name: Some("last".into()),
            phone: Some("phone".into()),
            on_leave: OnLeave::Unsubscribe,
            ..export_input(&name, "ac", &[&name])
        })
        .await
        .map_err(|e| format!("cannot add export {name}: {e}"))?;
    Ok(())
}

/// `acexport daemon` in a process of its own, its output kept in the world's folder.
struct Daemon {
    child: tokio::process::Child,
}

impl Daemon {
    async fn start(world: &World) -> Result<Daemon, String> {
        let log_path = world.path("daemon.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
        let child = tokio::process::Command::from(world.command(outside::acexport_binary()))
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start acexport daemon: {e}"))?;
        Ok(Daemon { child })
    }

    /// SIGTERM, as systemd stops it, and waits for it to finish.
    async fn stop(mut self) {
        let pid = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(70), self.child.wait()).await;
    }
}
