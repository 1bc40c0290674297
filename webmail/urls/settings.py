"""Webmail routes: settings."""

from django.urls import path

from webmail.views import settings as views

urlpatterns = [
    path("settings/", views.preferences, name="settings"),
    path("settings/tokens/", views.tokens, name="tokens"),
    path("settings/tokens/<int:token_id>/revoke/", views.revoke_token, name="token-revoke"),
    path(
        "settings/allowed-senders/<int:sender_id>/remove/",
        views.remove_allowed_sender,
        name="allowed-sender-remove",
    ),
]
