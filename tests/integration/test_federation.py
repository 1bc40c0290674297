"""Two and three real instances exchanging mail over HTTP on loopback.

alpha.test sends; beta.test receives and pulls bodies on read; gamma.test is a
third peer of both that is not addressed by alpha's mail. gamma also has a
short delivery window (for the retry-window test, as a sender) and a small
per-origin rate limit (for the rate-limit test, as a receiver).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import payloads
from federation.signatures import sign
from tools.cluster import Instance, free_port

from .conftest import (
    Api,
    Cluster,
    database_bytes,
    holds,
    mailboxes,
    second_web,
    shell_json,
    start_cluster,
    stored_files_bytes,
    unique,
    wait_for,
)

GAMMA_WINDOW_SECONDS = 6
GAMMA_RATE_PER_MINUTE = 3


class _NoPushmail(BaseHTTPRequestHandler):
    """A web site without a Pushmail discovery document: its domain is a legacy one."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"not found"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture(scope="module")
def legacy_site() -> Iterator[str]:
    # The test machine resolves no outside names, so legacy.invalid is mapped to a
    # loopback site that answers 404 for /.well-known/pushmail: no Pushmail there.
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _NoPushmail)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, legacy_site: str) -> Iterator[Cluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("federation"),
        {"it_alpha": ["alpha.test"], "it_beta": ["beta.test"], "it_gamma": ["gamma.test"]},
        env={
            # Legacy recipients are refused as such here, not tried by SMTP (see test_smtp_outbound.py).
            "it_alpha": {"PUSHMAIL_SMTP_OUTBOUND": "0"},
            "it_gamma": {
                "PUSHMAIL_DELIVERY_WINDOW_SECONDS": str(GAMMA_WINDOW_SECONDS),
                "PUSHMAIL_ORIGIN_RATE_PER_MINUTE": str(GAMMA_RATE_PER_MINUTE),
            },
        },
        extra_peers={"it_alpha": {"legacy.invalid": legacy_site}},
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def alpha(cluster: Cluster) -> Instance:
    return cluster["it_alpha"]


@pytest.fixture(scope="module")
def beta(cluster: Cluster) -> Instance:
    return cluster["it_beta"]


@pytest.fixture(scope="module")
def gamma(cluster: Cluster) -> Instance:
    return cluster["it_gamma"]


@pytest.fixture(scope="module")
def keys(cluster: Cluster) -> dict[str, tuple[str, Ed25519PrivateKey]]:
    """Each domain's current key id and private key, read from its own instance's database."""
    found = {}
    for inst in cluster.values():
        domain = inst.domains[0]
        key_id, seed = shell_json(
            inst,
            "import json\nfrom federation.keys import b64, current_key, private_key_of, raw_seed\n"
            f"k = current_key({domain!r})\nprint(json.dumps([k.key_id, b64(raw_seed(private_key_of(k)))]))",
        )
        found[domain] = (key_id, Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed)))
    return found


# --- Helpers ---------------------------------------------------------------------------------


def send_and_wait(sender: Api, to: list[Api], *, text: str, domain: str = "beta.test", cc: list[str] | None = None):
    """Send through the API and wait until the recipient domain has accepted the notification."""
    subject = unique("subject-")
    message = sender.send(to=[r.address for r in to], cc=cc, subject=subject, text=text)
    wait_for(
        f"delivery of {subject} to {domain}",
        lambda: sender.delivery(message["id"], domain)["state"] == "notified",
    )
    entries = [r.entry_with_subject(subject) for r in to]
    return message, subject, entries


def notification_bytes(
    *, sender: str, recipients: list[str], subject: str, global_id: uuid.UUID | None = None
) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    global_id = global_id or uuid.uuid4()
    notification = payloads.Notification(
        global_id=global_id,
        message_id=f"<{global_id}@{sender.rpartition('@')[2]}>",
        sender=sender,
        recipients=recipients,
        subject=subject,
        date=now,
        size=100,
        digest="sha-256:" + hashlib.sha256(b"a body that is never served").hexdigest(),
        in_reply_to="",
        references=[],
        expires=now + timedelta(days=30),
    )
    return json.dumps(notification.to_json(), separators=(",", ":")).encode()


def signed_post(url: str, body: bytes, key: tuple[str, Ed25519PrivateKey]) -> dict[str, str]:
    key_id, private_key = key
    return sign(
        method="POST",
        url=url,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        key_id=key_id,
        private_key=private_key,
    )


