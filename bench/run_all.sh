#!/usr/bin/env bash
# Run the benchmarks in sequence (ingest with the Postfix baseline,
# bandwidth, open latency, the webmail inbox page, spam runs, POP3/IMAP against Dovecot). Each prints JSON lines and a table on stdout;
# everything is also kept in var/bench-results/<UTC time>/ for docs/benchmarks.md.
#
# Needs PostgreSQL and Redis on loopback (PUSHMAIL_BENCH_POSTGRES,
# PUSHMAIL_BENCH_REDIS override the defaults) and root for the Postfix baseline and Dovecot.
# Takes about an hour on 2 cores (spam runs: about 40 minutes of it; see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="var/bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
echo "results in $OUT" >&2

status=0
run() {
    local bench=$1; shift
    echo "== $bench $* ==" >&2
    if ! "$PY" -m "bench.$bench" "$@" 2> >(tee "$OUT/$bench.log" >&2) | tee "$OUT/$bench.out"; then
        echo "$bench failed" >&2
        status=1
    fi
}
run ingest --profile 1000
run bandwidth
run open_latency
run inbox_page
run spam_run
run mailaccess
exit "$status"
