"""Search: the user's mail matching words and filters, newest first, 50 to a page."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch, QuerySet
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.http import AuthedRequest
from accounts.models import User
from mailbox import search
from mailbox.models import Folder, InboxEntry, Label
from mailbox.selectors import body_at_sender
from webmail.lists import with_total_size

if TYPE_CHECKING:
    from webmail.rows import ListedEntry

SENT = "sent"  # the user's sent messages, searched apart from the inbox folders


class SearchForm(forms.Form):
    q = forms.CharField(label="Search mail", required=False, strip=True)
    folder = forms.ChoiceField(
        label="In folder", required=False, choices=[("", "Any folder"), *Folder.choices, (SENT, "Sent")], initial=""
    )
    sender = forms.CharField(label="From", required=False, max_length=320, strip=True)
    has_attachment = forms.BooleanField(
        label="Has attachment", required=False, widget=forms.CheckboxInput(attrs={"value": "1"})
    )
    after = forms.DateField(label="After", required=False, input_formats=["%Y-%m-%d"])
    before = forms.DateField(label="Before", required=False, input_formats=["%Y-%m-%d"])

    error_messages = {
        "date": "Enter a date as YYYY-MM-DD, for example 2026-03-31.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("after", "before"):
            self.fields[name].error_messages["invalid"] = self.error_messages["date"]
            self.fields[name].widget.input_type = "date"
            self.fields[name].widget.attrs["placeholder"] = "YYYY-MM-DD"  # where there is no date picker
        self.fields["folder"].error_messages["invalid_choice"] = "Choose a folder from the list."
        self.fields["sender"].error_messages["max_length"] = "The sender is too long: at most 320 characters."

    def clean_q(self) -> search.Query:
        try:
            return search.parse_query(self.cleaned_data["q"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        after, before = data.get("after"), data.get("before")
        if isinstance(after, date) and isinstance(before, date) and after > before:
            raise forms.ValidationError("“After” is later than “Before”: no message can match both dates.")
        return data

    def has_criteria(self) -> bool:
        data = self.cleaned_data
        return bool(
            data["q"] or data["sender"] or data["folder"] or data["has_attachment"] or data["after"] or data["before"]
        )


def _with_sender_names(entries: list[InboxEntry]) -> None:
    """What a row shows beyond the entry: senders' display names (one query), cursor, body still away."""
    addresses = {entry.sender for entry in entries}
    names = dict(User.objects.filter(email__in=addresses).exclude(display_name="").values_list("email", "display_name"))
    for entry in cast("list[ListedEntry]", entries):  # the same objects, given the attributes below
        entry.sender_name = names.get(entry.sender) or entry.sender_name  # a mailbox here: its name now
        entry.cursor = str(search.Cursor(moment=entry.received_at, key=entry.pk))
        entry.at_sender = body_at_sender(entry)


@require_GET
@login_required
def search_view(request: AuthedRequest) -> HttpResponse:
    form = SearchForm(request.GET or None)
    page: search.Page | None = None
    cursor_error = ""
    if form.is_bound and form.is_valid() and form.has_criteria():
        data = form.cleaned_data
        cursor = None
        if raw_cursor := request.GET.get("cursor", ""):
            try:
                cursor = search.Cursor.parse(raw_cursor)
            except ValueError as exc:
                cursor_error = str(exc)
        filters = {
            "user": request.user,
            "query": data["q"],
            "sender": data["sender"],
            "has_attachment": data["has_attachment"],
            "after": data["after"],
            "before": data["before"],
        }
        rows: QuerySet[Any]
        if data["folder"] == SENT:
            rows = with_total_size(search.search_sent(**filters))
        else:
            rows = search.search_entries(folder=data["folder"], **filters).prefetch_related(
                Prefetch("labels", queryset=Label.objects.order_by("name"), to_attr="label_list")
            )
        try:
            page = search.page_of(rows, cursor=cursor)
        except ValueError as exc:  # a cursor from the other kind of list
            cursor_error = str(exc)
            page = search.page_of(rows)
    next_query = first_query = ""
    if page is not None:
        if page.sent:
            for message in page.entries:
                message.recipient_summary = ", ".join([*message.to, *message.cc, *message.bcc])
        else:
            _with_sender_names(page.entries)
        params = request.GET.copy()
        if "cursor" in params:
            params.pop("cursor")
            first_query = params.urlencode()
        if page.next_cursor is not None:
            params["cursor"] = str(page.next_cursor)
            next_query = params.urlencode()
    return render(
        request,
        "webmail/search/search.html",
        {
            "form": form,
            "page": page,
            "next_query": next_query,
            "first_query": first_query,
            "cursor_error": cursor_error,
            "move_targets": [(value, name) for value, name in Folder.choices],
        },
    )
