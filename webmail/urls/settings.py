"""Webmail routes: settings."""

from django.urls import path

from webmail.views import encryption, mail_settings, newsletters
from webmail.views import settings as views

urlpatterns = [
    path("settings/", views.preferences, name="settings"),
    path("settings/filters/", mail_settings.filters, name="filters"),
    path("settings/filters/<int:filter_id>/", mail_settings.filter_edit, name="filter-edit"),
    path("settings/filters/<int:filter_id>/delete/", mail_settings.filter_delete, name="filter-delete"),
    path("settings/filters/<int:filter_id>/move/", mail_settings.filter_move, name="filter-move"),
    path("settings/vacation/", mail_settings.vacation, name="vacation"),
    path("settings/contacts/", mail_settings.contacts, name="address-book"),
    path("settings/contacts/remove/", mail_settings.contact_delete, name="contact-delete"),
    path("settings/import/", mail_settings.import_mail, name="import"),
    path("settings/newsletters/", newsletters.newsletters, name="newsletters"),
    path("settings/newsletters/<int:newsletter_id>/", newsletters.newsletter, name="newsletter"),
    path("settings/subscriptions/", newsletters.subscriptions, name="subscriptions"),
    path(
        "settings/subscriptions/<int:subscription_id>/",
        newsletters.subscription_action,
        name="subscription-action",
    ),
    path("newsletters/subscribe/", newsletters.confirm_subscribe, name="subscribe-confirm"),
    path("settings/encryption/", encryption.encryption, name="encryption"),
    path("settings/encryption/key/", encryption.upload_key, name="encryption-upload"),
    path("settings/encryption/revoke/", encryption.revoke_key, name="encryption-revoke"),
    path("settings/encryption/export/<str:part>.asc", encryption.export_key, name="encryption-export"),
    path("settings/encryption/correspondents/", encryption.look_up, name="encryption-look-up"),
    path("settings/encryption/correspondents/accept/", encryption.accept_key, name="encryption-accept"),
    path("settings/tokens/", views.tokens, name="tokens"),
    path("settings/tokens/<int:token_id>/revoke/", views.revoke_token, name="token-revoke"),
    path(
        "settings/allowed-senders/<int:sender_id>/remove/",
        views.remove_allowed_sender,
        name="allowed-sender-remove",
    ),
]
