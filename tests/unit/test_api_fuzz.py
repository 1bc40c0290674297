"""Schemathesis over the published OpenAPI schema: no operation answers 5xx, whatever it is sent.

Cases are generated from /api/schema/ and sent to the WSGI application in process,
authenticated with a Bearer token, valid and invalid (negative) inputs alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from accounts.models import User
from pushmail_site.wsgi import application
from tests.conftest import FakePeer
from tests.factories import InboxEntryFactory, PeerMessageFactory, SentMessageFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("net")]

EXPECTED_OPERATIONS = {
    "POST /api/v1/messages/",
    "GET /api/v1/messages/{message_id}/",
    "POST /api/v1/messages/{message_id}/withdraw/",
    "GET /api/v1/inbox/",
    "GET /api/v1/inbox/{entry_id}/",
    "POST /api/v1/inbox/{entry_id}/retry/",
    "POST /api/v1/inbox/{entry_id}/spam/",
    "POST /api/v1/inbox/{entry_id}/not-spam/",
    "GET /api/v1/inbox/{entry_id}/attachments/{index}/",
    "POST /api/v1/inbox/{entry_id}/attachments/{index}/retry/",
    "GET /api/v1/encryption/key",
    "GET /api/v1/encryption/correspondents/{address}",
    "POST /api/v1/encryption/correspondents/{address}/accept",
}


ADDRESSES = st.lists(
    st.sampled_from(["bob@alpha.test", "nobody@alpha.test", "carol@peer.test", "x@legacy.example", "alice@alpha.test"]),
    max_size=3,
)


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """Requests go through the WSGI handler, whose end-of-request hook would close the
    connection that holds the test's transaction (PostgreSQL); django.test.Client does the same."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def known_ids(alice: User, bob: User, peer: FakePeer) -> dict[str, list[Any]]:
    """Alice (and bob) have sent and received mail, so the fuzzer meets real rows, not only empty tables."""
    from mailbox.services import accept_notification

    sent = [SentMessageFactory(sender=alice, to=["carol@peer.test", "bob@alpha.test"]), SentMessageFactory(sender=bob)]
    entries = InboxEntryFactory.create_batch(3, owner=alice) + InboxEntryFactory.create_batch(1, owner=bob)
    accept_notification(origin="peer.test", notification=PeerMessageFactory().notification())
    return {
        "message_id": [str(m.pk) for m in sent],
        "entry_id": [e.pk for e in entries],
        "index": [0, 1],
        "address": ["bob@alpha.test", "carol@peer.test"],
    }


def _strategy(operation: Any, mode: GenerationMode, known_ids: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    """Schema-driven cases, plus (for valid input) ids that exist and addresses that parse."""
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is not GenerationMode.POSITIVE:
        return strategy
    names = [p.name for p in operation.path_parameters]
    for name in names:
        existing = [operation.as_strategy(generation_mode=mode, path_parameters={name: v}) for v in known_ids[name]]
        strategy = st.one_of(strategy, *existing)
    if operation.method.upper() == "POST" and not names:

        def with_addresses(pair: tuple[Any, list[str]]) -> Any:
            case, to = pair
            if isinstance(case.body, dict):
                case.body["to"] = to
            return case

        strategy = st.one_of(strategy, st.tuples(strategy, ADDRESSES).map(with_addresses))
    return strategy


def _check(case: schemathesis.Case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers)
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        data: Any = response.json()  # every error is JSON naming the problem
        assert data.get("error") and data.get("detail"), (where, data)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_operation_answers_5xx(alice_token: str, known_ids: dict[str, list[Any]], mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {alice_token}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == EXPECTED_OPERATIONS

    for operation in operations:

        @given(case=_strategy(operation, mode, known_ids))
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            _check(case, headers)

        run()
