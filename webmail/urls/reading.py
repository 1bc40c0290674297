"""Webmail routes: reading a message or conversation, and the sender's view of a sent message."""

from django.urls import path

from webmail.views import reading

urlpatterns = [
    path("mail/entry/<int:entry_id>/", reading.entry, name="entry"),
    path("mail/entry/<int:entry_id>/body/", reading.entry_body, name="entry-body"),
    path("mail/entry/<int:entry_id>/retry/", reading.entry_retry, name="entry-retry"),
    path("mail/sent/<uuid:message_id>/", reading.sent_message, name="sent-message"),
    path("mail/sent/<uuid:message_id>/withdraw/", reading.sent_withdraw, name="sent-withdraw"),
]
