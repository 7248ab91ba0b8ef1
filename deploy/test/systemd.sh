#!/usr/bin/env bash
# acexport under a real systemd: boots a minimal Debian 12 in a container (systemd-nspawn),
# installs acexport exactly as README.md's "Install as a systemd service" block says, and
# checks the unit: start, status text, triggered runs, reload, watchdog, stop, the secrets key
# credential, invalid settings, journald fields and the hardening score. One PASS or FAIL line
# per check; exits 1 when any check fails, 2 when it cannot run at all.
#
# Needs root, debootstrap and systemd-nspawn (Debian: apt-get install debootstrap
# systemd-container) and a built binary. It installs the debug build (target/debug/acexport,
# which `cargo test` has already built) in place of the README's release build, to spare CI a
# second full build; ACEXPORT_BIN=PATH installs another one (e.g. target/release/acexport).
#
# The Debian root is built once with debootstrap (a few minutes) and cached in
# $ACEXPORT_SYSTEMD_CACHE (default /var/cache/acexport-systemd), keyed by suite and package
# list; each run boots a fresh copy of it and removes the copy at the end, so runs do not
# see each other's state.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ACEXPORT_BIN:-$REPO/target/debug/acexport}
CACHE=${ACEXPORT_SYSTEMD_CACHE:-/var/cache/acexport-systemd}
SUITE=bookworm
# What a minimal server has, plus what the README's steps use (sudo) and what the daemon needs
# (ca-certificates for HTTPS to ActiveCampaign). No procps: the unit must not need /bin/kill.
PACKAGES=systemd,systemd-sysv,dbus,sudo,acl,ca-certificates
ROOT_CACHE=$CACHE/root-$(printf '%s minbase %s\n' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
# Highest acceptable `systemd-analyze security` exposure, as in tests/it/deploy.rs.
MAX_EXPOSURE=${ACEXPORT_MAX_EXPOSURE:-2.0}
# Who may drop trigger files in the tests (member of acexport-trigger).
MEMBER=alice
# A local user with no role.
OUTSIDER=mallory

cannot_run() {
  echo "systemd check not run: $*" >&2
  exit 2
}

[ "$(id -u)" = 0 ] || cannot_run "needs root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn nsenter flock; do
  command -v "$tool" >/dev/null || cannot_run "$tool is not installed (apt-get install debootstrap systemd-container)"
done
[ -x "$BIN" ] || cannot_run "no acexport binary at $BIN (cargo build, or set ACEXPORT_BIN)"

# --- The cached Debian root -----------------------------------------------------------------

debian_mirror() {
  local sources=/etc/apt/sources.list.d/debian.sources
  if [ -r "$sources" ] && awk '/^URIs:/{print $2; found=1; exit} END{exit !found}' "$sources"; then
    return
  fi
  if [ -r /etc/apt/sources.list ] &&
    awk '$1=="deb"{print $2; found=1; exit} END{exit !found}' /etc/apt/sources.list; then
    return
  fi
  echo http://deb.debian.org/debian
}

build_root() {
  mkdir -p "$CACHE"
  # One builder at a time; a second run waits and then finds the root built.
  exec 8>"$CACHE/lock"
  flock 8
  if [ ! -d "$ROOT_CACHE" ]; then
    local tmp="$ROOT_CACHE.tmp.$$"
    rm -rf "$tmp"
    echo "Building the Debian $SUITE root in $ROOT_CACHE (once; a few minutes)..."
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$(debian_mirror)" \
      >"$CACHE/debootstrap.log" 2>&1; then
      rm -rf "$tmp"
      tail -20 "$CACHE/debootstrap.log" >&2
      cannot_run "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    mv "$tmp" "$ROOT_CACHE"
  fi
  flock -u 8
}

build_root

# --- A fresh container ----------------------------------------------------------------------

WORK=$(mktemp -d /var/tmp/acexport-systemd.XXXXXX)
ROOT=$WORK/root
NSPAWN=
PID1=
cleanup() {
  if [ -n "$PID1" ] && [ -d "/proc/$PID1" ]; then
    nsenter -t "$PID1" -a -- systemctl poweroff >/dev/null 2>&1 || true
  fi
  if [ -n "$NSPAWN" ]; then
    for _ in $(seq 60); do
      kill -0 "$NSPAWN" 2>/dev/null || break
      sleep 0.5
    done
    # Still up after 30 s: stop the container we started.
    kill "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cp -a --reflink=auto "$ROOT_CACHE" "$ROOT"
# The checkout as the README's commands expect it, with the prebuilt binary where
# `cargo build --release` would leave it.
SRC=/root/acexport
mkdir -p "$ROOT$SRC/target/release"
cp -a "$REPO/deploy" "$ROOT$SRC/deploy"
cp "$REPO/README.md" "$ROOT$SRC/README.md"
install -m 0755 "$BIN" "$ROOT$SRC/target/release/acexport"
# A host name that resolves, as on a real server (sudo warns otherwise).
echo acx >"$ROOT/etc/hostname"
printf '127.0.1.1\tacx\n' >>"$ROOT/etc/hosts"

# --register=no --keep-unit: there may be no host systemd, machined or D-Bus to register with.
# The container shares the host's network: the sandbox below listens on a free loopback port.
systemd-nspawn -q -D "$ROOT" -b --register=no --keep-unit --console=passive \
  --machine="acx-$$" --hostname=acx >"$WORK/console.log" 2>&1 &
NSPAWN=$!
for _ in $(seq 100); do
  for child in $(pgrep -P "$NSPAWN" || true); do
    [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && PID1=$child
  done
  [ -n "$PID1" ] && break
  sleep 0.2
done
[ -n "$PID1" ] || { cat "$WORK/console.log" >&2; cannot_run "the container did not boot"; }

# A command in the container, as root, with a clean environment.
ct() {
  nsenter -t "$PID1" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 "$@"
}
# A shell snippet in the container.
ctsh() { ct bash -ec "$1"; }

state=$(ct timeout 60 systemctl is-system-running --wait || true)
case "$state" in
  running | degraded) ;;
  *) cannot_run "the container's systemd is $state" ;;
esac

# --- Checks ---------------------------------------------------------------------------------

FAILED=0
PASSED=0
check() {
  local name=$1 rc
  shift
  # In a subshell of its own, so that `set -e` holds inside the check (bash ignores it in a
  # function called as an `if` condition).
  set +e
  (
    set -e
    "$@"
  ) >"$WORK/check.log" 2>&1
  rc=$?
  set -e
  # A check may say what it measured on a line starting with "= ".
  local detail
  detail=$(sed -n 's/^= //p' "$WORK/check.log" | tail -n 1)
  if [ "$rc" = 0 ]; then
    echo "PASS $name${detail:+ ($detail)}"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $name"
    sed 's/^/    /' "$WORK/check.log" | tail -n 25
    FAILED=$((FAILED + 1))
  fi
}

# Retries `cmd...` every half second for up to $1 seconds.
eventually() {
  local seconds=$1
  shift
  local tries=$((seconds * 2))
  for _ in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  "$@"
}

# The container's files are the host's under $ROOT: settings are edited from here.
SETTINGS=$ROOT/etc/acexport/acexport.toml
set_workers() { sed -i "s/^workers = .*/workers = $1/" "$SETTINGS"; }

# CLI commands as the README says: the service user, the default settings file.
acx() { ct sudo -u acexport acexport "$@"; }
prop() { ct systemctl show -p "$1" --value acexport; }
# `TRIGGER STATUS` per run of export weekly, latest first.
runs() {
  acx runs --export weekly --json --limit 1000 |
    awk -F'"' '/"trigger":/{t=$4} /"status":/{print t, $4}'
}
count_runs() { runs | grep -cx "$1" || true; }
# Waits for a new run `TRIGGER succeeded` after `before` of them.
wait_for_run() {
  local want=$1 before=$2 start=$SECONDS
  for _ in $(seq 120); do
    if [ "$(count_runs "$want succeeded")" -gt "$before" ]; then
      echo "= succeeded within $((SECONDS - start + 1)) s"
      return 0
    fi
    sleep 0.5
  done
  echo "no new run \"$want succeeded\" within 60 s; runs (latest first):"
  runs | head -5
  return 1
}

install_as_the_readme_says() {
  # The first sh block of the README's section, without its build line (see the header).
  awk '/^### Install as a systemd service/{s=1; next} s && /^```sh/{b=1; next} b && /^```/{exit} b' \
    "$REPO/README.md" | grep -v '^cargo build' >"$ROOT/root/install.sh"
  grep -q 'systemctl' "$ROOT/root/install.sh" || {
    echo "no install block found in README.md"
    return 1
  }
  cat "$ROOT/root/install.sh"
  ctsh "cd $SRC && set -x && . /root/install.sh"
}
check "install as README.md says (on a minimal Debian 12, no /etc/sysusers.d, no procps)" \
  install_as_the_readme_says

active_after_start() {
  eventually 30 test "$(prop ActiveState)" = active
  ct systemctl is-active acexport
}
check "active after start" active_after_start

status_text() {
  local text
  text=$(prop StatusText)
  echo "= StatusText=$text"
  [ -n "$text" ]
}
check "STATUS= text shown by systemctl" status_text

# The ActiveCampaign sandbox, its token as a key file, a CSV segment and an export.
set_up_an_export() {
  ctsh "
    install -d -m 0755 /srv/acx
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > /srv/acx/token
    chgrp acexport /srv/acx/token && chmod 0640 /srv/acx/token
    printf 'email,first_name\nada@example.com,Ada\nalan@example.com,Alan\n' > /srv/acx/members.csv
    chmod 0644 /srv/acx/members.csv
    systemd-run --unit=acx-sandbox --quiet /usr/bin/acexport sandbox --port 0 --token-file /srv/acx/token
    useradd --create-home --groups acexport-trigger $MEMBER
    useradd --create-home $OUTSIDER
  "
  local url=
  for _ in $(seq 40); do
    url=$(ct journalctl -u acx-sandbox -o cat | grep -o 'http://127\.0\.0\.1:[0-9]*' | head -n1 || true)
    [ -n "$url" ] && break
    sleep 0.5
  done
  [ -n "$url" ] || { echo "the sandbox did not start"; ct journalctl -u acx-sandbox --no-pager; return 1; }
  echo "sandbox at $url"
  local share=() help
  help=$(acx connection add --help)
  # The control socket's contributors may run shared connections only (issue 11).
  if grep -q -- --allow-contributors <<<"$help"; then
    share=(--allow-contributors)
  else
    echo "note: this build has no --allow-contributors (control socket not merged)"
  fi
  acx connection add sandbox --host "$url" --api-key-file /srv/acx/token \
    --accept-data-transfer "${share[@]}"
  acx segment add members --csv /srv/acx/members.csv
  acx export add weekly --connection sandbox --list 1 --segment members --email email \
    --first-name first_name
}
check "connection, segment and export added by the service user" set_up_an_export

# The README's settings make group acexport-trigger contributors ([access]); the connection
# above is shared with contributors, so its members may run the export.
if ! grep -q '^contributors = \["@acexport-trigger"\]' "$SETTINGS"; then
  echo "note: the installed settings do not make acexport-trigger contributors"
fi

run_by_the_service_user() {
  local before
  before=$(count_runs "signal-file succeeded")
  acx trigger weekly
  wait_for_run signal-file "$before"
}
check "a run triggered by the service user (acexport trigger) succeeds" run_by_the_service_user

run_by_a_member_with_the_cli() {
  local before
  before=$(count_runs "signal-file succeeded")
  ct runuser -u "$MEMBER" -- acexport trigger weekly
  wait_for_run signal-file "$before"
}
check "a run triggered by a trigger-group member (acexport trigger) succeeds" \
  run_by_a_member_with_the_cli

run_by_a_member_with_a_file() {
  local before
  before=$(count_runs "signal-file succeeded")
  # shellcheck disable=SC2016 # expanded by the member's shell
  ct runuser -u "$MEMBER" -- sh -ec '
    cd /var/lib/acexport/triggers
    printf "{\"export\":\"weekly\",\"requested_by\":\"%s\"}" "$(id -un)" > .member.tmp
    mv .member.tmp "member-$(date +%s%N).trigger"'
  wait_for_run signal-file "$before"
}
check "a run triggered by a trigger-group member (a signal file) succeeds" \
  run_by_a_member_with_a_file

roles_through_the_control_socket() {
  local out rc
  # A contributor sees the shared connection by name, type and status; never its address.
  out=$(ct runuser -u "$MEMBER" -- acexport connection list --json)
  grep -q '"type": "ActiveCampaign"' <<<"$out"
  if grep -q '127\.0\.0\.1' <<<"$out"; then
    echo "a contributor saw the address: $out"
    return 1
  fi
  # Someone without a role is refused (77) whatever they ask; only admins change connections.
  set +e
  ct runuser -u "$OUTSIDER" -- acexport status >/dev/null 2>&1
  rc=$?
  ct runuser -u "$MEMBER" -- acexport connection remove sandbox --force >/dev/null 2>&1
  local rc_member=$?
  set -e
  [ "$rc" = 77 ] && [ "$rc_member" = 77 ] || { echo "exit codes: $rc, $rc_member"; return 1; }
  echo "= no role: 77; contributor removing a connection: 77; no address shown"
}
check "roles through the control socket (contributor, no role)" roles_through_the_control_socket

journald_priorities_and_fields() {
  local since
  since=$(ct date +@%s)
  # A trigger for an export that does not exist is rejected with a warning naming its file.
  # shellcheck disable=SC2016 # expanded by the member's shell
  ct runuser -u "$MEMBER" -- sh -ec '
    cd /var/lib/acexport/triggers
    printf "{\"export\":\"nope\"}" > .bad.tmp && mv .bad.tmp unknown-export.trigger'
  eventually 15 sh -c "nsenter -t $PID1 -a -- journalctl -u acexport -p warning..warning \
    --since $since -o cat | grep -q unknown-export.trigger"
  echo "journalctl -u acexport -p warning:"
  ct journalctl -u acexport -p warning --since "$since" -o cat --no-pager
  local run
  run=$(acx runs --export weekly --json --limit 1 | awk -F'[:,]' '/"id":/{gsub(/ /, "", $2); print $2; exit}')
  echo "journalctl -u acexport EXPORT=weekly RUN_ID=$run:"
  ct journalctl -u acexport EXPORT=weekly RUN_ID="$run" -o cat --no-pager
  local lines
  lines=$(ct journalctl -u acexport EXPORT=weekly RUN_ID="$run" -o cat | wc -l)
  [ "$lines" -gt 0 ]
  echo "= EXPORT=weekly RUN_ID=$run select $lines lines"
  # Native entries: info at priority 6, no "<6>" left in the message.
  local info
  info=$(ct journalctl -u acexport -p info..info -o cat --no-pager -n 20)
  [ -n "$info" ] && ! grep -q '^<[0-7]>' <<<"$info"
}
check "journald: warnings at priority 4, EXPORT= and RUN_ID= fields" journald_priorities_and_fields

reload_valid() {
  local pid since
  pid=$(prop MainPID)
  since=$(ct date +@%s)
  set_workers 3
  ct systemctl reload acexport
  eventually 10 sh -c "nsenter -t $PID1 -a -- journalctl -u acexport --since $since -o cat |
    grep -q 'Settings reloaded'"
  [ "$(prop MainPID)" = "$pid" ] && [ "$(prop ActiveState)" = active ]
}
check "reload with valid settings applies them in the running daemon" reload_valid

reload_invalid() {
  local pid
  pid=$(prop MainPID)
  set_workers 0
  if ct systemctl reload acexport; then
    echo "the reload succeeded on workers = 0"
    return 1
  fi
  set_workers 2
  sleep 1
  echo "= MainPID unchanged ($pid -> $(prop MainPID)), $(prop ActiveState)"
  [ "$(prop MainPID)" = "$pid" ] && [ "$(prop ActiveState)" = active ]
}
check "reload with invalid settings fails and the daemon keeps running" reload_invalid

credential() {
  local pid dir
  pid=$(prop MainPID)
  dir=$(ct sh -c "tr '\0' '\n' < /proc/$pid/environ" | sed -n 's/^CREDENTIALS_DIRECTORY=//p')
  echo "= \$CREDENTIALS_DIRECTORY/acexport-secrets-key is the key file's copy ($dir)"
  [ -n "$dir" ]
  ct cmp "$dir/acexport-secrets-key" /etc/acexport/secrets.key
  ct ls -l "$dir/acexport-secrets-key"
}
check "the secrets key arrives as the credential acexport-secrets-key" credential

watchdog() {
  ctsh 'mkdir -p /etc/systemd/system/acexport.service.d
    # Test only: a short watchdog, and SIGKILL soon after its SIGABRT (a stopped process
    # takes no signal but SIGKILL).
    printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n" \
      > /etc/systemd/system/acexport.service.d/watchdog.conf
    systemctl daemon-reload
    systemctl restart acexport'
  eventually 30 test "$(prop ActiveState)" = active
  local pid restarts
  pid=$(prop MainPID)
  restarts=$(prop NRestarts)
  # No /bin/kill in the container: bash's own.
  ct bash -c "kill -STOP $pid"
  local stopped=$SECONDS
  eventually 40 sh -c "[ \"\$(nsenter -t $PID1 -a -- systemctl show -p NRestarts --value acexport)\" -gt $restarts ] &&
    [ \"\$(nsenter -t $PID1 -a -- systemctl is-active acexport)\" = active ]"
  echo "= restarted $((SECONDS - stopped)) s after SIGSTOP with WatchdogSec=2s, NRestarts $restarts -> $(prop NRestarts)"
  ct journalctl -u acexport -o cat --no-pager | grep -i watchdog | tail -n 2 || true
  ctsh 'rm /etc/systemd/system/acexport.service.d/watchdog.conf
    systemctl daemon-reload && systemctl restart acexport'
  eventually 30 test "$(prop ActiveState)" = active
}
check "the watchdog restarts a stopped (SIGSTOP) daemon" watchdog

stop_exits_0() {
  ct systemctl stop acexport
  echo "= Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus)"
  [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ]
}
check "stop: the daemon exits 0" stop_exits_0

# Starts the unit expecting it to fail, waits three RestartSec= and reports how it ended.
failed_without_restarts() {
  local want_status=$1
  ct systemctl reset-failed acexport 2>/dev/null || true
  if ct systemctl start acexport; then
    echo "systemctl start succeeded"
  fi
  sleep 16
  echo "= after 16 s: ActiveState=$(prop ActiveState) NRestarts=$(prop NRestarts) ExecMainStatus=$(prop ExecMainStatus)"
  [ "$(prop ActiveState)" = failed ] && [ "$(prop NRestarts)" = 0 ] &&
    [ "$(prop ExecMainStatus)" = "$want_status" ]
}

invalid_settings() {
  local since
  since=$(ct date +@%s)
  set_workers 0
  local ok=0
  failed_without_restarts 78 || ok=1
  local errors
  errors=$(ct journalctl -u acexport -p err --since "$since" -o cat --no-pager)
  echo "journalctl -u acexport -p err:"
  tail -n 3 <<<"$errors"
  grep -q 'daemon.workers' <<<"$errors" || ok=1
  set_workers 2
  return $ok
}
check "invalid settings leave the unit failed (78), without restarts, the key named at err" \
  invalid_settings

missing_key() {
  ct mv /etc/acexport/secrets.key /etc/acexport/secrets.key.away
  local ok=0
  failed_without_restarts 243 || ok=1
  ct mv /etc/acexport/secrets.key.away /etc/acexport/secrets.key
  return $ok
}
check "a missing secrets key file leaves the unit failed (243/CREDENTIALS), without restarts" \
  missing_key

starts_again() {
  ct systemctl reset-failed acexport
  ct systemctl start acexport
  eventually 30 test "$(prop ActiveState)" = active
}
check "starts again once fixed" starts_again

exposure() {
  local out score
  out=$(ct systemd-analyze security acexport --no-pager)
  score=$(sed -n 's/.*Overall exposure level for acexport.service: \([0-9.]*\).*/\1/p' <<<"$out")
  echo "= exposure $score, at most $MAX_EXPOSURE"
  [ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN{exit !(s <= m)}'
}
check "systemd-analyze security exposure within the threshold" exposure

echo "systemd: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
