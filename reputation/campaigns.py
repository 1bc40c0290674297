"""Campaigns: the messages of one run, so that reports on some of them judge them all.

Spammers split a run into many messages: personalized subjects, many sender
addresses on one origin, bodies that differ by a name or a number. So a message
new here joins a campaign from what its notification says, before any fetch:

- **the same origin, sender, normalized subject and size**: the subject casefolded,
  every run of digits folded to ``#`` and of whitespace to one space, ``Re:``/``Fwd:``
  dropped; the size in buckets a quarter wide, a neighbouring bucket matching too;
- **or the same origin, subject shape and size, from any sender**: the shape is the
  normalized subject with words mixing letters and digits folded to ``#`` and the
  recipients' own names (the parts of their local parts) folded to ``~``. A shape of
  fewer than three words of three letters or more is too generic to join senders
  ("Re: lunch" from two people at one big provider is not a campaign), so it is kept empty;

within ``PUSHMAIL_CAMPAIGN_WINDOW_DAYS`` [3] of the campaign's first message. That is one
indexed lookup and one insert per new message (:func:`place`).

**After a fetch**, the body's text (its HTML's, for HTML alone) gets a fuzzy fingerprint,
and a message whose fingerprint is within ``TLSH_DISTANCE`` of one in another campaign of
the same origin (within the window) brings its campaign into that one (:func:`fingerprint`):
a personalized run that the subjects did not catch is joined by its text.

TLSH rather than ssdeep: TLSH is a locality-sensitive hash with a distance (near texts get
near digests: two copies of one text that differ by a name and a few numbers are ~40 apart
once the text is normalized as subjects are, unrelated mail 200 and more), made for finding
spam and malware variants, and maintained (``py-tlsh``). ssdeep's context-triggered
piecewise hashes only compare well on inputs of several kilobytes, score short personalized
mails as unrelated, and its bindings need the libfuzzy C library. TLSH itself works poorly
under 50 bytes and answers ``TNULL`` for short or too uniform input: such texts are
fingerprinted instead by the SHA-256 of the text normalized as subjects are (case, digits,
whitespace folded), written ``sha:...``, and join a campaign only on an exact match of that.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import tlsh
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from federation import payloads
from mailbox.models import RemoteMessage
from pushmail_site.jobs import lock, overdue_before

from .models import Campaign, CampaignMessage, SenderReputation, SpamVerdict

TLSH_DISTANCE = 70  # personalized copies of one text are ~50 apart; unrelated mail 200 and more
_FINGERPRINT_CANDIDATES = 500  # the window's most recent fingerprints of the origin compared
_MIN_SHAPE_WORDS = 3

_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|wg)\s*(?:\[\d+\])?\s*:)+", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")
_NAME_PARTS = re.compile(r"[._+\-]+")


def normalize(text: str) -> str:
    """Casefold, fold each run of digits to ``#`` and of whitespace to one space."""
    return _SPACE.sub(" ", _DIGITS.sub("#", text.casefold())).strip()


def subject_key(subject: str) -> str:
    return normalize(_PREFIX.sub("", subject))[:200]


def subject_shape(key: str, recipients: Sequence[str]) -> str:
    """The normalized subject with personal words folded; "" when too generic to join senders by."""
    names = set()
    for address in recipients:
        local = normalize(address.rsplit("@", 1)[0])  # as the subject was
        names.add(local)
        names.update(part for part in _NAME_PARTS.split(local) if len(part) > 1)
    words = []
    for word in key.split(" "):
        bare = word.strip(",.:;!?\"'()[]")
        if bare in names:
            words.append("~")
        elif "#" in bare and bare != "#":
            words.append("#")
        else:
            words.append(word)
    substantial = [word for word in words if len(word) >= 3 and word not in ("~", "#")]
    return " ".join(words)[:200] if len(substantial) >= _MIN_SHAPE_WORDS else ""


def size_bucket(size: int) -> int:
    """Sizes in buckets a quarter wide (1.25 ** n)."""
    return int(math.log(max(size, 1), 1.25))


def _window_start() -> datetime:
    return timezone.now() - timedelta(days=settings.PUSHMAIL_CAMPAIGN_WINDOW_DAYS)


def place(*, remote: RemoteMessage, recipients: Sequence[str] = ()) -> tuple[Campaign, bool]:
    """Put a message new here in its campaign (an open one it matches, or a new one); (it, whether new).

    One indexed lookup and one insert (two for a new campaign). The campaign's verdict, if any,
    comes with it (``campaign.verdict``), for :func:`spam_reason_for_new`.
    """
    key = subject_key(remote.subject)
    shape = subject_shape(key, recipients)
    campaign, created = _campaign_for(remote, key=key, shape=shape, bucket=size_bucket(remote.size))
    CampaignMessage.objects.create(message=remote, campaign=campaign)
    return campaign, created


