"""What a process does when PostgreSQL gets in its way: a deadlock, or a restart of the server.

Real connections to the test database (PostgreSQL; these tests skip on SQLite, which has neither):
two transactions that take two rows in opposite orders deadlock for real, and a connection is
cut from the server side as a restart cuts every connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import close_old_connections, connection, transaction

from pushmail_site.transactions import retry_on_conflict

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("deadlocks and server restarts are PostgreSQL's (set DATABASE_URL)")


@pytest.fixture
def two_rows(postgres: None):  # type: ignore[no-untyped-def]
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE fault_rows (id integer PRIMARY KEY, n integer NOT NULL)")
        cursor.execute("INSERT INTO fault_rows VALUES (1, 0), (2, 0)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE fault_rows")


def _deadlocking_pair(guard: Callable[[Callable[[int, int], None]], Callable[[int, int], None]]) -> list[BaseException]:
    """Two threads each add 1 to both rows, in opposite orders, both holding their first row
    before either asks for its second: PostgreSQL must abort one. Returns what they raised."""
    both_hold_one = threading.Barrier(2, timeout=20)
    errors: list[BaseException] = []

    def add(first: int, second: int) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE fault_rows SET n = n + 1 WHERE id = %s", [first])
            if not getattr(local, "waited", False):  # an attempt run again does not wait for the other
                local.waited = True
                both_hold_one.wait()
            cursor.execute("UPDATE fault_rows SET n = n + 1 WHERE id = %s", [second])

    local = threading.local()
    guarded = guard(add)

    def run(first: int, second: int) -> None:
        try:
            guarded(first, second)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=order) for order in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def _rows() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT n FROM fault_rows ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def test_a_transaction_aborted_by_a_deadlock_runs_again_and_both_land(two_rows: None) -> None:
    errors = _deadlocking_pair(retry_on_conflict)

    assert errors == []
    assert _rows() == [2, 2]


def test_without_running_again_one_of_the_deadlocked_pair_fails(two_rows: None) -> None:
    """The situation the guard is for: PostgreSQL really aborts one of the two."""
    errors = _deadlocking_pair(lambda func: func)

    assert len(errors) == 1
    assert "deadlock detected" in str(errors[0])
    assert _rows() == [1, 1]


def test_a_kept_connection_cut_by_a_server_restart_is_replaced_before_the_next_request(postgres: None) -> None:
    """A restart closes every connection; a process keeps its connection between requests
    (CONN_MAX_AGE). Django checks it at the start of each request (and Celery before each task):
    with health checks on, the next request reconnects instead of failing."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    conninfo = psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in {"dbname", "user", "password", "host", "port"}}
    )
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    close_old_connections()  # what Django does on request_started
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


def _cut_this_connection() -> None:
    """Close the test's own database connection from the server side, as a restart does; the
    test client (unlike a served request) does not check it first, so the next query fails."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


def test_the_api_answers_503_with_retry_after_while_the_database_is_away(postgres: None, api: Any) -> None:
    try:
        _cut_this_connection()
    except Exception:  # terminating itself ends the statement too
        pass

    response = api.get("/api/v1/inbox/")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["error"] == "unavailable"
    connection.close()
    assert api.get("/api/v1/inbox/").status_code == 200  # back: the same request works


def test_the_federation_endpoints_answer_503_while_the_database_is_away(
    postgres: None, local_domain: Any, client: Any
) -> None:
    """A peer asking for this instance's discovery document (which lists its domains)."""
    try:
        _cut_this_connection()
    except Exception:
        pass

    response = client.get("/.well-known/pushmail")

    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
    assert response["Retry-After"] == "5"
    connection.close()
