#!/usr/bin/env bash
# Runs the test suite on PostgreSQL + Redis when they answer, otherwise on
# SQLite with the embedded broker, and says which. With CI=true an unreachable
# PostgreSQL or Redis is a failure, not a fallback.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

PG_SERVER=${PUSHMAIL_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432}
REDIS_SERVER=${PUSHMAIL_TEST_REDIS:-redis://127.0.0.1:6379}

reachable() {
  "$PY" - "$PG_SERVER" "$REDIS_SERVER" <<'PYEOF'
import sys
import psycopg, redis
pg, rd = sys.argv[1], sys.argv[2]
problems = []
try:
    psycopg.connect(pg.rstrip("/") + "/postgres", connect_timeout=3).close()
except Exception as exc:
    problems.append(f"PostgreSQL at {pg}: {exc}")
try:
    redis.Redis.from_url(rd, socket_connect_timeout=3).ping()
except Exception as exc:
    problems.append(f"Redis at {rd}: {exc}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PYEOF
}

if problems=$(reachable); then
  export PUSHMAIL_TEST_POSTGRES=$PG_SERVER PUSHMAIL_TEST_REDIS=$REDIS_SERVER
  export DATABASE_URL=${DATABASE_URL:-${PG_SERVER%/}/pushmail_unit}
  echo "test backend: PostgreSQL ($PG_SERVER) and Redis ($REDIS_SERVER)"
elif [ "${CI:-}" = "true" ]; then
  echo "CI=true but the test services are unreachable:" >&2
  echo "$problems" >&2
  exit 1
else
  unset PUSHMAIL_TEST_POSTGRES PUSHMAIL_TEST_REDIS DATABASE_URL
  echo "test backend: SQLite and the embedded filesystem broker (PostgreSQL/Redis not reachable:"
  echo "$problems)"
fi

# The browser tests (tests/browser) need Debian's Chromium; under CI its absence is a failure.
if [ ! -x /usr/bin/chromium ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true but /usr/bin/chromium is missing (apt-get install chromium): the browser tests cannot run" >&2
    exit 1
  fi
  echo "browser tests will be skipped: /usr/bin/chromium is missing (apt-get install chromium)"
fi

exec "$PY" -m pytest "$@"
