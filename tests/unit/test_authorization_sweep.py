"""Authorization sweep: every route that takes an object id answers 404 for someone else's object.

The test walks Django's URL resolver. Every route whose pattern takes a parameter must be
either in ROUTES (which says how to make user A's object for it) or in EXEMPT (with the
reason). User B then asks for A's object with GET and with POST: each answer must be 404
(or 405 when the view does not take that method), and at least one must be a 404. A new
route that takes an id and is in neither table fails the test, so no route escapes the sweep.
Table entries for routes that do not exist (yet) are skipped.

A control makes each 404 meaningful: the same request by A does not answer 404 (A's POST runs
inside a savepoint that is rolled back, so it changes nothing).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import transaction
from django.http import HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, include, path, reverse
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import issue_api_token
from attachments.models import Blob
from federation import payloads
from mailbox.models import AllowedSender, EntryState, FetchState, InboxEntry, Label
from mailsettings.models import Filter
from newsletters.models import Newsletter, Subscription
from outbox.models import Draft, DraftAttachment, Message, MessageAttachment
from tests.factories import (
    InboxEntryFactory,
    MailboxFactory,
    PeerMessageFactory,
    RemoteMessageFactory,
    SentMessageFactory,
)

# --- the walk -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    pattern: str  # the full pattern, e.g. "mail/entry/<int:entry_id>/"
    name: str | None  # namespaced, e.g. "webmail:entry"
    params: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.name or self.pattern


def _params(pattern: Any) -> tuple[str, ...]:
    if isinstance(pattern, RoutePattern):
        return tuple(pattern.converters)
    return tuple(pattern.regex.groupindex)


def walk(resolver: URLResolver, prefix: str = "", namespace: str | None = None, params: tuple = ()) -> Iterator[Route]:
    for item in resolver.url_patterns:
        if isinstance(item, URLResolver):
            inner = ":".join(n for n in (namespace, item.namespace) if n) or None
            yield from walk(item, prefix + str(item.pattern), inner, params + _params(item.pattern))
        elif isinstance(item, URLPattern):
            name = item.name and (f"{namespace}:{item.name}" if namespace else item.name)
            yield Route(prefix + str(item.pattern), name, params + _params(item.pattern))


def routes_with_parameters() -> list[Route]:
    return [route for route in walk(get_resolver()) if route.params]


# --- user A's objects -----------------------------------------------------------------------------


@dataclass
class Owned:
    """One object of each kind, all belonging to user A."""

    user: User
    entry: InboxEntry  # a fetched remote message (text and HTML) with one attachment held here
    message: Message  # a sent message (text and HTML) with one attachment
    draft: Draft
    draft_attachment: DraftAttachment
    label: Label
    token: ApiToken
    authenticator: Any  # an allauth WebAuthn authenticator
    allowed_sender: AllowedSender
    mail_filter: Filter
    newsletter: Newsletter
    subscription: Subscription


def _blob(content: bytes) -> Blob:
    sha256 = hashlib.sha256(content).hexdigest()
    blob = Blob(sha256=sha256, size=len(content))
    blob.file.save(sha256, ContentFile(content), save=False)
    blob.save()
    return blob


def make_owned(user: User) -> Owned:
    from allauth.mfa.models import Authenticator

    blob = _blob(b"minutes of the meeting\n")
    manifest_item = {"name": "minutes.txt", "type": "text/plain", "size": blob.size, "digest": blob.digest}

    peer_message = PeerMessageFactory(to=[user.email], html="<p>Minutes attached.</p>")
    content = peer_message.content()
    remote = RemoteMessageFactory(
        global_id=peer_message.global_id,
        message_id=peer_message.message_id,
        subject=peer_message.subject,
        sender=peer_message.sender,
        local_domain=user.domain.name,
        state=FetchState.FETCHED,
        content=content,
        size=len(content),
        digest=payloads.digest(content),
        attachments=[manifest_item],
    )
    entry = InboxEntryFactory(owner=user, remote=remote, state=EntryState.FETCHED, has_attachments=True)

    message = SentMessageFactory(sender=user, html="<p>Minutes attached.</p>")
    MessageAttachment.objects.create(
        message=message, blob=blob, position=0, name="minutes.txt", content_type="text/plain", size=blob.size
    )
    draft = Draft.objects.create(owner=user, to="carol@peer.test", subject="Unfinished", text="Dear Carol,")
    draft_attachment = DraftAttachment.objects.create(
        draft=draft, blob=blob, name="minutes.txt", content_type="text/plain", size=blob.size
    )
    label = Label.objects.create(owner=user, name="Family")
    issue_api_token(user=user, name="laptop")
    token = ApiToken.objects.filter(user=user).latest("pk")
    authenticator = Authenticator.objects.create(
        user=user, type=Authenticator.Type.WEBAUTHN, data={"name": "Laptop", "credential": {}}
    )
    allowed_sender = AllowedSender.objects.create(owner=user, address="news@peer.test")
    mail_filter = Filter.objects.create(owner=user, from_contains="news@peer.test", mark_read=True)
    newsletter = Newsletter.objects.create(
        owner=user, address=f"list-{user.pk}@{user.domain.name}", name="Family news", slug=f"family-{user.pk}"
    )
    subscription = Subscription.objects.create(
        owner=user, list_address="news@peer.test", state="active", requested_at=timezone.now()
    )
    return Owned(
        user,
        entry,
        message,
        draft,
        draft_attachment,
        label,
        token,
        authenticator,
        allowed_sender,
        mail_filter,
        newsletter,
        subscription,
    )


Kwargs = Callable[[Owned], dict[str, Any]]


def _entry(o: Owned) -> dict[str, Any]:
    return {"entry_id": o.entry.pk}


def _message(o: Owned) -> dict[str, Any]:
    return {"message_id": o.message.pk}


def _draft(o: Owned) -> dict[str, Any]:
    return {"draft_id": o.draft.pk}


def _label(o: Owned) -> dict[str, Any]:
    return {"label_id": o.label.pk}


# Route name -> user A's object for it. Add a line here for every new route that takes an id.
ROUTES: dict[str, Kwargs] = {
    # user API
    "message-detail": _message,
    "message-withdraw": _message,
    "inbox-detail": _entry,
    "inbox-retry": _entry,
    "inbox-spam": _entry,
    "inbox-not-spam": _entry,
    "inbox-attachment": lambda o: {"entry_id": o.entry.pk, "index": 0},
    "inbox-attachment-retry": lambda o: {"entry_id": o.entry.pk, "index": 0},
    # mail lists and actions
    "webmail:entry": _entry,
    "webmail:entry-body": _entry,
    "webmail:entry-action": _entry,
    "webmail:entry-retry": _entry,
    "webmail:label": _label,
    "webmail:label-rename": _label,
    "webmail:label-delete": _label,
    "webmail:sent-message": _message,
    "webmail:sent-action": _message,
    "webmail:sent-withdraw": _message,
    # compose
    "webmail:draft": _draft,
    "webmail:draft-save": _draft,
    "webmail:draft-attach": _draft,
    "webmail:draft-delete": _draft,
    "webmail:draft-send": _draft,
    "webmail:draft-undo": _draft,
    "webmail:draft-status": _draft,
    "webmail:draft-attachment-remove": lambda o: {"draft_id": o.draft.pk, "attachment_id": o.draft_attachment.pk},
    "webmail:reply": _entry,
    "webmail:reply-sent": _message,
    "webmail:forward": _entry,
    # attachments
    "webmail:entry-attachment": lambda o: {"entry_id": o.entry.pk, "index": 0},
    "webmail:entry-attachment-fetch": lambda o: {"entry_id": o.entry.pk, "index": 0},
    "webmail:sent-attachment": lambda o: {"message_id": o.message.pk, "index": 0},
    "webmail:draft-attachment": lambda o: {"draft_id": o.draft.pk, "attachment_id": o.draft_attachment.pk},
    # content
    "webmail:entry-html": _entry,
    "webmail:entry-text": _entry,
    "webmail:entry-eml": _entry,
    "webmail:entry-allow-remote": _entry,
    "webmail:sent-html": _message,
    "webmail:sent-text": _message,
    "webmail:sent-eml": _message,
    # settings
    "webmail:token-revoke": lambda o: {"token_id": o.token.pk},
    "webmail:allowed-sender-remove": lambda o: {"sender_id": o.allowed_sender.pk},
    "webmail:filter-edit": lambda o: {"filter_id": o.mail_filter.pk},
    "webmail:filter-delete": lambda o: {"filter_id": o.mail_filter.pk},
    "webmail:filter-move": lambda o: {"filter_id": o.mail_filter.pk},
    "webmail:newsletter": lambda o: {"newsletter_id": o.newsletter.pk},
    "webmail:subscription-action": lambda o: {"subscription_id": o.subscription.pk},
    "mfa_edit_webauthn": lambda o: {"pk": o.authenticator.pk},
    "mfa_remove_webauthn": lambda o: {"pk": o.authenticator.pk},
}

# Routes that take a parameter but no per-user object, each with the reason.
EXEMPT: dict[str, str] = {
    "wkd-direct": "public by design: the Web Key Directory serves published public keys to anyone",
    "wkd-advanced": "public by design: the Web Key Directory (advanced layout) serves published public keys",
    "wkd-advanced-policy": "public by design: the Web Key Directory's policy file, the same for everyone",
    "federation-keys": "public by design: published public keys, signed by the domain (docs/protocol.md §14)",
    "encryption-correspondent": "the address names a correspondent, not an object; the pin is the user's own row",
    "encryption-accept": "the address names a correspondent; only the user's own pin is looked up",
    "webmail:encryption-export": "the part is secret or public of the user's own key, not an object id",
    "webmail:folder": "the folder is one of a fixed set of names (inbox, archive, ...), not an object",
    "webmail:folder-updates": "the folder is one of a fixed set of names, not an object",
    "federation-body": "server to server: no user session; each request is signed by a peer domain and checked",
    "federation-attachment": "server to server: signed by a peer domain, same access rule as the body",
    "newsletter-page": "public by design: a list's page (archive, subscribe form), named by its public slug",
    "newsletter-feed": "public by design: a list's Atom feed, named by its public slug",
    "newsletter-confirm": "no session: the signed, expiring token in the URL is the credential (double opt-in by mail)",
    "newsletter-unsubscribe": "no session: the random token in the URL is the credential (RFC 8058 one-click)",
    "webmail:new-draft-save": "a key names a draft of the signed-in user only; another's key makes one's own",
    "webmail:new-draft-attach": "the key names a draft of the signed-in user only, like new-draft-save",
    "webmail:new-draft-send": "the key names a draft of the signed-in user only, like new-draft-save",
    "webmail:new-draft-delete": "the key names a draft of the signed-in user only, like new-draft-save",
    "account_confirm_email": "allauth: the secret key in the URL is the credential, not an object id",
    "account_reset_password_from_key": "allauth: the secret key in the URL is the credential, not an object id",
}
# Whole URL prefixes left out, with the reason.
EXEMPT_PREFIXES: dict[str, str] = {
    "admin/": "Django admin: staff only, guarded by model permissions, not by object ownership",
}


def exemption(route: Route) -> str | None:
    if route.key in EXEMPT:
        return EXEMPT[route.key]
    return next((why for prefix, why in EXEMPT_PREFIXES.items() if route.pattern.startswith(prefix)), None)


# --- the tests ----------------------------------------------------------------------------------------


def uncovered_routes() -> list[str]:
    return [
        f"{route.key}  ({route.pattern})"
        for route in routes_with_parameters()
        if route.key not in ROUTES and exemption(route) is None
    ]


def test_every_route_that_takes_an_id_is_swept_or_exempt_with_a_reason() -> None:
    uncovered = uncovered_routes()
    assert not uncovered, (
        "These routes take an id but are neither in ROUTES (tests/unit/test_authorization_sweep.py) nor "
        "exempt with a reason:\n  " + "\n  ".join(uncovered)
    )


def test_the_walk_finds_the_contract_routes() -> None:
    """The walk itself works: it sees routes from the user API (and the webmail once it is routed)."""
    keys = {route.key for route in routes_with_parameters()}
    assert {"message-detail", "inbox-detail"} <= keys


# A URLconf with one route more than the project's: the sweep must notice it.
urlpatterns = [
    path("mail/secret/<int:thing_id>/", lambda request, thing_id: HttpResponse("mine"), name="unswept-route"),
    path("", include("pushmail_site.urls")),
]


def test_a_new_route_that_takes_an_id_is_not_let_through(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__
    assert [line.split()[0] for line in uncovered_routes()] == ["unswept-route"]


def _client(user: User) -> Client:
    client = Client(HTTP_AUTHORIZATION=f"Bearer {issue_api_token(user=user, name='sweep')}")
    client.force_login(user)
    # As after entering the password again just now, so allauth's "reauthenticate first" pages do not redirect.
    from allauth.account.internal.flows import login as allauth_login
    from allauth.account.internal.userkit import user_id_to_str

    session = client.session
    session[allauth_login._AUTHENTICATION_METHODS_USER_SESSION_KEY] = user_id_to_str(user)
    session[allauth_login.AUTHENTICATION_METHODS_SESSION_KEY] = [
        {"method": "password", "at": time.time(), "email": user.email, "reauthenticated": True}
    ]
    session.save()
    return client


@pytest.fixture
def owner(db: None, net: Any) -> Owned:
    return make_owned(MailboxFactory())


@pytest.fixture
def intruder(owner: Owned) -> User:
    return MailboxFactory(domain=owner.user.domain)


@pytest.mark.django_db
def test_another_users_object_is_a_404_on_every_route(owner: Owned, intruder: User) -> None:
    present = {route.key: route for route in routes_with_parameters()}
    swept = [name for name in ROUTES if name in present]
    assert swept, "no route of the table exists"

    other = _client(intruder)
    leaks: list[str] = []
    for name in swept:
        url = reverse(name, kwargs=ROUTES[name](owner))
        answers = {}
        for method in ("get", "post"):
            with transaction.atomic():
                answers[method] = getattr(other, method)(url).status_code
                transaction.set_rollback(True)
        if any(code not in (404, 405) for code in answers.values()) or 404 not in answers.values():
            leaks.append(f"{name} {url}: GET {answers['get']}, POST {answers['post']}")
    assert not leaks, "another user's object was not a 404:\n  " + "\n  ".join(leaks)

    # Control: the owner reaches each of these objects (so the 404s above are about ownership).
    mine = _client(owner.user)
    unreachable: list[str] = []
    for name in swept:
        url = reverse(name, kwargs=ROUTES[name](owner))
        answers = {}
        for method in ("get", "post"):
            with transaction.atomic():
                answers[method] = getattr(mine, method)(url).status_code
                transaction.set_rollback(True)
        if all(code in (404, 405) for code in answers.values()):
            unreachable.append(f"{name} {url}: GET {answers['get']}, POST {answers['post']}")
    assert not unreachable, "the owner's own object was not found either (the table makes it wrong):\n  " + (
        "\n  ".join(unreachable)
    )


@pytest.mark.django_db
def test_ids_in_form_bodies_only_reach_the_users_own_objects(owner: Owned, intruder: User) -> None:
    """Bulk actions take ids in the POST body, where the walk above cannot see them."""
    present = {route.key for route in routes_with_parameters()} | {
        route.key for route in walk(get_resolver()) if not route.params
    }
    other = _client(intruder)
    label = f"label:{owner.label.pk}"
    if "webmail:bulk-action" in present:
        for action in ("archive", "trash", "spam", "delete", "read", "star", label):
            other.post(reverse("webmail:bulk-action"), {"ids": [owner.entry.pk], "action": action})
    if "webmail:sent-bulk" in present:
        for action in ("trash", "delete", "star"):
            other.post(reverse("webmail:sent-bulk"), {"ids": [str(owner.message.pk)], "action": action})
    if "webmail:entry-action" in present:
        # The intruder's own message, with the owner's label: the label is not theirs to use.
        own = InboxEntryFactory(owner=intruder)
        other.post(reverse("webmail:entry-action", kwargs={"entry_id": own.pk}), {"action": label})
        assert not own.labels.exists()

    entry = InboxEntry.objects.get(pk=owner.entry.pk)
    assert (entry.folder, entry.read, entry.starred, entry.trashed_at) == ("inbox", False, False, None)
    assert not entry.labels.exists()
    message = Message.objects.get(pk=owner.message.pk)
    assert (message.sender_folder, message.sender_starred, message.sender_trashed_at) == ("sent", False, None)
