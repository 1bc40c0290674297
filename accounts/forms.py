"""Forms for the user's own settings pages."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from .models import FetchPolicy, RemoteContentPolicy, User
from .validators import display_name_problem


class PreferencesForm(forms.Form):
    display_name = forms.CharField(
        label="Display name", max_length=100, required=False, help_text="Shown to recipients beside your address."
    )
    signature = forms.CharField(
        label="Signature", max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 4})
    )
    fetch_policy = forms.ChoiceField(label="Fetch policy", required=False, widget=forms.RadioSelect)
    remote_content = forms.ChoiceField(
        label="Remote content", choices=RemoteContentPolicy.choices, widget=forms.RadioSelect
    )
    recovery_address = forms.EmailField(
        label="Recovery address",
        required=False,
        help_text="Password reset links go here, as mail from postmaster. Use an address that is not this mailbox.",
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "display_name": user.display_name,
                "signature": user.signature,
                "fetch_policy": user.fetch_policy,
                "remote_content": user.remote_content,
                "recovery_address": user.recovery_address,
            },
        )
        super().__init__(*args, **kwargs)
        default = FetchPolicy(user.domain.default_fetch_policy)
        fetch_policy = cast(forms.ChoiceField, self.fields["fetch_policy"])
        fetch_policy.choices = [("", f"Domain default: {default.label}"), *FetchPolicy.choices]
        fetch_policy.help_text = (
            "Fetching a message tells the sender's server that someone at your domain opened it "
            "(never who). Fetching as soon as notified hides when you read."
        )

    def clean_display_name(self) -> str:
        value = self.cleaned_data["display_name"]
        if "\r" in value or "\n" in value:
            raise forms.ValidationError("The display name must not contain a line break (CR or LF).")
        problem = display_name_problem(value.strip())
        if problem:  # what other instances would refuse on the wire
            raise forms.ValidationError(f"The display name {problem}.")
        return value


class TokenForm(forms.Form):
    name = forms.CharField(label="Token name", max_length=100, help_text="What will use it, e.g. a mail client.")

    def clean_name(self) -> str:
        value = self.cleaned_data["name"]
        if "\r" in value or "\n" in value:
            raise forms.ValidationError("The name must not contain a line break (CR or LF).")
        return value
