"""Webmail routes: compose, drafts, reply and forward, send with undo."""

from django.urls import path

from webmail.views import compose, encrypted_mail

urlpatterns = [
    path("compose/", compose.compose, name="compose"),
    path("compose/contacts/", compose.contacts, name="contacts"),
    path("compose/reach/", compose.recipient_reach, name="compose-reach"),
    path("compose/keys/", encrypted_mail.recipient_keys, name="compose-keys"),
    path("compose/encrypted/send/", encrypted_mail.send, name="encrypted-send"),
    path("compose/<int:draft_id>/", compose.draft, name="draft"),
    path("compose/<int:draft_id>/save/", compose.draft_save, name="draft-save"),
    path("compose/<int:draft_id>/attach/", compose.draft_attach, name="draft-attach"),
    path(
        "compose/<int:draft_id>/attachments/<int:attachment_id>/remove/",
        compose.draft_attachment_remove,
        name="draft-attachment-remove",
    ),
    path("compose/<int:draft_id>/delete/", compose.draft_delete, name="draft-delete"),
    # A new message's form, until its first save makes the draft (found again by the page's key).
    path("compose/new/<uuid:key>/save/", compose.draft_save, name="new-draft-save"),
    path("compose/new/<uuid:key>/attach/", compose.draft_attach, name="new-draft-attach"),
    path("compose/new/<uuid:key>/send/", compose.draft_send, name="new-draft-send"),
    path("compose/new/<uuid:key>/delete/", compose.draft_delete, name="new-draft-delete"),
    path("compose/<int:draft_id>/send/", compose.draft_send, name="draft-send"),
    path("compose/<int:draft_id>/undo/", compose.draft_undo, name="draft-undo"),
    path("compose/<int:draft_id>/status/", compose.draft_status, name="draft-status"),
    path("compose/reply/<int:entry_id>/", compose.reply, name="reply"),
    path("compose/reply-sent/<uuid:message_id>/", compose.reply_sent, name="reply-sent"),
    path("compose/forward/<int:entry_id>/", compose.forward, name="forward"),
    path("drafts/", compose.drafts, name="drafts"),
]
