"""Settings → Encryption: the user's OpenPGP key, made in the browser or imported, locked with a passphrase.

The browser (static/js/encryption.js, with OpenPGP.js) makes the key and locks it, or unlocks it to sign a
revocation; these views only ever receive the locked key and public data.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthedRequest
from encryption import openpgp, selectors, services
from encryption.models import PinnedKey

# An armored key of the largest size the server accepts, with room for line breaks and headers.
MAX_FIELD_CHARS = openpgp.MAX_KEY_BYTES * 2


def _page(request: AuthedRequest, *, problem: str = "", status: int = 200, field: str = "") -> HttpResponse:
    user = request.user
    keys = list(selectors.keys_for(user=user))
    context = {
        "current": next((k for k in keys if k.revoked_at is None), None),
        "revoked": [k for k in keys if k.revoked_at is not None],
        "problem": problem,
        "problem_field": field,
        "pasted": request.POST.get("secret_key", "") if field == "secret_key" else "",
        "pinned": list(selectors.pinned_keys_for(user=user)),
        "looked_up": request.POST.get("address", "") if field == "address" else "",
    }
    return render(request, "webmail/settings/encryption.html", context, status=status)


@login_required
@never_cache
@require_GET
def encryption(request: AuthedRequest) -> HttpResponse:
    return _page(request)


def _field(request: AuthedRequest, name: str) -> str | None:
    value = request.POST.get(name, "")
    if not value.strip() or len(value) > MAX_FIELD_CHARS:
        return None
    return value


@login_required
@require_POST
def upload_key(request: AuthedRequest) -> HttpResponse:
    """Store a locked secret key: one the browser just made, or one pasted from GnuPG."""
    uploaded = _field(request, "secret_key")
    if uploaded is None:
        return _page(
            request, problem="Paste your locked secret key (an armored block).", status=400, field="secret_key"
        )
    try:
        key = services.store_key(user=request.user, uploaded=uploaded)
    except openpgp.KeyProblem as exc:
        return _page(request, problem=f"This key cannot be used: {exc}.", status=400, field="secret_key")
    except services.KeyConflict as exc:
        return _page(request, problem=f"This key cannot be used: {exc}.", status=409, field="secret_key")
    messages.success(request, f"Your key {key.fingerprint_groups} is stored, locked, and published.")
    return redirect("webmail:encryption")


@login_required
@require_POST
def revoke_key(request: AuthedRequest) -> HttpResponse:
    """Publish a revocation the browser made with the unlocked key."""
    uploaded = _field(request, "revocation")
    if uploaded is None:
        return _page(request, problem="No revocation was sent.", status=400, field="revocation")
    try:
        key = services.revoke_key(user=request.user, uploaded=uploaded)
    except openpgp.KeyProblem as exc:
        return _page(request, problem=f"The revocation was refused: {exc}.", status=400, field="revocation")
    except services.NoKey as exc:
        return _page(request, problem=f"Nothing to revoke: {exc}.", status=409, field="revocation")
    messages.success(request, f"Key {key.fingerprint_groups} is revoked; its published copy says so.")
    return redirect("webmail:encryption")


@login_required
@never_cache
@require_http_methods(["GET"])
def export_key(request: AuthedRequest, part: str) -> HttpResponse:
    """The user's key, armored: ``secret`` (still locked with the passphrase) or ``public``."""
    if part not in ("secret", "public"):
        raise Http404("Export the secret or the public key.")
    key = selectors.current_key_for(user=request.user) or selectors.keys_for(user=request.user).first()
    if key is None:
        raise Http404("You have no key.")
    if part == "secret":
        text = openpgp.armor(bytes(key.secret_key), openpgp.PRIVATE_BLOCK)
    else:
        text = openpgp.armor(openpgp.public_from(bytes(key.secret_key)), openpgp.PUBLIC_BLOCK)
    response = HttpResponse(text, content_type="application/pgp-keys; charset=us-ascii")
    local = request.user.local_part
    suffix = "secret-locked" if part == "secret" else "public"
    response["Content-Disposition"] = f'attachment; filename="{local}-{key.fingerprint[-16:]}-{suffix}.asc"'
    return response


@login_required
@require_POST
def look_up(request: AuthedRequest) -> HttpResponse:
    """Look a correspondent's key up and pin it on first use; a changed key is shown with a warning."""
    address = request.POST.get("address", "")
    try:
        pin = services.look_up_correspondent(user=request.user, address=address)
    except ValidationError as exc:
        return _page(request, problem=exc.messages[0], status=400, field="address")
    except services.NoPublishedKey as exc:
        return _page(request, problem=f"No key found: {exc}.", status=404, field="address")
    except services.LookupUnavailable as exc:
        return _page(request, problem=f"The key cannot be looked up now: {exc}.", status=503, field="address")
    if pin.changed:
        messages.warning(request, f"The key of {pin.address} has changed. Compare fingerprints before you accept it.")
    else:
        messages.success(request, f"{pin.address}: key {pin.fingerprint} is pinned.")
    return redirect("webmail:encryption")


@login_required
@require_POST
def accept_key(request: AuthedRequest) -> HttpResponse:
    """Accept a correspondent's new key in place of the pinned one."""
    try:
        pin = services.accept_offered_key(
            user=request.user, address=request.POST.get("address", ""), fingerprint=request.POST.get("fingerprint", "")
        )
    except (PinnedKey.DoesNotExist, ValidationError):
        raise Http404("No key is pinned for this address.") from None
    except services.KeyConflict as exc:
        return _page(request, problem=f"Not accepted: {exc}.", status=409)
    messages.success(request, f"{pin.address}: the new key {pin.fingerprint} is pinned.")
    return redirect("webmail:encryption")
