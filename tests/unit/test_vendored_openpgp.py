"""The vendored OpenPGP.js is the recorded release, unchanged, and runs under the pages' CSP (no eval)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from django.conf import settings

VENDOR = Path(__file__).resolve().parents[2] / "static" / "vendor" / "openpgp"


def test_the_vendored_build_is_the_recorded_one_with_its_licence() -> None:
    record = (VENDOR / "VERSION").read_text()
    recorded = re.search(r"openpgp.min.js sha256: ([0-9a-f]{64})", record)
    assert recorded is not None
    assert hashlib.sha256((VENDOR / "openpgp.min.js").read_bytes()).hexdigest() == recorded.group(1)
    assert "OpenPGP.js 6.3.2" in record
    assert (VENDOR / "openpgp.min.js").read_text().startswith("/*! OpenPGP.js v6.3.2")
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in (VENDOR / "LICENSE").read_text()


def test_it_needs_no_eval_which_the_csp_forbids() -> None:
    build = (VENDOR / "openpgp.min.js").read_text()
    assert "new Function(" not in build
    assert not re.search(r"(?<![\w.$])eval\(", build)
    assert settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]["script-src"] == ["'self'"]
