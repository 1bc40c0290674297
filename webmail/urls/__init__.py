"""Webmail routes, one module per area; all under the "webmail" namespace."""

from . import attachments, compose, content, mail, reading, search, settings

app_name = "webmail"
urlpatterns = [
    *mail.urlpatterns,
    *reading.urlpatterns,
    *compose.urlpatterns,
    *attachments.urlpatterns,
    *content.urlpatterns,
    *search.urlpatterns,
    *settings.urlpatterns,
]
