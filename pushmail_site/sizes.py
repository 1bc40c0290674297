"""The one way a number of bytes is written for people: pages, error messages, the admin.

Binary units, named as such (KiB, MiB, GiB: 1024 per step), as the settings and docs give
the limits (20 MiB per file): a limit reads as set, and the browser's check before an
upload (static/js/compose.js) writes sizes the same way.
"""

from __future__ import annotations


def human_size(size: int) -> str:
    """``820 bytes``, ``1 byte``, ``4.0 KiB``, ``12 KiB``, ``3.4 MiB``: one decimal below 10, 1024 per step."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            if unit == "bytes":
                return f"{int(value)} bytes" if value != 1 else "1 byte"
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
