"""Secret fields stay out of every admin filter, search, ordering and lookup.

The Django admin lets whoever may view a changelist filter it with any query-string lookup on
the model's own fields (``?private_key__startswith=AB``): each answer ("some rows" or "none")
reveals a little of the value, and a binary search over a few hundred requests recovers a whole
private key, password hash or session key. So every ModelAdmin registered on the admin site gets
:class:`SecretFieldsGuard`, which refuses any lookup, search, ordering, list filter or
``_to_field`` whose path touches a secret field, directly or through relations
(``domain__signing_keys__private_key``); Django answers a refused lookup with 400. A system check
(``accounts.E101``…) refuses to start an admin that is configured to search, filter, order or
list by a secret field.

The text of mail (sent and received bodies, drafts, the search document that holds a body's
words) is treated as secret too: the admin shows none of it, and a lookup would read it all the same.

A field is secret when :data:`SECRET_FIELDS` names it, or when its name says so (passwords,
secrets, tokens, private and session keys, hashes), so a new field named for what it holds is
covered without a change here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.checks import ModelAdminChecks
from django.contrib.admin.views.main import ChangeList
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.db.models.expressions import F
from django.db.models.sql.query import Query
from django.http import HttpRequest

#: Secret fields by model label (lower case), besides those whose names say so.
SECRET_FIELDS: dict[str, frozenset[str]] = {
    "accounts.user": frozenset({"password"}),
    "accounts.apitoken": frozenset({"key_hash"}),
    "federation.signingkey": frozenset({"private_key"}),
    # allauth: TOTP secrets, recovery-code seeds and passkey credentials; session keys; confirmation keys.
    "mfa.authenticator": frozenset({"data"}),
    "usersessions.usersession": frozenset({"session_key", "data"}),
    "sessions.session": frozenset({"session_key", "session_data"}),
    "account.emailconfirmation": frozenset({"key"}),
    # Mail content: the admin never shows it, so no lookup may read it either (a domain admin could
    # otherwise binary-search ``?text__startswith=`` through the mail of every mailbox of the domain).
    "outbox.message": frozenset({"text", "html"}),
    "outbox.draft": frozenset({"text"}),
    "mailbox.remotemessage": frozenset({"content"}),
    "mailbox.inboxentry": frozenset({"search_document"}),
}

_SECRET_NAME = re.compile(
    r"password|passwd|secret|token|private|session_key|session_data|recovery_code|(^|_)t?otp(_|$)|(^|_)hash$|^key$"
)
_PUBLIC_NAME = re.compile(r"^public_")


def is_secret_field(field: Any) -> bool:
    """Whether ``field`` (a model field) holds a secret no admin may filter, search or order by."""
    if getattr(field, "is_relation", False) or not hasattr(field, "model") or not getattr(field, "name", None):
        return False
    name = field.name.lower()
    if name in SECRET_FIELDS.get(field.model._meta.label_lower, ()):
        return True
    return bool(_SECRET_NAME.search(name)) and not _PUBLIC_NAME.search(name)


def secret_fields_of(model: type[models.Model]) -> list[Any]:
    return [f for f in model._meta.get_fields() if is_secret_field(f)]


def touches_secret(model: type[models.Model], path: str) -> bool:
    """Whether the lookup ``path`` (``a__b__c__startswith``) reads a secret field on its way.

    The path is resolved exactly as a queryset filter resolves it, through forward and reverse
    relations; what follows the last field (lookups, transforms, JSON keys) reads that field.
    """
    names = [n for n in path.split(LOOKUP_SEP)]
    if not names or not all(names):
        return False
    try:
        path_infos, final_field, _targets, _rest = Query(model).names_to_path(names, model._meta, allow_many=True)
    except (FieldError, FieldDoesNotExist):
        return False  # not a field path: the query refuses it on its own
    except Exception:
        return True  # cannot tell: refuse
    fields = [p.join_field for p in path_infos] + [final_field]
    for info in path_infos:
        fields.extend(info.target_fields)
    return any(is_secret_field(f) for f in fields)


def _search_path(search_field: str) -> str:
    return search_field.lstrip("^=@")


def _expression_touches_secret(model: type[models.Model], expression: Any) -> bool:
    if isinstance(expression, str):
        return touches_secret(model, expression.lstrip("-?"))
    if isinstance(expression, F):
        return touches_secret(model, expression.name)  # type: ignore[attr-defined]  # the stub omits F.name
    flatten = getattr(expression, "flatten", None)
    if flatten is None:
        return False
    return any(isinstance(e, F) and touches_secret(model, e.name) for e in flatten())  # type: ignore[attr-defined]  # as above


def _filter_touches_secret(model: type[models.Model], item: Any) -> bool:
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, str):
        return touches_secret(model, item)
    parameter = getattr(item, "parameter_name", None)  # a SimpleListFilter: its own query-string parameter
    return isinstance(parameter, str) and touches_secret(model, parameter)


_guarded_changelists: dict[type[ChangeList], type[ChangeList]] = {}


def _guarded_changelist(base: type[ChangeList]) -> type[ChangeList]:
    """``base`` with column sorting (``?o=``) refused for columns that sort by a secret field."""
    guarded = _guarded_changelists.get(base)
    if guarded is None:

        def get_ordering_field(self: ChangeList, field_name: Any) -> Any:
            order_field = base.get_ordering_field(self, field_name)
            if order_field and _expression_touches_secret(self.model, order_field):
                return None
            return order_field

        guarded = type(base.__name__, (base,), {"get_ordering_field": get_ordering_field})
        _guarded_changelists[base] = guarded
    return guarded


def _required(field: Any) -> bool:
    return not (field.null or field.blank or field.has_default() or getattr(field, "auto_now", False))


class SecretFieldsChecks(ModelAdminChecks):
    """The admin's own configuration may not search, filter, order or list by a secret field."""

    def check(self, admin_obj: Any, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = list(super().check(admin_obj, **kwargs))
        model = admin_obj.model

        def refuse(option: str, value: Any, code: int) -> checks.Error:
            return checks.Error(
                f"{option} of {type(admin_obj).__name__} touches the secret field in {value!r}.",
                hint="Secret fields (private keys, password hashes, token hashes, MFA and session secrets) "
                "must never be searched, filtered, ordered or listed in the admin.",
                obj=type(admin_obj),
                id=f"accounts.E{code}",
            )

        for value in admin_obj.search_fields or ():
            if touches_secret(model, _search_path(value)):
                errors.append(refuse("search_fields", value, 101))
        for value in admin_obj.list_filter or ():
            if _filter_touches_secret(model, value):
                errors.append(refuse("list_filter", value, 102))
        orderings: Iterable[Any] = [*(admin_obj.ordering or ()), *(model._meta.ordering or ())]
        for value in orderings:
            if _expression_touches_secret(model, value):
                errors.append(refuse("ordering", value, 103))
        if admin_obj.date_hierarchy and touches_secret(model, admin_obj.date_hierarchy):
            errors.append(refuse("date_hierarchy", admin_obj.date_hierarchy, 104))
        for value in admin_obj.list_display or ():
            name = value if isinstance(value, str) else None
            shown = touches_secret(model, name) if name else False
            order_field = getattr(getattr(admin_obj, name, None), "admin_order_field", None) if name else None
            if value is not None and callable(value):
                order_field = getattr(value, "admin_order_field", None)
            if shown or (order_field is not None and _expression_touches_secret(model, order_field)):
                errors.append(refuse("list_display", value, 105))
        if not isinstance(admin_obj, SecretFieldsGuard):
            errors.append(
                checks.Error(
                    f"{type(admin_obj).__name__} is registered without SecretFieldsGuard.",
                    hint="Register ModelAdmins on the project's admin site (accounts.admin_secrets.GuardedAdminSite).",
                    obj=type(admin_obj),
                    id="accounts.E106",
                )
            )
        return errors


class SecretFieldsGuard(admin.ModelAdmin):
    """Refuses every changelist lookup, search, ordering and list filter that touches a secret field,
    and leaves secret fields out of the list, the change form and its read-only display."""

    checks_class = SecretFieldsChecks
    #: Secret fields this admin shows through a form field that does not reveal them (Django's masked
    #: password summary with its "Reset password" link).
    shown_secret_fields: tuple[str, ...] = ()

    def _hidden_secret(self, name: Any) -> bool:
        if not isinstance(name, str) or name in self.shown_secret_fields:
            return False
        try:
            return is_secret_field(self.model._meta.get_field(name))
        except FieldDoesNotExist:
            return False

    def _without_secrets(self, names: Iterable[Any]) -> list[Any]:
        kept: list[Any] = []
        for name in names:
            if isinstance(name, (tuple, list)):  # several fields on one line
                line = [n for n in name if not self._hidden_secret(n)]
                if line:
                    kept.append(type(name)(line))
            elif not self._hidden_secret(name):
                kept.append(name)
        return kept

    def _hidden_secret_names(self) -> list[str]:
        return [f.name for f in secret_fields_of(self.model) if self._hidden_secret(f.name)]

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*(super().get_exclude(request, obj) or ()), *self._hidden_secret_names()]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return self._without_secrets(super().get_fields(request, obj))

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return [
            (name, {**options, "fields": self._without_secrets(options.get("fields", ()))})
            for name, options in super().get_fieldsets(request, obj)
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return self._without_secrets(super().get_readonly_fields(request, obj))

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return self._without_secrets(super().get_list_display(request))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        # A row that cannot be saved without a secret the form leaves out is not added here.
        if any(_required(self.model._meta.get_field(name)) for name in self._hidden_secret_names()):
            return False
        return bool(super().has_add_permission(request, *args))

    def lookup_allowed(self, lookup: str, value: Any, request: HttpRequest) -> bool:
        if touches_secret(self.model, lookup):
            return False
        return bool(super().lookup_allowed(lookup, value, request))

    def to_field_allowed(self, request: HttpRequest, to_field: str) -> bool:
        if touches_secret(self.model, to_field):
            return False
        return bool(super().to_field_allowed(request, to_field))

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        fields = super().get_search_fields(request)
        return [f for f in fields if not touches_secret(self.model, _search_path(f))]

    def get_ordering(self, request: HttpRequest) -> list[Any]:
        ordering = super().get_ordering(request) or ()
        return [o for o in ordering if not _expression_touches_secret(self.model, o)]

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        return [f for f in super().get_list_filter(request) if not _filter_touches_secret(self.model, f)]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _guarded_changelist(super().get_changelist(request, **kwargs))


class GuardedAdminSite(admin.AdminSite):
    """The admin site: every ModelAdmin registered here, ours or a library's, gets SecretFieldsGuard."""

    def register(self, model_or_iterable: Any, admin_class: Any = None, **options: Any) -> None:
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, SecretFieldsGuard):
            admin_class = type(
                admin_class.__name__,
                (SecretFieldsGuard, admin_class),
                {"__module__": admin_class.__module__, "__doc__": admin_class.__doc__},
            )
        super().register(model_or_iterable, admin_class, **options)
