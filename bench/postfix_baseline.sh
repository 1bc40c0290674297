#!/usr/bin/env bash
# Postfix baseline for the ingest benchmark.
#
# Runs a private, throw-away Postfix instance on 127.0.0.1:$POSTFIX_PORT,
# blasts N messages at it with smtp-source and measures the wall time from the
# first SMTP connection until the last message sits in the recipient's
# Maildir/new. Prints exactly one JSON line on stdout; progress goes to stderr.
#
# Usage (as root):  bash bench/postfix_baseline.sh
# Environment:
#   N             messages to send                       (default 2000)
#   SESSIONS      parallel SMTP sessions (smtp-source -s) (default 10)
#   SIZE          payload bytes per message (-l)          (default 2000)
#   POSTFIX_PORT  loopback port of the private listener   (default 2525)
#   TIMEOUT       seconds allowed for send + delivery     (default 300)
#   REUSE_CONNECTIONS=1  send several messages per connection (smtp-source -d);
#                 default is one message per connection, like independent clients.
#   POSTFIX_BENCH_DIR    state dir of the private instance
#                 (default /var/tmp/pushmail-postfix-bench, wiped on every run)
#   KEEP_WORKDIR=1       keep the state dir (config, queue, log) and the
#                 delivered Maildir after the run, for inspection.
set -euo pipefail

N="${N:-2000}"
SESSIONS="${SESSIONS:-10}"
SIZE="${SIZE:-2000}"
POSTFIX_PORT="${POSTFIX_PORT:-2525}"
TIMEOUT="${TIMEOUT:-300}"
REUSE_CONNECTIONS="${REUSE_CONNECTIONS:-0}"
WORKDIR="${POSTFIX_BENCH_DIR:-/var/tmp/pushmail-postfix-bench}"
KEEP_WORKDIR="${KEEP_WORKDIR:-0}"

BENCH_USER=pmbench
BENCH_DOMAIN=bench.test
BENCH_HOME=/var/lib/pmbench
RCPT="${BENCH_USER}@${BENCH_DOMAIN}"
SENDER="sender@${BENCH_DOMAIN}"

CONF="$WORKDIR/etc"
QUEUE="$WORKDIR/queue"
DATA="$WORKDIR/data"
LOG="$WORKDIR/postfix.log"
SENDER_PIDFILE="$WORKDIR/smtp-source.pid"
MAILDIR="$BENCH_HOME/Maildir"

