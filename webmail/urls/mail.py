"""Webmail routes: mail lists (folders, labels, Sent) and actions."""

from django.urls import URLPattern, path, register_converter

from webmail.views import mail, undo


class FolderConverter:
    """Only the real list folders, so /mail/<folder>/ never shadows /mail/sent/, /mail/labels/..."""

    regex = "inbox|news|archive|spam|trash|starred"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(FolderConverter, "mailfolder")

urlpatterns: list[URLPattern] = [
    path("", mail.home, name="home"),
    path("mail/sent/", mail.sent, name="sent"),
    path("mail/sent/bulk/", mail.sent_bulk, name="sent-bulk"),
    path("mail/sent/<uuid:message_id>/action/", mail.sent_action, name="sent-action"),
    path("mail/labels/", mail.labels, name="labels"),
    path("mail/labels/<int:label_id>/rename/", mail.label_rename, name="label-rename"),
    path("mail/labels/<int:label_id>/delete/", mail.label_delete, name="label-delete"),
    path("mail/label/<int:label_id>/", mail.label, name="label"),
    path("mail/bulk/", mail.bulk_action, name="bulk-action"),
    path("mail/entry/<int:entry_id>/action/", mail.entry_action, name="entry-action"),
    path("mail/trash/empty/", mail.empty_trash, name="empty-trash"),
    path("mail/undo/", undo.undo, name="undo"),
    path("mail/<mailfolder:folder>/", mail.folder, name="folder"),
    path("mail/<mailfolder:folder>/updates/", mail.folder_updates, name="folder-updates"),
]
