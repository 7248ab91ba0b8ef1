//! The systemd deployment files in `deploy/`: the unit is valid for systemd, its hardening stays
//! within the project's exposure target, and the example settings file is one the daemon accepts.
//! Tests that need `systemd-analyze` are ignored by default (`#[ignore = "needs
//! systemd-analyze"]`) and fail when run without it; `.ci/run` runs them where it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use acexport::settings::Settings;

/// Highest acceptable overall exposure of `systemd-analyze security` (0 best, 10 worst);
/// the project's hardening target (reliability notes §1.4, checklist item 6).
const MAX_EXPOSURE: f64 = 2.0;
/// Executable paths as the shipped unit names them.
const UNIT_BINARY: &str = "/usr/bin/acexport";
/// The only other executable the unit may name: every Debian has it (dash is essential), and
/// its built-in `kill` sends the reload's SIGHUP where /bin/kill (procps) is missing.
const UNIT_SHELL: &str = "/bin/sh";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

/// Runs `systemd-analyze` with `args`; a missing or failing tool fails the test.
fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze {args:?}: {e}"))
}

/// The shipped unit's `Key=value` lines, comments left out.
fn unit_settings() -> Vec<(String, String)> {
    std::fs::read_to_string(deploy_file("acexport.service"))
        .expect("read unit")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A copy of the shipped unit, under its own name in `dir`, whose commands point at the
/// freshly built binary, so that `verify` can check they exist.
fn unit_with_local_paths(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(deploy_file("acexport.service")).expect("read unit");
    assert!(
        shipped.contains(UNIT_BINARY),
        "the unit no longer names {UNIT_BINARY}; update this test"
    );
    let local = shipped.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_acexport"));
    let path = dir.join("acexport.service");
    std::fs::write(&path, local).expect("write unit copy");
    path
}

#[test]
#[ignore = "needs systemd-analyze"]
fn the_unit_passes_systemd_analyze_verify_without_warnings_about_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_with_local_paths(dir.path());
    let unit_arg = unit.to_string_lossy();

    let output = systemd_analyze(&["verify", "--man=no", &unit_arg]);

    // verify exits 0 on unknown keys and bad values too, and only warns; other units on the
    // host may warn as well, so only lines about this unit count.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("acexport.service"))
        .collect();
    assert!(
        output.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {unit_arg} failed ({}):\n{stderr}",
        output.status
    );
}

#[test]
#[ignore = "needs systemd-analyze"]
fn the_unit_hardening_exposure_is_at_most_two() {
    let unit = deploy_file("acexport.service");
    let unit_arg = unit.to_string_lossy();

    let output = systemd_analyze(&["security", "--offline=yes", "--no-pager", &unit_arg]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // --offline arrived in systemd 250.
    assert!(
        !stderr.contains("unrecognized option"),
        "systemd-analyze is too old for --offline (needs systemd 250): {stderr}"
    );
    // "→ Overall exposure level for acexport.service: 1.3 OK 🙂"
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, score)| score.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!("no overall exposure in systemd-analyze security output:\n{stdout}\n{stderr}")
        });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn the_unit_runs_only_acexport_and_the_shell_which_a_minimal_debian_has() {
    let commands: Vec<(String, String)> = unit_settings()
        .into_iter()
        .filter(|(key, _)| key.starts_with("Exec"))
        .collect();

    assert!(!commands.is_empty());
    for (key, command) in &commands {
        let program = command.split_whitespace().next().unwrap_or_default();
        assert!(
            program == UNIT_BINARY || program == UNIT_SHELL,
            "{key}={command} runs {program}, which a minimal Debian may lack (procps has no \
             place there: /bin/kill gave 203/EXEC)"
        );
    }
}