log() { printf '[postfix-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in N SESSIONS SIZE POSTFIX_PORT TIMEOUT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $EUID -eq 0 ]] || die "must run as root (installs packages, starts Postfix, creates user $BENCH_USER)"

# --------------------------------------------------------------------------
# 1. Packages. Only the postfix package is needed: it ships smtp-source too.
# --------------------------------------------------------------------------
install_postfix() {
    log "installing postfix (Debian package, noninteractive)"
    # Preseed so the install neither prompts nor configures an Internet MTA.
    debconf-set-selections <<EOF
postfix postfix/main_mailer_type select Local only
postfix postfix/mailname string $(hostname)
EOF
    # Keep the install from starting the *system* Postfix: we only want our
    # private instance running, and only while the benchmark runs. If the
    # machine already has a policy-rc.d we leave it alone (it is usually the
    # container's "deny everything" one); otherwise add a temporary one.
    local added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    {
        apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix
    } >&2 || rc=$?
    if [[ $added_policy -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
    [[ $rc -eq 0 ]] || die "apt-get install postfix failed (rc=$rc)"
}

if ! command -v postfix >/dev/null 2>&1 || [[ ! -x /usr/sbin/smtp-source ]]; then
    install_postfix
fi
[[ -x /usr/sbin/postfix ]] || die "/usr/sbin/postfix missing after install"
[[ -x /usr/sbin/smtp-source ]] || die "/usr/sbin/smtp-source missing (expected in the postfix package)"
POSTFIX_VERSION="$(postconf -d -h mail_version)"
log "postfix $POSTFIX_VERSION, smtp-source at /usr/sbin/smtp-source"

# --------------------------------------------------------------------------
# 2. Benchmark user with a Maildir, and a clean private Postfix state dir.
# --------------------------------------------------------------------------
if ! id "$BENCH_USER" >/dev/null 2>&1; then
    log "creating system user $BENCH_USER (home $BENCH_HOME)"
    useradd --system --create-home --home-dir "$BENCH_HOME" \
        --shell /usr/sbin/nologin "$BENCH_USER"
fi
BENCH_HOME="$(getent passwd "$BENCH_USER" | cut -d: -f6)"
MAILDIR="$BENCH_HOME/Maildir"
install -d -o "$BENCH_USER" -g "$(id -gn "$BENCH_USER")" -m 700 "$BENCH_HOME"

stop_sender() {
    # Stop a smtp-source (under timeout(1)) started by this script, by its
    # recorded pid, and only if that pid still runs smtp-source.
    [[ -f "$SENDER_PIDFILE" ]] || return 0
    local pid
    pid="$(tr -dc 0-9 < "$SENDER_PIDFILE")"
    if [[ -n "$pid" ]] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q smtp-source; then
        log "stopping smtp-source (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$SENDER_PIDFILE"
}

stop_instance() {
    # Stop a private instance that lives in $CONF (no-op if none is running).
    [[ -f "$CONF/main.cf" ]] || return 0
    postfix -c "$CONF" status >/dev/null 2>&1 || return 0
    log "stopping private postfix instance"
    postfix -c "$CONF" stop >/dev/null 2>&1 || true
    local pidfile="$QUEUE/pid/master.pid" pid=""
    [[ -f "$pidfile" ]] && pid="$(tr -dc 0-9 < "$pidfile")"
    for _ in $(seq 1 100); do
        postfix -c "$CONF" status >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    # Graceful stop did not finish in 10 s: abort, then kill the master by pid.
    postfix -c "$CONF" abort >/dev/null 2>&1 || true
    sleep 0.5
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" || true; fi
}

cleanup() {
    local rc=$?
    stop_sender
    stop_instance
    if [[ $rc -ne 0 && -f "$LOG" ]]; then
        log "last lines of $LOG:"; tail -n 20 "$LOG" >&2 || true
    fi
    if [[ $KEEP_WORKDIR == 1 || $rc -ne 0 ]]; then
        log "state kept in $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
    exit "$rc"
}

# A previous run that was SIGKILLed may have left its instance running: stop
# it (and its smtp-source) before wiping the state, so re-runs always start
# from a clean slate.
stop_sender
stop_instance
# Fail clearly instead of benchmarking someone else's server on that port.
if (exec 3<>"/dev/tcp/127.0.0.1/$POSTFIX_PORT") 2>/dev/null; then
    die "something already listens on 127.0.0.1:$POSTFIX_PORT; set POSTFIX_PORT"
fi

trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$WORKDIR" "$MAILDIR"
# Queue/config must be root-owned and not group/world writable, and the
# postfix user must be able to traverse down to the queue.
install -d -o root -g root -m 755 "$WORKDIR" "$CONF" "$QUEUE"
install -d -o postfix -g postfix -m 700 "$DATA"

# --------------------------------------------------------------------------
# 3. Private instance configuration (independent of /etc/postfix).
# --------------------------------------------------------------------------
cat > "$CONF/main.cf" <<EOF
# Generated by bench/postfix_baseline.sh - private benchmark instance.
compatibility_level = 3.6
queue_directory = $QUEUE
data_directory = $DATA
# postfix-files / dynamicmaps.cf stay in the package's directory.
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop

# Log to a file (containers often have no syslog); needs postlogd in master.cf.
maillog_file = $LOG
maillog_file_prefixes = $WORKDIR
syslog_name = postfix-bench

# Loopback only, IPv4 only, and never touch DNS.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
myhostname = mx.$BENCH_DOMAIN
mydomain = $BENCH_DOMAIN
myorigin = \$mydomain
mydestination = $BENCH_DOMAIN, localhost
mynetworks = 127.0.0.0/8
relayhost =
append_dot_mydomain = no
biff = no

# Accept from loopback, refuse relaying anywhere else.
smtpd_client_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination

# Local delivery to ~pmbench/Maildir/ (trailing slash = Maildir format).
home_mailbox = Maildir/
alias_maps =
alias_database =
mailbox_size_limit = 0
EOF

# Explicit master.cf: no chroot anywhere (nothing to copy into a jail), and
# the only network listener is 127.0.0.1:$POSTFIX_PORT.
cat > "$CONF/master.cf" <<EOF
# service  type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
EOF

log "starting private postfix (config $CONF, listener 127.0.0.1:$POSTFIX_PORT)"
postfix -c "$CONF" check >&2 || die "postfix check failed for $CONF"
postfix -c "$CONF" start >&2 || die "postfix -c $CONF start failed"

# Wait for the listener, so connection setup is not part of the measurement.
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$POSTFIX_PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$POSTFIX_PORT") 2>/dev/null \
    || die "private postfix is not listening on 127.0.0.1:$POSTFIX_PORT"

# --------------------------------------------------------------------------
# 4. Send and wait for delivery.
# --------------------------------------------------------------------------
count_delivered() {
    find "$MAILDIR/new" -maxdepth 1 -type f 2>/dev/null | wc -l
}

src_opts=(-s "$SESSIONS" -l "$SIZE" -m "$N" -f "$SENDER" -t "$RCPT" -M "client.$BENCH_DOMAIN")
[[ $REUSE_CONNECTIONS == 1 ]] && src_opts+=(-d)

log "sending $N messages of $SIZE bytes over $SESSIONS sessions to $RCPT"
t_start="$(date +%s.%N)"
# TIMEOUT bounds the whole send + deliver phase; smtp-source has no timeout
# of its own and would wait forever on a wedged server.
deadline=$(( ${t_start%.*} + TIMEOUT ))
# Run it in the background and record its pid, so that an interrupted run
# (here or, after a SIGKILL, at the start of the next run) can stop it.
timeout "$TIMEOUT" /usr/sbin/smtp-source "${src_opts[@]}" "127.0.0.1:$POSTFIX_PORT" >&2 &
src_pid=$!
echo "$src_pid" > "$SENDER_PIDFILE"
src_rc=0
wait "$src_pid" || src_rc=$?
rm -f "$SENDER_PIDFILE"
(( src_rc != 124 )) || die "smtp-source did not finish within ${TIMEOUT}s"
(( src_rc == 0 )) || die "smtp-source failed with rc=$src_rc (see messages above)"
t_sent="$(date +%s.%N)"
log "smtp-source done: all $N accepted after $(awk -v a="$t_start" -v b="$t_sent" 'BEGIN{printf "%.3f", b-a}') s; waiting for delivery"

last_report=0
while :; do
    delivered="$(count_delivered)"
    (( delivered >= N )) && break
    now=$(date +%s)
    if (( now >= deadline )); then
        die "delivery incomplete: $delivered of $N messages in $MAILDIR/new ${TIMEOUT}s after sending started"
    fi
    if (( now - last_report >= 5 )); then
        log "delivered $delivered/$N"; last_report=$now
    fi
    sleep 0.05
done
(( delivered == N )) || die "expected $N messages in $MAILDIR/new, found $delivered"

# End time = mtime of the newest delivered file, which is when local(8)
# finished writing it; this removes the polling interval from the figure.
t_end="$(find "$MAILDIR/new" -maxdepth 1 -type f -printf '%T@\n' | sort -n | tail -n 1)"

awk -v n="$N" -v a="$t_start" -v b="$t_end" -v size="$SIZE" -v s="$SESSIONS" \
    -v ver="$POSTFIX_VERSION" 'BEGIN {
        secs = b - a
        printf "{\"tool\":\"postfix\",\"messages\":%d,\"seconds\":%.3f,\"messages_per_second\":%.1f,\"size_bytes\":%d,\"sessions\":%d,\"postfix_version\":\"%s\"}\n",
            n, secs, n / secs, size, s, ver
    }'
log "done: $N messages delivered"

# Leave the Maildir empty for the next run (it is wiped at start as well).
[[ $KEEP_WORKDIR == 1 ]] || rm -rf "$MAILDIR"
