from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from accounts import views as account_views
from encryption import wkd
from encryption.api import views as encryption_api
from federation import views as federation_views
from mailbox.api import views as inbox_api
from newsletters import views as newsletter_views
from outbox.api import views as outbox_api
from reputation.api import views as reputation_api

from . import health, metrics

handler400 = "pushmail_site.errors.bad_request"
handler404 = "pushmail_site.errors.not_found"
handler500 = "pushmail_site.errors.server_error"

api_v1 = [
    path("encryption/key", encryption_api.OwnKeyView.as_view(), name="encryption-key"),
    path(
        "encryption/correspondents/<str:address>",
        encryption_api.CorrespondentKeyView.as_view(),
        name="encryption-correspondent",
    ),
    path(
        "encryption/correspondents/<str:address>/accept",
        encryption_api.AcceptKeyView.as_view(),
        name="encryption-accept",
    ),
    path("messages/", outbox_api.MessageCreateView.as_view(), name="message-create"),
    path("messages/<uuid:message_id>/", outbox_api.MessageDetailView.as_view(), name="message-detail"),
    path("messages/<uuid:message_id>/withdraw/", outbox_api.MessageWithdrawView.as_view(), name="message-withdraw"),
    path("inbox/", inbox_api.InboxListView.as_view(), name="inbox-list"),
    path("inbox/<int:entry_id>/", inbox_api.InboxEntryView.as_view(), name="inbox-detail"),
    path("inbox/<int:entry_id>/retry/", inbox_api.InboxRetryView.as_view(), name="inbox-retry"),
    path("inbox/<int:entry_id>/spam/", reputation_api.ReportSpamView.as_view(), name="inbox-spam"),
    path("inbox/<int:entry_id>/not-spam/", reputation_api.ReportNotSpamView.as_view(), name="inbox-not-spam"),
    path(
        "inbox/<int:entry_id>/attachments/<int:index>/",
        inbox_api.EntryAttachmentView.as_view(),
        name="inbox-attachment",
    ),
    path(
        "inbox/<int:entry_id>/attachments/<int:index>/retry/",
        inbox_api.EntryAttachmentRetryView.as_view(),
        name="inbox-attachment-retry",
    ),
]

federation_v1 = [
    path("notifications", federation_views.notifications, name="federation-notifications"),
    path("notifications/batch", federation_views.notification_batch, name="federation-notification-batch"),
    path("withdrawals", federation_views.withdrawals, name="federation-withdrawals"),
    path("reports", federation_views.reports, name="federation-reports"),
    path("subscriptions", federation_views.subscriptions, name="federation-subscriptions"),
    path("list-notifications", federation_views.list_notifications, name="federation-list-notifications"),
    path("keys/<str:address>", federation_views.public_keys, name="federation-keys"),
    path("messages/<str:global_id>/body", federation_views.message_body, name="federation-body"),
    path(
        "messages/<str:global_id>/attachments/<str:digest>",
        federation_views.message_attachment,
        name="federation-attachment",
    ),
]

urlpatterns = [
    path(".well-known/pushmail", federation_views.well_known, name="well-known"),
    # The Web Key Directory: users' OpenPGP public keys, direct and advanced layout.
    path(".well-known/openpgpkey/policy", wkd.direct_policy, name="wkd-policy"),
    re_path(r"^\.well-known/openpgpkey/hu/(?P<hashed>[a-z0-9]{32})$", wkd.direct_key, name="wkd-direct"),
    re_path(r"^\.well-known/openpgpkey/(?P<domain>[^/]+)/policy$", wkd.advanced_policy, name="wkd-advanced-policy"),
    re_path(
        r"^\.well-known/openpgpkey/(?P<domain>[^/]+)/hu/(?P<hashed>[a-z0-9]{32})$",
        wkd.advanced_key,
        name="wkd-advanced",
    ),
    path("federation/v1/", include(federation_v1)),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/queues/", admin.site.admin_view(metrics.job_queues), name="admin-job-queues"),
    path("n/<slug:slug>/", newsletter_views.page, name="newsletter-page"),
    path("n/<slug:slug>/feed.atom", newsletter_views.feed, name="newsletter-feed"),
    path("n/<slug:slug>/confirm/<str:token>/", newsletter_views.confirm, name="newsletter-confirm"),
    path("n/<slug:slug>/unsubscribe/<str:token>/", newsletter_views.unsubscribe, name="newsletter-unsubscribe"),
    path("admin/", admin.site.urls),
    # The mailbox address is the sign-in: allauth's page for adding or switching addresses is closed.
    path("accounts/email/", account_views.address_is_fixed),
    path("accounts/", include("allauth.urls")),
    path("", include("webmail.urls")),
]