def join_open_campaign(
    *, remote: RemoteMessage, recipients: Sequence[str] = ()
) -> tuple[str, tuple[bool, bool] | None] | None:
    """:func:`place` for a message whose campaign is open here already (most are), in one statement
    that also reads what :func:`spam_reason_for_new` and ``scores.reason_for_new`` ask: the campaign's
    standing verdict and the sender's reputation. Returns (the verdict's reason or "", the sender's
    ``(spam_filed, allowed)`` or None when it has no row); None, having stored nothing, when no open
    campaign matches (then :func:`place` opens one). The same campaign as :func:`place` would pick.
    """
    key = subject_key(remote.subject)
    shape = subject_shape(key, recipients)
    bucket = size_bucket(remote.size)
    quote = connection.ops.quote_name
    member, campaign = CampaignMessage._meta.db_table, Campaign._meta.db_table
    verdicts, senders = SpamVerdict._meta.db_table, SenderReputation._meta.db_table
    alike = "(c.sender = %s AND c.subject_key = %s)" + (" OR c.subject_shape = %s" if shape else "")
    alike_params = [remote.sender, key] + ([shape] if shape else [])
    adapt = connection.ops.adapt_datetimefield_value
    # INSERT ... SELECT: the lookup of _campaign_for and the membership of place in one round trip;
    # RETURNING reads the verdict and the sender's reputation (scalar subqueries: NULL when no row).
    sql = (
        f"INSERT INTO {quote(member)} (message_id, campaign_id, joined_at, fingerprint, fingerprinted_at) "  # noqa: S608 - names are ours, values bound
        f"SELECT %s, c.id, %s, '', NULL FROM {quote(campaign)} c "
        f"WHERE ({alike}) AND c.origin_domain = %s AND c.first_seen_at >= %s AND c.size_bucket IN (%s, %s, %s) "
        "ORDER BY c.id LIMIT 1 "
        f"RETURNING (SELECT v.reason FROM {quote(verdicts)} v WHERE v.campaign_id = {quote(member)}.campaign_id "
        "AND v.overturned_at IS NULL), "
        f"(SELECT s.spam_filed FROM {quote(senders)} s WHERE s.address = %s), "
        f"(SELECT s.allowed FROM {quote(senders)} s WHERE s.address = %s)"
    )
    sender = remote.sender.lower()
    params = [
        remote.pk,
        adapt(timezone.now()),
        *alike_params,
        remote.origin_domain,
        adapt(_window_start()),
        bucket - 1,
        bucket,
        bucket + 1,
        sender,
        sender,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    reason, spam_filed, allowed = row
    return reason or "", None if spam_filed is None else (bool(spam_filed), bool(allowed))


def _campaign_for(remote: RemoteMessage, *, key: str, shape: str, bucket: int) -> tuple[Campaign, bool]:
    """The open campaign the message matches (with its verdict), or a new one; (it, whether new)."""
    alike = Q(sender=remote.sender, subject_key=key)
    if shape:
        alike |= Q(subject_shape=shape)
    campaign = (
        Campaign.objects.filter(
            alike,
            origin_domain=remote.origin_domain,
            first_seen_at__gte=_window_start(),
            size_bucket__in=[bucket - 1, bucket, bucket + 1],
        )
        .select_related("verdict")
        .order_by("pk")
        .first()
    )
    if campaign is not None:
        return campaign, False
    campaign = Campaign.objects.create(
        origin_domain=remote.origin_domain,
        sender=remote.sender,
        subject_key=key,
        subject_shape=shape,
        size_bucket=bucket,
        local_domain=remote.local_domain,
        first_seen_at=timezone.now(),
    )
    return campaign, True


def place_many(*, remotes: Sequence[RemoteMessage], recipients: Sequence[Sequence[str]]) -> list[tuple[Campaign, bool]]:
    """:func:`place` for several messages new here, in order, as if placed one after another: one lookup
    per campaign (its later messages find it in hand), one insert for all the memberships."""
    known: dict[tuple[str, str, str, str, int], Campaign] = {}
    placed: list[tuple[Campaign, bool]] = []
    for remote, their_recipients in zip(remotes, recipients, strict=True):
        key = subject_key(remote.subject)
        shape = subject_shape(key, their_recipients)
        group = (remote.origin_domain, remote.sender, key, shape, size_bucket(remote.size))
        campaign = known.get(group)
        if campaign is not None:
            placed.append((campaign, False))
            continue
        campaign, created = _campaign_for(remote, key=key, shape=shape, bucket=group[4])
        known[group] = campaign
        placed.append((campaign, created))
    CampaignMessage.objects.bulk_create(
        [
            CampaignMessage(message=remote, campaign=campaign)
            for remote, (campaign, _) in zip(remotes, placed, strict=True)
        ]
    )
    return placed


def spam_reasons_for_new(*, remotes: Sequence[RemoteMessage], recipients: Sequence[Sequence[str]]) -> list[str]:
    """:func:`spam_reason_for_new` for several messages new here (:func:`place_many`)."""
    return [
        _verdict_reason(campaign, created) for campaign, created in place_many(remotes=remotes, recipients=recipients)
    ]


def _verdict_reason(campaign: Campaign, created: bool) -> str:
    if created:
        return ""
    verdict = getattr(campaign, "verdict", None)  # fetched with the lookup
    return verdict.reason if verdict is not None and verdict.overturned_at is None else ""


def spam_reason_for_new(*, remote: RemoteMessage, recipients: Sequence[str] = ()) -> str:
    """The campaign's verdict for a message new here: why it goes straight to Spam, or ""."""
    campaign, created = place(remote=remote, recipients=recipients)
    return _verdict_reason(campaign, created)


def campaign_id_of(remote: RemoteMessage) -> int:
    """The message's campaign, placing it now if it has none (mail that arrived before campaigns)."""
    found = CampaignMessage.objects.filter(message=remote).values_list("campaign_id", flat=True).first()
    return found if found is not None else place(remote=remote)[0].pk


# --- After a fetch: the text's fingerprint --------------------------------------------------


def text_fingerprint(text: str) -> str:
    """TLSH of the normalized text, or ``sha:`` and its SHA-256 when it is too short for TLSH.

    Normalized as subjects are: TLSH counts byte triplets, so on a text of a few hundred bytes
    the changed digits of a personalized copy (amounts, references) would weigh as much as the
    words; folded, two copies of one run are ~40 apart instead of ~200.
    """
    data = normalize(text).encode("utf-8")
    digest = tlsh.hash(data) if len(data) >= 50 else "TNULL"
    if digest and digest != "TNULL":
        return digest
    return "sha:" + hashlib.sha256(data).hexdigest()


def requeue_unfingerprinted(*, limit: int = 500) -> list[int]:
    """Fetched messages still without a fingerprint once the broker had its chance: their ids, to queue again."""
    due = CampaignMessage.objects.filter(
        fingerprinted_at__isnull=True, message__content__isnull=False, message__fetched_at__lte=overdue_before()
    )
    return list(due.order_by("message__fetched_at").values_list("message_id", flat=True)[:limit])


def _text_of(remote: RemoteMessage) -> str:
    body = payloads.parse_body(bytes(remote.content or b""))
    text = body.get("text") or ""
    if not text.strip() and isinstance(body.get("html"), str):
        text = re.sub(r"<[^>]*>", " ", body["html"])
    return str(text)  # the subject was compared before the fetch


def fingerprint(*, remote_id: int) -> tuple[int, int] | None:
    """Fingerprint a fetched message's text; (its campaign, a near campaign to join) when there is one.

    Takes the id; does nothing for a message gone, not fetched, or fingerprinted already.
    reputation.spam.join_by_text merges the two campaigns.
    """
    remote = RemoteMessage.objects.filter(pk=remote_id, content__isnull=False).first()
    if remote is None:
        return None
    campaign_id_of(remote)
    with transaction.atomic():
        member = lock(CampaignMessage.objects.all()).filter(pk=remote_id).first()
        if member is None or member.fingerprinted_at is not None:
            return None
        member.fingerprint = text_fingerprint(_text_of(remote))
        member.fingerprinted_at = timezone.now()
        member.save(update_fields=["fingerprint", "fingerprinted_at"])
        near = _nearest_campaign(member, origin=remote.origin_domain)
    return None if near is None else (member.campaign_id, near)


def _nearest_campaign(member: CampaignMessage, *, origin: str) -> int | None:
    others = CampaignMessage.objects.filter(
        message__origin_domain=origin, campaign__first_seen_at__gte=_window_start()
    ).exclude(campaign_id=member.campaign_id)
    if member.fingerprint.startswith("sha:"):
        return others.filter(fingerprint=member.fingerprint).values_list("campaign_id", flat=True).first()
    candidates = (
        others.exclude(fingerprint="")
        .exclude(fingerprint__startswith="sha:")
        .order_by("-fingerprinted_at")
        .values_list("campaign_id", "fingerprint")[:_FINGERPRINT_CANDIDATES]
    )
    best: tuple[int, int] | None = None
    for campaign_id, digest in candidates:
        distance = tlsh.diff(member.fingerprint, digest)
        if distance <= TLSH_DISTANCE and (best is None or distance < best[0]):
            best = (distance, campaign_id)
    return best[1] if best else None