def notifications_url(inst: Instance) -> str:
    return f"{inst.base_url}/federation/v1/notifications"


def remote_message_count(inst: Instance, global_ids: list[str]) -> int:
    return shell_json(
        inst,
        "from mailbox.models import RemoteMessage\n"
        f"print(RemoteMessage.objects.filter(global_id__in={global_ids!r}).count())",
    )


def assert_refused(response: requests.Response, status: int, *codes: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] in codes, response.text


# --- Pull on read ----------------------------------------------------------------------------


def test_body_reaches_recipient_instance_only_when_opened(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    token = unique("bodytoken")
    _message, subject, (entry,) = send_and_wait(a, [b], text=f"The secret word is {token}.")
    assert entry["state"] == "notified"

    before = database_bytes(beta)
    assert holds(before, subject), "the notification should be in beta's database (is this the right dump?)"
    assert not holds(before, token), "the body reached beta's database before anyone opened it"
    leaked = [str(path) for path, data in stored_files_bytes(beta).items() if holds(data, token)]
    assert not leaked, f"the body reached beta's files before anyone opened it: {leaked}"

    opened = b.read_until(entry["id"], "fetched")
    assert token in opened["body"]["text"]
    after = database_bytes(beta)
    assert holds(after, token), "after opening, beta should hold the body in its database"


def test_concurrent_opens_by_two_colleagues_fetch_once(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    b1, b2 = mailboxes(beta, 2)
    token = unique("shared")
    message, _subject, (e1, e2) = send_and_wait(a, [b1, b2], text=f"For both of you: {token}")

    barrier = threading.Barrier(2)

    def open_at_once(api: Api, entry_id: int) -> int:
        api = api.clone()
        barrier.wait(timeout=10)
        return api.open(entry_id)[0]

    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(open_at_once, [b1, b2], [e1["id"], e2["id"]]))
    # The first open finds the body at the sender's; the other may find it already fetched when the
    # fetch (on loopback, milliseconds) wins the race against its request.
    assert 202 in statuses and set(statuses) <= {200, 202}, f"the body was on beta before any open: {statuses}"

    for api, entry in ((b1, e1), (b2, e2)):
        assert token in api.read_until(entry["id"], "fetched")["body"]["text"]
    status = a.delivery(message["id"], "beta.test")
    assert status["fetch_status"] == "fetched"
    assert status["fetch_count"] == 1, f"alpha served beta.test {status['fetch_count']} times"
    assert remote_message_count(beta, [message["id"]]) == 1


# --- Refused federation requests --------------------------------------------------------------


def test_forged_notifications_are_refused(alpha: Instance, beta: Instance, keys) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    rogue = Ed25519PrivateKey.generate()
    real_key_id = keys["alpha.test"][0]
    ids = []
    # A key id alpha does not publish; alpha's real key id with another private key
    # (the same answer whether or not the verifier refetched alpha's keys a moment ago).
    cases = (("alpha.test#not-published", ("unknown_key",)), (real_key_id, ("signature_invalid",)))
    for key_id, codes in cases:
        global_id = uuid.uuid4()
        ids.append(str(global_id))
        body = notification_bytes(sender=a.address, recipients=[b.address], subject="forged", global_id=global_id)
        headers = signed_post(notifications_url(beta), body, (key_id, rogue))
        assert_refused(requests.post(notifications_url(beta), data=body, headers=headers, timeout=30), 401, *codes)
    assert b.inbox() == []
    assert remote_message_count(beta, ids) == 0


def test_mis_signed_notifications_are_refused(alpha: Instance, beta: Instance, keys) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    global_id = uuid.uuid4()
    body = notification_bytes(sender=a.address, recipients=[b.address], subject="original", global_id=global_id)
    headers = signed_post(notifications_url(beta), body, keys["alpha.test"])
    altered = body.replace(b'"subject":"original"', b'"subject":"altered!"')
    assert altered != body

    # Body changed after signing: the Content-Digest no longer matches.
    response = requests.post(notifications_url(beta), data=altered, headers=headers, timeout=30)
    assert_refused(response, 401, "digest_mismatch")
    # Body changed and Content-Digest recomputed: the signature no longer matches.
    redigested = {
        **headers,
        "Content-Digest": "sha-256=:" + base64.b64encode(hashlib.sha256(altered).digest()).decode() + ":",
    }
    response = requests.post(notifications_url(beta), data=altered, headers=redigested, timeout=30)
    assert_refused(response, 401, "signature_invalid")

    assert b.inbox() == []
    assert remote_message_count(beta, [str(global_id)]) == 0


def test_notifications_signed_by_the_wrong_domain_are_refused(alpha: Instance, beta: Instance, keys) -> None:
    (b,) = mailboxes(beta, 1)
    ids = []
    for sender in (f"someone-{unique()}@beta.test", f"someone-{unique()}@gamma.test"):
        global_id = uuid.uuid4()
        ids.append(str(global_id))
        body = notification_bytes(sender=sender, recipients=[b.address], subject="wrong", global_id=global_id)
        headers = signed_post(notifications_url(beta), body, keys["alpha.test"])
        assert_refused(
            requests.post(notifications_url(beta), data=body, headers=headers, timeout=30), 403, "wrong_domain"
        )
    assert b.inbox() == []
    assert remote_message_count(beta, ids) == 0


def test_replays_are_refused_by_another_web_process_and_after_a_restart(alpha: Instance, beta: Instance, keys) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    global_id = uuid.uuid4()
    subject = unique("replayed-")
    body = notification_bytes(sender=a.address, recipients=[b.address], subject=subject, global_id=global_id)
    url = notifications_url(beta)
    headers = signed_post(url, body, keys["alpha.test"])

    original = requests.post(url, data=body, headers=headers, timeout=30)
    assert original.status_code == 200, original.text
    assert original.json()["results"] == [{"address": b.address, "status": "accepted"}]

    # The same bytes, Host header included, sent to a second web process of beta.
    with second_web(beta) as other:
        response = requests.post(
            notifications_url(other), data=body, headers={**headers, "Host": f"127.0.0.1:{beta.port}"}, timeout=30
        )
        assert_refused(response, 401, "replayed")

    beta.stop_web()
    beta.start_web()
    assert_refused(requests.post(url, data=body, headers=headers, timeout=30), 401, "replayed")

    assert [e["subject"] for e in b.inbox()] == [subject]
    assert remote_message_count(beta, [str(global_id)]) == 1


def test_a_third_instance_cannot_fetch(alpha: Instance, beta: Instance, gamma: Instance, keys) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    token = unique("notforgamma")
    message, _subject, _entries = send_and_wait(a, [b], text=f"Only for beta: {token}")
    url = f"{alpha.base_url}/federation/v1/messages/{message['id']}/body"

    def signed_get(domain: str) -> requests.Response:
        key_id, private_key = keys[domain]
        headers = sign(
            method="GET",
            url=url,
            headers={"Accept": "application/json"},
            body=None,
            key_id=key_id,
            private_key=private_key,
        )
        return requests.get(url, headers=headers, timeout=30)

    refused = signed_get("gamma.test")
    assert_refused(refused, 404, "not_found")
    assert token not in refused.text
    # The same request signed by a recipient domain is served: the refusal is about gamma.
    served = signed_get("beta.test")
    assert served.status_code == 200 and token in served.text

    fetchers = shell_json(
        alpha,
        "import json\nfrom outbox.models import BodyFetch\n"
        f"fetches = BodyFetch.objects.filter(message_id={message['id']!r})\n"
        "print(json.dumps(list(fetches.values_list('domain', flat=True))))",
    )
    assert fetchers == ["beta.test"]


def test_body_changed_after_notifying_shows_tampered(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    message, _subject, (entry,) = send_and_wait(a, [b], text="I owe you 100 euros.")
    # Same length, so only the digest can tell.
    alpha.shell(
        "from outbox.models import Message\n"
        f"assert Message.objects.filter(pk={message['id']!r}).update(text='I owe you 900 euros.') == 1"
    )
    opened = b.read_until(entry["id"], "tampered")
    assert opened["body"] is None
    assert "does not match" in opened["last_error"]


# --- Sender unreachable, withdrawn, expired -------------------------------------------------


def test_fetch_is_unavailable_while_sender_is_down_and_recovers_by_itself(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    token = unique("patience")
    _message, _subject, (entry,) = send_and_wait(a, [b], text=f"Worth the wait: {token}")

    alpha.stop_web()
    try:
        status, data = b.open(entry["id"])
        assert status == 202 and data["body"] is None
        wait_for("the entry to show unavailable", lambda: b.listed_state(entry["id"]) == "unavailable")
        status, data = b.open(entry["id"])
        assert (status, data["state"], data["body"]) == (202, "unavailable", None)
        assert data["last_error"] and data["next_attempt_at"]
    finally:
        alpha.start_web()

    # No user action from here on: only the inbox list is read, which opens nothing.
    wait_for("the fetch to complete once alpha is back", lambda: b.listed_state(entry["id"]) == "fetched")
    status, data = b.open(entry["id"])
    assert status == 200 and token in data["body"]["text"]


def test_withdraw_before_anyone_fetched(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    b1, b2 = mailboxes(beta, 2)
    token = unique("oops")
    message, _subject, entries = send_and_wait(a, [b1, b2], text=f"Sent by mistake: {token}")

    a.withdraw(message["id"])
    wait_for(
        "beta to acknowledge the withdrawal", lambda: a.delivery(message["id"], "beta.test")["withdrawal"] == "sent"
    )
    for api, entry in zip((b1, b2), entries, strict=True):
        wait_for(
            f"{api.address} to see withdrawn", lambda api=api, entry=entry: api.listed_state(entry["id"]) == "withdrawn"
        )
        status, data = api.open(entry["id"])
        assert (status, data["state"], data["body"]) == (200, "withdrawn", None)

    status = a.delivery(message["id"], "beta.test")
    assert status["withdrawn_before_fetch"] is True
    assert status["fetch_count"] == 0


def test_withdraw_after_a_colleague_opened(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    reader, other = mailboxes(beta, 2)
    token = unique("toolate")
    message, _subject, (read_entry, unread_entry) = send_and_wait(a, [reader, other], text=f"Second thoughts: {token}")
    assert token in reader.read_until(read_entry["id"], "fetched")["body"]["text"]

    a.withdraw(message["id"])
    wait_for(
        "beta to acknowledge the withdrawal", lambda: a.delivery(message["id"], "beta.test")["withdrawal"] == "sent"
    )
    wait_for("the unopened entry to be withdrawn", lambda: other.listed_state(unread_entry["id"]) == "withdrawn")
    status, data = other.open(unread_entry["id"])
    assert (status, data["state"], data["body"]) == (200, "withdrawn", None)

    status, data = reader.open(read_entry["id"])
    assert status == 200 and data["state"] == "fetched" and token in data["body"]["text"]

    delivery = a.delivery(message["id"], "beta.test")
    assert delivery["withdrawn_before_fetch"] is False
    assert delivery["fetch_count"] == 1


def test_expired_message_shows_expired(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    message, _subject, (entry,) = send_and_wait(a, [b], text="Read me soon.")
    purged = alpha.shell(
        "from datetime import timedelta\nfrom django.utils import timezone\n"
        "from outbox.models import Message\n"
        f"Message.objects.filter(pk={message['id']!r}).update(expires_at=timezone.now() - timedelta(minutes=1))\n"
        f"print(Message.objects.get(pk={message['id']!r}).offer_end().reason)"
    )
    assert purged == "expired"
    opened = b.read_until(entry["id"], "expired")
    assert opened["body"] is None


# --- Rejections, failures, limits ---------------------------------------------------------------


def test_legacy_domain_and_unknown_mailbox_are_rejected_with_reasons(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    unknown = f"nobody-{unique()}@beta.test"
    legacy = f"someone-{unique()}@legacy.invalid"
    subject = unique("mixed-")
    message = a.send(to=[b.address, unknown], cc=[legacy], subject=subject, text="Hello, all of you.")

    def answered() -> dict[str, dict] | None:
        recipients = {r["address"]: r for d in a.message(message["id"])["deliveries"] for r in d["recipients"]}
        return recipients if all(r["status"] != "pending" for r in recipients.values()) else None

    recipients = wait_for("every recipient to be answered", answered)
    assert (recipients[b.address]["status"], recipients[b.address]["reason"]) == ("accepted", "")
    assert (recipients[unknown]["status"], recipients[unknown]["reason"]) == ("rejected", "unknown mailbox")
    assert (recipients[legacy]["status"], recipients[legacy]["reason"]) == ("rejected", "legacy domain")
    assert b.entry_with_subject(subject)["state"] == "notified"


def test_retry_window_running_out_notifies_the_sender(gamma: Instance, beta: Instance) -> None:
    (g,) = mailboxes(gamma, 1)
    (b,) = mailboxes(beta, 1)
    subject = unique("unlucky-")
    beta.stop_web()
    try:
        message = g.send(to=[b.address], subject=subject, text="Nobody is home.")
        delivery = wait_for(
            "gamma to give up on beta",
            lambda: (d := g.delivery(message["id"], "beta.test"))["state"] == "failed" and d,
            timeout=GAMMA_WINDOW_SECONDS + 30,
        )
    finally:
        beta.start_web()

    assert delivery["attempts"] >= 2, "the delivery should have been retried within the window"
    (recipient,) = delivery["recipients"]
    assert recipient["status"] == "rejected" and recipient["reason"].startswith("no answer")

    notice = g.entry_with_subject(f"Undelivered: {subject}")
    status, data = g.open(notice["id"])
    assert status == 200 and data["state"] == "notice"
    assert b.address in data["body"]["text"]
    assert "Reason: no answer" in data["body"]["text"]


def test_rate_limited_sender_honours_retry_after(alpha: Instance, gamma: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (g,) = mailboxes(gamma, 1)
    # gamma counts per calendar minute: send early enough in a minute that
    # every notification lands in the same one, so the last ones are over it.
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)
    started = time.time()
    base = unique("burst-")
    count = GAMMA_RATE_PER_MINUTE + 2
    messages = [a.send(to=[g.address], subject=f"{base}-{i}", text="One of many.") for i in range(count)]

    def held_back() -> dict | None:
        for message in messages:
            delivery = a.delivery(message["id"], "gamma.test")
            if delivery["state"] == "retrying" and "429" in delivery["last_error"]:
                return delivery
        return None

    delivery = wait_for("a notification held back with 429", held_back, timeout=20)
    assert "over its limit" in delivery["last_error"]
    next_minute = (int(started) // 60 + 1) * 60
    next_attempt = datetime.fromisoformat(delivery["next_attempt_at"]).timestamp()
    assert next_attempt >= next_minute, "the sender retried before gamma's Retry-After"

    def all_notified() -> bool:
        return all(a.delivery(m["id"], "gamma.test")["state"] == "notified" for m in messages)

    wait_for("every notification to get through after the limit resets", all_notified, timeout=100, interval=1)
    assert sorted(e["subject"] for e in g.inbox()) == sorted(m["subject"] for m in messages)


# --- Display names -----------------------------------------------------------------------------


def test_the_senders_display_name_reaches_the_recipient_beside_the_address(alpha: Instance, beta: Instance) -> None:
    (a,) = mailboxes(alpha, 1)
    (b,) = mailboxes(beta, 1)
    shell_json(
        alpha,
        "from accounts.models import User\n"
        f"print(User.objects.filter(email={a.address!r}).update(display_name='Zoë <b>Archer</b>'))",
    )
    message, _subject, (entry,) = send_and_wait(a, [b], text="Named.")

    # Listed with the name before anything is fetched: it came in the notification.
    assert (entry["sender"], entry["sender_name"], entry["state"]) == (a.address, "Zoë <b>Archer</b>", "notified")
    opened = b.read_until(entry["id"], "fetched")
    assert opened["sender_name"] == "Zoë <b>Archer</b>"
    # The body the recipient verified carries the same name, under the notified digest.
    stored = shell_json(
        beta,
        "import json\nfrom mailbox.models import RemoteMessage\n"
        f"r = RemoteMessage.objects.get(global_id={message['id']!r})\n"
        "print(json.dumps([r.sender_name, json.loads(bytes(r.content))['from_name']]))",
    )
    assert stored == ["Zoë <b>Archer</b>", "Zoë <b>Archer</b>"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("x" * 101, "longer than 100 characters"), ("Ann\x1b[2J", "contains a control character (U+001B)")],
)
def test_a_bad_display_name_from_a_peer_gets_400_naming_the_field(
    alpha: Instance, beta: Instance, keys, name: str, problem: str
) -> None:
    (b,) = mailboxes(beta, 1)
    global_id = uuid.uuid4()
    data = json.loads(
        notification_bytes(sender="eve@alpha.test", recipients=[b.address], subject="x", global_id=global_id)
    )
    body = json.dumps({**data, "sender_name": name}).encode()
    url = notifications_url(beta)
    response = requests.post(url, data=body, headers=signed_post(url, body, keys["alpha.test"]), timeout=10)

    assert_refused(response, 400, "invalid_payload")
    assert response.json()["field"] == "sender_name"
    assert response.json()["detail"] == f"sender_name: {problem}"
    assert remote_message_count(beta, [str(global_id)]) == 0
