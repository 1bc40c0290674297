"""Encrypted mail in the browser: correspondents' keys for Compose, and sending what the browser encrypted.

The browser (static/js/encrypted_mail.js, with OpenPGP.js) encrypts and signs; these views only ever
receive public keys' questions and ciphertext (docs/protocol.md §4.6).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthedRequest
from accounts.validators import normalize_address
from encryption import recipient_keys as lookup
from outbox import drafts as drafts_service
from outbox.encrypted import send_encrypted
from outbox.rules import split_addresses
from outbox.selectors import drafts_for


@login_required
@never_cache
@require_GET
def recipient_keys(request: AuthedRequest) -> JsonResponse:
    """The current public key of each address in ``addresses`` (comma-separated), and the sender's own.

    Each answer: ``address``, ``status`` ("found", "none", "unavailable" or "invalid"), ``source``
    ("local", "pushmail", "wkd"), ``fingerprint`` and the armored ``key``.
    """
    typed = split_addresses(request.GET.get("addresses", ""))
    if len(typed) > lookup.MAX_ADDRESSES:
        return JsonResponse(
            {"error": f"at most {lookup.MAX_ADDRESSES} addresses at a time, not {len(typed)}"}, status=400
        )
    answers: list[dict[str, str]] = []
    valid: list[str] = []
    for item in typed:
        try:
            valid.append(normalize_address(item))
        except ValidationError:
            answers.append(lookup.KeyAnswer(address=item, status="invalid", detail="not an address").to_json())
    answers.extend(a.to_json() for a in lookup.keys_for(valid))
    return JsonResponse({"sender": lookup.key_for(request.user.email).to_json(), "keys": answers})


@login_required
@require_POST
def send(request: AuthedRequest) -> JsonResponse:
    """Send a message the browser encrypted: ``to``, ``cc``, ``bcc``, ``message`` (armored), ``files``.

    ``draft``: the draft this message was written in, deleted once it is sent (its plaintext was
    never saved while encryption was on). Answers 201 with where the sent message is, or 400 naming
    each problem.
    """
    draft = None
    if request.POST.get("draft", "").isdigit():
        draft = drafts_for(user=request.user).filter(pk=int(request.POST["draft"])).first()
    try:
        message = send_encrypted(
            sender=request.user,
            to=request.POST.get("to", ""),
            cc=request.POST.get("cc", ""),
            bcc=request.POST.get("bcc", ""),
            armored=request.POST.get("message", ""),
            files=request.FILES.getlist("files"),
            in_reply_to=draft.in_reply_to if draft is not None else "",
        )
    except ValidationError as exc:
        return JsonResponse({"problems": exc.messages}, status=400)
    if draft is not None:
        try:
            drafts_service.delete_draft(draft=draft)
        except drafts_service.DraftLocked:
            pass  # being sent the ordinary way: that send stands as its own message
    return JsonResponse({"sent": reverse("webmail:sent-message", kwargs={"message_id": message.pk})}, status=201)
