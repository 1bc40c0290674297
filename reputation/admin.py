from __future__ import annotations

import re
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.admin_scope import DomainScopedAdmin, DomainScopedInline, is_domain_admin
from accounts.http import AuthedRequest
from accounts.models import User
from federation import discovery
from federation.models import SignedRequest
from mailbox.models import RemoteMessage

from . import reachability, scores
from .abuse import DEFAULT_LIMIT, NoEvidence, abuse_report, evidence_for_messages, evidence_of_origin
from .models import (
    Campaign,
    CampaignMessage,
    ContentCheck,
    DecisionKind,
    OriginPolicy,
    OriginReputation,
    Read,
    ReputationDecision,
    SenderReputation,
    SpamReport,
    SpamVerdict,
)
from .services import forget_policy, overturn_verdict


@admin.register(OriginPolicy)
class OriginPolicyAdmin(admin.ModelAdmin):
    """Peers: block a sending domain, or cap how many notifications it may send per minute."""

    list_display = ["domain", "blocked", "rate_per_minute", "reputation", "note", "updated_at"]
    list_editable = ["blocked", "rate_per_minute"]
    list_filter = ["blocked"]
    search_fields = ["domain", "note"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        scored = OriginReputation.objects.filter(domain=OuterRef("domain"))
        return super().get_queryset(request).annotate(reputation_score=Subquery(scored.values("score")[:1]))

    @admin.display(description="score (see Origin reputations)", ordering="reputation_score")
    def reputation(self, obj: Any) -> str:
        return "-" if obj.reputation_score is None else f"{obj.reputation_score:.2f}"

    def save_model(self, request: HttpRequest, obj: OriginPolicy, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Other web processes see the change within seconds; this one at once.
        forget_policy(obj.domain)

    def delete_model(self, request: HttpRequest, obj: OriginPolicy) -> None:
        super().delete_model(request, obj)
        forget_policy(obj.domain)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[OriginPolicy]) -> None:
        domains = list(queryset.values_list("domain", flat=True))
        super().delete_queryset(request, queryset)
        for domain in domains:
            forget_policy(domain)


@admin.register(Read)
class ReadAdmin(admin.ModelAdmin):
    list_display = ["message", "reader", "read_at"]
    search_fields = ["reader__email", "message__subject", "message__sender"]
    date_hierarchy = "read_at"
    list_select_related = ["message", "reader"]
    raw_id_fields = ["message", "reader"]


@admin.register(SpamVerdict)
class SpamVerdictAdmin(DomainScopedAdmin):
    """Messages this instance judged spam from its users' reports; overturning one puts the hidden copies back.

    A domain admin sees the verdicts on mail to their domain and may overturn them.
    """

    list_display = [
        "message",
        "campaign",
        "reason",
        "reports",
        "weight",
        "readers",
        "hidden",
        "judged_at",
        "overturned_at",
    ]
    list_filter = ["overturned_at"]
    search_fields = ["message__sender", "message__subject", "message__origin_domain"]
    list_select_related = ["message", "campaign"]
    raw_id_fields = ["message", "overturned_by"]
    readonly_fields = [
        "message",
        "campaign",
        "reports",
        "weight",
        "readers",
        "reason",
        "hidden",
        "judged_at",
        "overturned_at",
        "overturned_by",
    ]
    actions = ["overturn"]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(message__local_domain=request.user.domain.name)

    @admin.action(description="Overturn: not spam, put every hidden copy back")
    def overturn(self, request: HttpRequest, queryset: QuerySet[SpamVerdict]) -> None:
        user = request.user if isinstance(request.user, User) else None
        restored = sum(overturn_verdict(verdict_id=pk, by=user) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Overturned; {restored} hidden copies are back where they were.")


@admin.register(SpamReport)
class SpamReportAdmin(admin.ModelAdmin):
    list_display = ["message", "reporter", "spam", "reported_at"]
    list_filter = ["spam"]
    list_select_related = ["message", "reporter"]
    raw_id_fields = ["message", "reporter"]


@admin.register(ContentCheck)
class ContentCheckAdmin(DomainScopedAdmin):
    """What the content filter (rspamd) said about each fetched message, and what this instance did with it.

    Checks show rspamd's score, action and the rules that matched; a decision names the verdict it led
    to (overturned, like any verdict, under "Spam verdicts"). Lessons are the reports rspamd learned from.
    A domain admin sees the rows for mail to their domain.
    """

    list_display = ["message", "kind", "state", "score", "required_score", "action", "top_symbols", "decision"]
    list_filter = ["kind", "state", "action", ("decision", admin.EmptyFieldListFilter)]
    search_fields = ["message__sender", "message__subject", "message__origin_domain", "decision"]
    list_select_related = ["message"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "message",
        "kind",
        "state",
        "score",
        "required_score",
        "action",
        "symbols",
        "decision",
        "attempts",
        "next_attempt_at",
        "last_error",
        "created_at",
        "done_at",
    ]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(message__local_domain=request.user.domain.name)

    @admin.display(description="Rules that matched")
    def top_symbols(self, obj: ContentCheck) -> str:
        """The rules that weighed most, strongest first."""
        weighed = sorted((obj.symbols or {}).items(), key=lambda item: -abs(float(item[1] or 0)))
        return ", ".join(f"{name} {float(score):+g}" for name, score in weighed[:5] if score)


# --- Abuse reports (ARF, RFC 5965) from the signed notifications kept as evidence ------------------


def _evidence_scope(request: HttpRequest, rows: QuerySet[SignedRequest]) -> QuerySet[SignedRequest]:
    """A domain admin reports what reached their domain (and the withdrawals of those messages)."""
    if not is_domain_admin(request):
        return rows
    domain = request.user.domain.name
    theirs = SignedRequest.objects.filter(
        local_domain=domain, origin_domain=OuterRef("origin_domain"), global_id=OuterRef("global_id")
    )
    return rows.filter(Q(local_domain=domain) | (Q(kind=SignedRequest.Kind.WITHDRAWAL) & Q(Exists(theirs))))


def _abuse_report_download(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, rows: QuerySet[SignedRequest], name: str
) -> HttpResponse | None:
    """The report as a download, or back to the list with a message when nothing was kept."""
    user = request.user if isinstance(request.user, User) else None
    try:
        content = abuse_report(notifications=_evidence_scope(request, rows), reporter=user.email if user else "")
    except NoEvidence as exc:
        modeladmin.message_user(request, f"No abuse report: {exc}.", level=messages.WARNING)
        return None
    response = HttpResponse(content, content_type="message/rfc822")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = (
        f'attachment; filename="abuse-report-{re.sub(r"[^a-z0-9.-]+", "-", name.lower())}-{stamp}.eml"'
    )
    return response


@admin.register(SignedRequest)
class SignedRequestAdmin(DomainScopedAdmin):
    """Notifications and withdrawals kept exactly as received, signature and all, for PUSHMAIL_EVIDENCE_DAYS.

    Read-only. Select rows (or search an origin) and export them as an abuse report.
    """

    list_display = ["received_at", "kind", "origin_domain", "sender", "global_id", "local_domain", "key_id"]
    list_filter = ["kind"]
    search_fields = ["=origin_domain", "=sender"]
    date_hierarchy = "received_at"
    exclude = ["body"]
    readonly_fields = [
        "kind",
        "origin_domain",
        "global_id",
        "sender",
        "local_domain",
        "received_at",
        "source_ip",
        "method",
        "authority",
        "path",
        "query",
        "content_digest",
        "signature_input",
        "signature",
        "headers",
        "key_id",
        "public_key",
    ]
    actions = ["export_selected", "export_origins"]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return _evidence_scope(request, queryset)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Export an abuse report (ARF) of the selected signed requests")
    def export_selected(self, request: HttpRequest, queryset: QuerySet[SignedRequest]) -> HttpResponse | None:
        origins = sorted(set(queryset.values_list("origin_domain", flat=True)))
        return _abuse_report_download(self, request, queryset, "_".join(origins[:3]))

    @admin.action(description=f"Export an abuse report (ARF) of their origins: newest {DEFAULT_LIMIT:,} each")
    def export_origins(self, request: HttpRequest, queryset: QuerySet[SignedRequest]) -> HttpResponse | None:
        origins = sorted(set(queryset.values_list("origin_domain", flat=True)))
        return _abuse_report_download(self, request, _newest_of(request, origins), "_".join(origins[:3]))


def _newest_of(request: HttpRequest, origins: list[str]) -> QuerySet[SignedRequest]:
    """The newest DEFAULT_LIMIT kept notifications of each origin that this admin may report."""
    visible = _evidence_scope(request, SignedRequest.objects.all())
    chosen = Q(pk__in=[])
    for origin in origins:
        chosen |= Q(pk__in=evidence_of_origin(origin, among=visible).values("pk"))
    return SignedRequest.objects.filter(chosen)


@admin.action(description=f"Export an abuse report (ARF): newest {DEFAULT_LIMIT:,} signed notifications of each")
def export_origin_abuse_report(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[OriginPolicy]
) -> HttpResponse | None:
    origins = sorted(queryset.values_list("domain", flat=True))
    return _abuse_report_download(modeladmin, request, _newest_of(request, origins), "_".join(origins[:3]))


@admin.action(description="Export an abuse report (ARF) with the signed notifications of these messages")
def export_verdict_abuse_report(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[SpamVerdict]
) -> HttpResponse | None:
    judged = RemoteMessage.objects.filter(pk__in=queryset.values("message_id"))
    origins = sorted(set(judged.values_list("origin_domain", flat=True)))
    return _abuse_report_download(modeladmin, request, evidence_for_messages(judged), "_".join(origins[:3]))


# Added here, after the classes, so the export stays one block beside the other admins' own actions.
OriginPolicyAdmin.actions = [*(OriginPolicyAdmin.actions or []), export_origin_abuse_report]  # type: ignore[misc]
SpamVerdictAdmin.actions = [*SpamVerdictAdmin.actions, export_verdict_abuse_report]


class CampaignMessageInline(DomainScopedInline):
    model = CampaignMessage
    fields = ("message", "sender", "subject", "received_at", "spam_verdict", "fingerprint")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[CampaignMessage]:
        return super().get_queryset(request).select_related("message")

    @admin.display(description="sender")
    def sender(self, obj: CampaignMessage) -> str:
        return obj.message.sender

    @admin.display(description="subject")
    def subject(self, obj: CampaignMessage) -> str:
        return obj.message.subject

    @admin.display(description="received")
    def received_at(self, obj: CampaignMessage) -> Any:
        return obj.message.received_at

    @admin.display(description="judged spam")
    def spam_verdict(self, obj: CampaignMessage) -> str:
        return obj.message.spam_verdict


# --- Reputation of origins and senders: what the scores decided, and how an admin reverses it ---


def _acting_user(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


_DECISION_FIELDS = ("kind", "sender", "reason", "score", "made_at", "ended_at", "reversed_by")
_ORIGIN_FIELDS = (
    "domain",
    "score",
    "pinned_score",
    "reads",
    "replies",
    "spam_reports",
    "spam_weight",
    "not_spam",
    "not_spam_weight",
    "unsubscribes",
    "outages",
    "downtime_seconds",
    "last_reached_at",
    "unreachable_since",
    "gone",
    "users_notified",
    "spam_filed",
    "refused",
    "reports_at_lift",
    "updated_at",
)
_SENDER_FIELDS = (
    "address", "domain", "score", "pinned_score", "reads", "replies", "spam_reports", "spam_weight", "not_spam",
    "not_spam_weight", "unsubscribes", "spam_filed", "allowed", "reports_at_lift", "updated_at",
)  # fmt: skip


class InstanceWideReputationAdmin(DomainScopedAdmin):
    """Origins and senders are instance-wide: every domain admin sees them all (their users' mail is
    what the scores are made of) and may reverse what the scores decided automatically. Blocking an
    origin stays with superusers, as the peers' policies do."""

    domain_admin_can_change = True  # the admin's pinned score; the rest is read-only

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False  # rows come from mail; an admin acts on them

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # "reset" starts one afresh

    def has_block_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)


class DecisionInline(admin.TabularInline):
    model = ReputationDecision
    fk_name = "origin"
    extra = 0
    can_delete = False
    fields = readonly_fields = _DECISION_FIELDS
    ordering = ["-made_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_domain_admin(request) or super().has_view_permission(request, obj)


@admin.register(Campaign)
class CampaignAdmin(DomainScopedAdmin):
    """Runs of alike messages (reputation.campaigns): their messages, reports and state; overturn a verdict.

    A domain admin sees the campaigns of mail to their domain. Overturning puts every copy the
    campaign's verdict hid back where it was, and its new messages go to the Inbox again.
    """

    list_display = [
        "__str__",
        "origin_domain",
        "sender",
        "messages",
        "spam_reports",
        "not_spam",
        "state",
        "first_seen_at",
    ]
    list_filter = ["verdict__overturned_at"]
    search_fields = ["origin_domain", "sender", "subject_key", "members__message__sender"]
    readonly_fields = [
        "origin_domain",
        "sender",
        "subject_key",
        "subject_shape",
        "size_bucket",
        "local_domain",
        "first_seen_at",
        "state",
    ]
    inlines = [CampaignMessageInline]
    actions = ["overturn"]

    def scope(self, request: AuthedRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(local_domain=request.user.domain.name)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        reports = "members__message__spam_reports"
        return (
            super()
            .get_queryset(request)
            .select_related("verdict")
            .annotate(
                message_count=Count("members", distinct=True),
                spam_count=Count(f"{reports}__reporter", filter=Q(**{f"{reports}__spam": True}), distinct=True),
                not_spam_count=Count(f"{reports}__reporter", filter=Q(**{f"{reports}__spam": False}), distinct=True),
            )
        )

    @admin.display(description="messages", ordering="message_count")
    def messages(self, obj: Any) -> int:
        return int(obj.message_count)

    @admin.display(description="spam reports", ordering="spam_count")
    def spam_reports(self, obj: Any) -> int:
        return int(obj.spam_count)

    @admin.display(description="not spam", ordering="not_spam_count")
    def not_spam(self, obj: Any) -> int:
        return int(obj.not_spam_count)

    @admin.display(description="state")
    def state(self, obj: Campaign) -> str:
        verdict = getattr(obj, "verdict", None)
        if verdict is None:
            return "open"
        if verdict.overturned_at is not None:
            return f"overturned ({verdict.reason})"
        return f"judged spam: {verdict.reason}; {verdict.hidden} copies hidden"

    @admin.action(description="Overturn: not spam, put every hidden copy of its messages back")
    def overturn(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        user = request.user if isinstance(request.user, User) else None
        verdicts = SpamVerdict.objects.filter(campaign__in=queryset.values("pk"), overturned_at__isnull=True)
        restored = sum(overturn_verdict(verdict_id=pk, by=user) for pk in verdicts.values_list("pk", flat=True))
        self.message_user(request, f"Overturned; {restored} hidden copies are back where they were.")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_domain_admin(request) or super().has_view_permission(request, obj)


@admin.register(OriginReputation)
class OriginReputationAdmin(InstanceWideReputationAdmin):
    """Origins, the peers this instance knows: where they are reached, the key they last signed with and
    when they last sent, their score and what it is made of, whether they answer, the admin's policy,
    and the decisions the scores made (below, with their reasons)."""

    list_display = [
        "domain",
        "api_url",
        "last_key",
        "last_seen_at",
        "score_shown",
        "reads",
        "replies",
        "spam_reports",
        "not_spam",
        "standing",
        "policy",
        "last_reached_at",
        "unreachable_since",
        "gone",
        "users_notified",
    ]
    list_filter = ["refused", "spam_filed", "gone"]
    search_fields = ["domain"]
    ordering = ["score", "domain"]
    fields = _ORIGIN_FIELDS
    readonly_fields = tuple(name for name in _ORIGIN_FIELDS if name != "pinned_score")
    inlines = [DecisionInline]
    actions = ["lift", "reset", "block", "unblock"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        policies = OriginPolicy.objects.filter(domain=OuterRef("domain"))
        signed = SignedRequest.objects.filter(origin_domain=OuterRef("domain")).order_by("-received_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                policy_blocked=Subquery(policies.values("blocked")[:1]),
                policy_rate=Subquery(policies.values("rate_per_minute")[:1]),
                signed_key_id=Subquery(signed.values("key_id")[:1]),
                signed_public_key=Subquery(signed.values("public_key")[:1]),
                signed_at=Subquery(signed.values("received_at")[:1]),
            )
        )

    @admin.display(description="API URL")
    def api_url(self, obj: OriginReputation) -> str:
        return discovery.base_url_for(obj.domain)

    @admin.display(description="last signing key")
    def last_key(self, obj: Any) -> str:
        # From the signed requests kept as evidence (PUSHMAIL_EVIDENCE_DAYS): none once they age out.
        if not obj.signed_key_id:
            return "-"
        return f"{obj.signed_key_id} ({obj.signed_public_key})"

    @admin.display(description="last sent", ordering="signed_at")
    def last_seen_at(self, obj: Any) -> Any:
        return obj.signed_at or "-"

    @admin.display(description="score", ordering="score")
    def score_shown(self, obj: OriginReputation) -> str:
        if obj.pinned_score is not None:
            return f"{obj.pinned_score:.2f} (pinned; computed {obj.score:.2f})"
        return f"{obj.score:.2f}"

    @admin.display(description="automatic decisions")
    def standing(self, obj: OriginReputation) -> str:
        said = [
            text
            for flag, text in (
                (obj.refused, "refused"),
                (obj.spam_filed, "new mail to Spam, rate lowered"),
                (obj.gone, "gone"),
            )
            if flag
        ]
        return "; ".join(said) or "-"

    @admin.display(description="policy")
    def policy(self, obj: Any) -> str:
        if obj.policy_blocked:
            return "blocked"
        if obj.policy_rate:
            return f"{obj.policy_rate}/min (set by an admin)"
        if obj.spam_filed:
            return f"{scores.lowered_rate()}/min (lowered)"
        return f"{scores.rate_for(scores.origin_counters(obj))}/min (earned)"

    def save_model(self, request: HttpRequest, obj: OriginReputation, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        scores.rescore_origin(obj.domain)  # a pinned score decides at once

    @admin.action(description="Lift refusal and Spam filing (they return only with new reports)")
    def lift(self, request: HttpRequest, queryset: QuerySet[OriginReputation]) -> None:
        user = _acting_user(request)
        lifted = sum(scores.lift_origin(origin_id=pk, by=user) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Lifted the automatic decisions on {lifted} origins.")

    @admin.action(description="Reset the score (start afresh, at the new-origin rate)")
    def reset(self, request: HttpRequest, queryset: QuerySet[OriginReputation]) -> None:
        user = _acting_user(request)
        pks = list(queryset.values_list("pk", flat=True))
        for pk in pks:
            scores.reset_origin(origin_id=pk, by=user)
        self.message_user(request, f"Reset {len(pks)} origins.")

    @admin.action(description="Block: refuse every notification", permissions=["block"])
    def block(self, request: HttpRequest, queryset: QuerySet[OriginReputation]) -> None:
        self._set_blocked(request, queryset, blocked=True)

    @admin.action(description="Unblock", permissions=["block"])
    def unblock(self, request: HttpRequest, queryset: QuerySet[OriginReputation]) -> None:
        self._set_blocked(request, queryset, blocked=False)

    def _set_blocked(self, request: HttpRequest, queryset: QuerySet[OriginReputation], *, blocked: bool) -> None:
        domains = list(queryset.values_list("domain", flat=True))
        for domain in domains:
            OriginPolicy.objects.update_or_create(domain=domain, defaults={"blocked": blocked})
            forget_policy(domain)
        self.message_user(request, f"{'Blocked' if blocked else 'Unblocked'} {', '.join(domains)}.")


@admin.register(SenderReputation)
class SenderReputationAdmin(InstanceWideReputationAdmin):
    """Senders: their score; allowing one keeps its mail out of Spam whatever the scores say."""

    list_display = ["address", "score", "pinned_score", "reads", "replies", "spam_reports", "not_spam", "unsubscribes"]
    list_display += ["spam_filed", "allowed"]
    list_filter = ["spam_filed", "allowed"]
    search_fields = ["address", "domain"]
    ordering = ["score", "address"]
    fields = _SENDER_FIELDS
    readonly_fields = tuple(name for name in _SENDER_FIELDS if name != "pinned_score")
    actions = ["allow", "stop_allowing", "reset"]

    def save_model(self, request: HttpRequest, obj: SenderReputation, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        scores.rescore_sender(obj.address)

    @admin.action(description="Allow: never file this sender's mail to Spam automatically")
    def allow(self, request: HttpRequest, queryset: QuerySet[SenderReputation]) -> None:
        self._allow(request, queryset, allowed=True)

    @admin.action(description="Stop allowing")
    def stop_allowing(self, request: HttpRequest, queryset: QuerySet[SenderReputation]) -> None:
        self._allow(request, queryset, allowed=False)

    def _allow(self, request: HttpRequest, queryset: QuerySet[SenderReputation], *, allowed: bool) -> None:
        user = _acting_user(request)
        pks = list(queryset.values_list("pk", flat=True))
        for pk in pks:
            scores.allow_sender(sender_id=pk, allowed=allowed, by=user)
            if not allowed:
                scores.rescore_sender(SenderReputation.objects.get(pk=pk).address)
        self.message_user(request, f"{'Allowed' if allowed else 'No longer allowed'}: {len(pks)} senders.")

    @admin.action(description="Reset the score")
    def reset(self, request: HttpRequest, queryset: QuerySet[SenderReputation]) -> None:
        user = _acting_user(request)
        pks = list(queryset.values_list("pk", flat=True))
        for pk in pks:
            scores.reset_sender(sender_id=pk, by=user)
        self.message_user(request, f"Reset {len(pks)} senders.")


@admin.register(ReputationDecision)
class ReputationDecisionAdmin(InstanceWideReputationAdmin):
    """Every decision the scores made on their own, with its reason; reversing one lifts it."""

    list_display = ["made_at", "kind", "origin", "sender", "reason", "score", "ended_at", "reversed_by"]
    list_filter = ["kind", ("ended_at", admin.EmptyFieldListFilter)]
    search_fields = ["origin__domain", "sender__address", "reason"]
    list_select_related = ["origin", "sender", "reversed_by"]
    readonly_fields = ["origin", "sender", "kind", "reason", "score", "made_at", "ended_at", "reversed_by"]
    actions = ["reverse"]

    @admin.action(description="Reverse: lift the refusal or Spam filing, allow the sender, clear the flag")
    def reverse(self, request: HttpRequest, queryset: QuerySet[ReputationDecision]) -> None:
        user = _acting_user(request)
        count = 0
        for decision in queryset.filter(ended_at__isnull=True).select_related("origin", "sender"):
            count += 1
            if decision.sender_id is not None:
                scores.allow_sender(sender_id=decision.sender_id, allowed=True, by=user)
            elif decision.kind == DecisionKind.GONE:
                reachability.clear_gone(origin_id=decision.origin_id, by=user)
            else:
                scores.lift_origin(origin_id=decision.origin_id, by=user)
        self.message_user(request, f"Reversed {count} decisions.")


@admin.action(description="Export an abuse report (ARF) with the signed notifications of the campaigns' messages")
def export_campaign_abuse_report(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Campaign]
) -> HttpResponse | None:
    members = RemoteMessage.objects.filter(campaign_link__campaign__in=queryset)
    origins = sorted(set(queryset.values_list("origin_domain", flat=True)))
    return _abuse_report_download(modeladmin, request, evidence_for_messages(members), "_".join(origins[:3]))


# The same exports on the campaigns and on the origins' reputation pages (which domain admins see).
CampaignAdmin.actions = [*CampaignAdmin.actions, export_campaign_abuse_report]
OriginReputationAdmin.actions = [*OriginReputationAdmin.actions, export_origin_abuse_report]
