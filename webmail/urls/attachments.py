"""Webmail routes: attachments."""

from django.urls import URLPattern, path

from webmail.views import attachments as views

urlpatterns: list[URLPattern] = [
    path(
        "mail/entry/<int:entry_id>/attachments/<int:index>/",
        views.entry_attachment,
        name="entry-attachment",
    ),
    path(
        "mail/entry/<int:entry_id>/attachments/<int:index>/fetch/",
        views.entry_attachment_fetch,
        name="entry-attachment-fetch",
    ),
    path(
        "mail/sent/<uuid:message_id>/attachments/<int:index>/",
        views.sent_attachment,
        name="sent-attachment",
    ),
    path(
        "compose/<int:draft_id>/attachments/<int:attachment_id>/",
        views.draft_attachment,
        name="draft-attachment",
    ),
]
