"""The user API for OpenPGP keys: the user's own locked key, and correspondents' keys pinned on first use.

What the browser's compose and reading pages build on: they fetch the locked key and unlock it locally,
and ask their own instance for a correspondent's key (which looks it up and pins it).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest

from .. import openpgp, selectors, services
from ..models import OpenPGPKey, PinnedKey


def _own(key: OpenPGPKey) -> dict[str, object]:
    return {
        "fingerprint": key.fingerprint,
        "user_id": key.uid,
        "algorithm": key.algorithm,
        "created": key.key_created_at,
        "revoked": key.revoked_at is not None,
        "public_key": openpgp.armor(bytes(key.public_key), openpgp.PUBLIC_BLOCK),
        "secret_key": openpgp.armor(bytes(key.secret_key), openpgp.PRIVATE_BLOCK),
    }


def _pinned(pin: PinnedKey) -> dict[str, object]:
    offered = pin.offered_key
    return {
        "address": pin.address,
        "fingerprint": pin.fingerprint,
        "key": openpgp.armor(bytes(pin.public_key), openpgp.PUBLIC_BLOCK),
        "source": pin.source,
        "pinned_at": pin.pinned_at,
        "checked_at": pin.checked_at,
        "revoked": pin.pinned_revoked,
        "changed": pin.changed,
        "offered_fingerprint": pin.offered_fingerprint or None,
        "offered_key": openpgp.armor(bytes(offered), openpgp.PUBLIC_BLOCK) if offered else None,
    }


class OwnKeyView(APIView):
    """``GET /api/v1/encryption/key``: the user's key in use, the secret part locked with their passphrase."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: AuthedApiRequest) -> Response:
        key = selectors.current_key_for(user=request.user)
        if key is None:
            raise Http404("you have no key: create one in Settings → Encryption")
        response = Response(_own(key))
        response["Cache-Control"] = "no-store"
        return response


class CorrespondentKeyView(APIView):
    """``GET /api/v1/encryption/correspondents/<address>``: the correspondent's pinned key, looked up now.

    ``changed`` is true when the correspondent now publishes another key than the pinned one; the
    pinned key stays the one answered until the user accepts the offered one.
    """

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: AuthedApiRequest, address: str) -> Response:
        try:
            pin = services.look_up_correspondent(user=request.user, address=address)
        except ValidationError as exc:
            return Response({"error": "invalid_address", "detail": exc.messages[0]}, status=400)
        except services.NoPublishedKey as exc:
            return Response({"error": "no_key", "detail": str(exc)}, status=404)
        except services.LookupUnavailable as exc:
            return Response(
                {"error": "unavailable", "detail": f"cannot look the key up now: {exc}"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "60"},
            )
        return Response(_pinned(pin))


class AcceptKeyView(APIView):
    """``POST /api/v1/encryption/correspondents/<address>/accept`` with ``{"fingerprint": ...}``: pin the new key."""

    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT})
    def post(self, request: AuthedApiRequest, address: str) -> Response:
        fingerprint = request.data.get("fingerprint") if isinstance(request.data, dict) else None
        if not isinstance(fingerprint, str):
            return Response({"error": "invalid_payload", "detail": "fingerprint: a string is required"}, status=400)
        try:
            pin = services.accept_offered_key(user=request.user, address=address, fingerprint=fingerprint)
        except (PinnedKey.DoesNotExist, ValidationError) as exc:
            raise Http404("no key is pinned for this address") from exc
        except services.KeyConflict as exc:
            return Response({"error": "not_offered", "detail": str(exc)}, status=409)
        return Response(_pinned(pin))
