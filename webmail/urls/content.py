"""Webmail routes: content (sanitized HTML, plain text, .eml, remote content, image proxy)."""

from django.urls import URLPattern, path

from webmail.views import content

urlpatterns: list[URLPattern] = [
    path("mail/entry/<int:entry_id>/html/", content.entry_html, name="entry-html"),
    path("mail/entry/<int:entry_id>/text/", content.entry_text, name="entry-text"),
    path("mail/entry/<int:entry_id>/eml/", content.entry_eml, name="entry-eml"),
    path("mail/entry/<int:entry_id>/allow-remote/", content.entry_allow_remote, name="entry-allow-remote"),
    path("mail/sent/<uuid:message_id>/html/", content.sent_html, name="sent-html"),
    path("mail/sent/<uuid:message_id>/text/", content.sent_text, name="sent-text"),
    path("mail/sent/<uuid:message_id>/eml/", content.sent_eml, name="sent-eml"),
    path("proxy/image/", content.image_proxy, name="image-proxy"),
]