#[test]
fn invalid_settings_are_refused_by_the_daemon_itself_so_systemd_does_not_restart_it() {
    let settings = unit_settings();
    let value = |key: &str| {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };

    // RestartPreventExitStatus= looks at the main process only: a check in ExecStartPre=
    // exiting 78 was restarted every RestartSec= forever.
    assert_eq!(value("ExecStartPre"), Vec::<String>::new());
    assert_eq!(value("ExecStart"), vec![format!("{UNIT_BINARY} daemon")]);
    let prevented = value("RestartPreventExitStatus").join(" ");
    assert!(
        prevented.split_whitespace().any(|code| code == "78"),
        "RestartPreventExitStatus={prevented}"
    );
    assert_eq!(
        acexport::cli::EXIT_INVALID_SETTINGS,
        78,
        "the unit's RestartPreventExitStatus= names 78"
    );
}

#[test]
fn the_unit_leaves_etc_acexport_read_only_and_peer_credentials_real() {
    let keys: BTreeSet<String> = unit_settings().into_iter().map(|(k, _)| k).collect();

    // ConfigurationDirectory= would make /etc/acexport writable to the daemon.
    assert!(!keys.contains("ConfigurationDirectory"));
    // PrivateUsers= would show every control-socket caller as nobody.
    assert!(!keys.contains("PrivateUsers"));
    assert!(keys.contains("RuntimeDirectory"));
}

#[test]
fn the_example_settings_file_loads_with_the_daemon_loader() {
    let file = deploy_file("acexport.toml");

    // An empty environment: only the file counts, not ACEXPORT_* variables of the test host.
    let loaded = Settings::load_from(Some(&file), &BTreeMap::new());

    let settings = match loaded {
        Ok(loaded) => loaded.settings,
        Err(e) => panic!("deploy/acexport.toml is refused: {e}"),
    };
    assert_eq!(
        settings.store.path,
        Path::new("/var/lib/acexport/acexport.db")
    );
    assert_eq!(
        settings.daemon.trigger_dir,
        Path::new("/var/lib/acexport/triggers")
    );
    assert_eq!(
        settings.secrets.key_file,
        Path::new("/etc/acexport/secrets.key")
    );
}

#[test]
fn the_example_settings_file_sets_exactly_the_keys_the_daemon_knows() {
    let text = std::fs::read_to_string(deploy_file("acexport.toml")).expect("read example");
    let mut section = String::new();
    let mut in_example = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            in_example.insert(format!("{section}.{}", key.trim()));
        }
    }

    // `to_lines` lists every setting ("section.key = value"), set or not.
    let known: BTreeSet<String> = Settings::default()
        .to_lines()
        .iter()
        .filter_map(|l| l.split_once(" = ").map(|(key, _)| key.to_owned()))
        .collect();

    assert_eq!(
        in_example, known,
        "deploy/acexport.toml should set each known setting once, with a comment"
    );
}

#[test]
fn the_documented_settings_file_loads_and_documents_every_key_with_its_default() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/acexport.toml");
    let loaded = Settings::load_from(Some(&file), &BTreeMap::new())
        .unwrap_or_else(|e| panic!("config/acexport.toml is refused: {e}"));
    let text = std::fs::read_to_string(&file).expect("read");
    let mut section = String::new();
    let mut documented = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ") {
            documented.insert(format!("{section}.{}", key.trim()));
        }
    }
    let known: BTreeSet<String> = Settings::default()
        .to_lines()
        .iter()
        .filter_map(|l| l.split_once(" = ").map(|(key, _)| key.to_owned()))
        .collect();
    assert_eq!(
        documented, known,
        "config/acexport.toml documents each setting"
    );
    // The values shown are the built-in defaults (paths aside, which resolve per host).
    let defaults = Settings::default();
    assert_eq!(loaded.settings.activecampaign, defaults.activecampaign);
    assert_eq!(loaded.settings.export, defaults.export);
    assert_eq!(loaded.settings.schedule, defaults.schedule);
    assert_eq!(loaded.settings.log, defaults.log);
    assert_eq!(loaded.settings.daemon.workers, defaults.daemon.workers);
}
