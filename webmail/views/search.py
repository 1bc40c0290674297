"""Search: the user's mail matching words and filters, newest first, 50 to a page."""

from __future__ import annotations

from datetime import date

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from mailbox import search
from mailbox.models import EntryState, Folder

DATE_HELP = "YYYY-MM-DD"
SENT = "sent"  # the user's sent messages, searched apart from the inbox folders
# The body of an entry in these states is still at the sender's.
AT_SENDER = {EntryState.NOTIFIED, EntryState.FETCHING, EntryState.UNAVAILABLE}


def human_size(size: int) -> str:
    """Sizes as a list shows them: "812 bytes", "12 KB", "3.4 MB"."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / (1024 * 1024):.1f} MB"


class SearchForm(forms.Form):
    q = forms.CharField(label="Search mail", required=False, strip=True)
    folder = forms.ChoiceField(
        label="Folder", required=False, choices=[("", "Any folder"), *Folder.choices, (SENT, "Sent")], initial=""
    )
    sender = forms.CharField(label="From", required=False, max_length=320, strip=True)
    has_attachment = forms.BooleanField(label="Has attachment", required=False)
    after = forms.DateField(label="After", required=False, input_formats=["%Y-%m-%d"], help_text=DATE_HELP)
    before = forms.DateField(label="Before", required=False, input_formats=["%Y-%m-%d"], help_text=DATE_HELP)

    error_messages = {
        "date": "Enter a date as YYYY-MM-DD, for example 2026-03-31.",
    }

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        for name in ("after", "before"):
            self.fields[name].error_messages["invalid"] = self.error_messages["date"]
            self.fields[name].widget.input_type = "date"
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


@require_GET
@login_required
def search_view(request: HttpRequest) -> HttpResponse:
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
        if data["folder"] == SENT:
            rows = search.search_sent(**filters)
        else:
            rows = search.search_entries(folder=data["folder"], **filters)
        try:
            page = search.page_of(rows, cursor=cursor)
        except ValueError as exc:  # a cursor from the other kind of list
            cursor_error = str(exc)
            page = search.page_of(rows)
    next_query = first_query = ""
    if page is not None:
        for row in page.entries:
            row.size_label = human_size(row.size)
            if page.sent:
                row.recipient_summary = ", ".join([*row.to, *row.cc, *row.bcc])
            else:
                row.at_sender = row.state in AT_SENDER
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
        },
    )
