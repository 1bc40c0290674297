"""Forms of the mail settings pages (Settings → Filters, Vacation reply, Contacts, Import)."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from accounts.models import User
from mailbox.models import Label

from .filters import FilterInput
from .models import Filter, FilterFolder, Vacation


class FilterForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, required=False, help_text="For you only, e.g. “Newsletters”.")
    from_contains = forms.CharField(label="From contains", max_length=320, required=False)
    to_contains = forms.CharField(label="To or Cc contains", max_length=320, required=False)
    subject_contains = forms.CharField(label="Subject contains", max_length=200, required=False)
    list_id_contains = forms.CharField(
        label="Mailing list (List-Id) contains", max_length=250, required=False, help_text="e.g. announce.example.org"
    )
    label = forms.TypedChoiceField(label="Apply the label", required=False, coerce=int, empty_value=None)
    mark_read = forms.BooleanField(label="Mark as read", required=False)
    star = forms.BooleanField(label="Star it", required=False)
    move_to = forms.ChoiceField(
        label="Move to", required=False, choices=[("", "Leave in the Inbox"), *FilterFolder.choices]
    )
    forward_to = forms.CharField(
        label="Forward to",
        max_length=320,
        required=False,
        help_text="Another address; its body is fetched to forward it.",
    )

    def __init__(self, *args: Any, user: User, instance: Filter | None = None, **kwargs: Any) -> None:
        if instance is not None:
            kwargs.setdefault(
                "initial",
                {
                    "name": instance.name,
                    "from_contains": instance.from_contains,
                    "to_contains": instance.to_contains,
                    "subject_contains": instance.subject_contains,
                    "list_id_contains": instance.list_id_contains,
                    "label": instance.label_id,
                    "mark_read": instance.mark_read,
                    "star": instance.star,
                    "move_to": instance.move_to,
                    "forward_to": instance.forward_to,
                },
            )
        super().__init__(*args, **kwargs)
        label = cast(forms.TypedChoiceField, self.fields["label"])
        label.choices = [("", "No label"), *Label.objects.filter(owner=user).values_list("pk", "name")]

    def to_input(self) -> FilterInput:
        data = self.cleaned_data
        return FilterInput(
            name=data["name"],
            from_contains=data["from_contains"],
            to_contains=data["to_contains"],
            subject_contains=data["subject_contains"],
            list_id_contains=data["list_id_contains"],
            label_id=data["label"],
            mark_read=data["mark_read"],
            star=data["star"],
            move_to=data["move_to"],
            forward_to=data["forward_to"],
        )


class VacationForm(forms.Form):
    enabled = forms.BooleanField(label="Send a vacation reply", required=False)
    subject = forms.CharField(
        label="Subject", max_length=200, required=False, help_text="Empty: “Auto: ” and the subject of their message."
    )
    text = forms.CharField(label="Message", max_length=5000, required=False, widget=forms.Textarea(attrs={"rows": 6}))
    starts_on = forms.DateField(
        label="First day", required=False, widget=forms.DateInput(attrs={"type": "date"}), help_text="Empty: from now."
    )
    ends_on = forms.DateField(
        label="Last day",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Empty: until you turn it off.",
    )

    def __init__(self, *args: Any, vacation: Vacation, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "enabled": vacation.enabled,
                "subject": vacation.subject,
                "text": vacation.text,
                "starts_on": vacation.starts_on,
                "ends_on": vacation.ends_on,
            },
        )
        super().__init__(*args, **kwargs)


class ContactForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, required=False)
    address = forms.CharField(label="Address", max_length=320)
    previous = forms.CharField(required=False, widget=forms.HiddenInput)


class ImportForm(forms.Form):
    file = forms.FileField(
        label="Mail file",
        help_text="An mbox file (as Thunderbird, Gmail's Takeout or Apple Mail export) or one .eml message.",
        allow_empty_file=True,
    )
