"""The one way a number of bytes is written for people: pages, error messages, the admin."""

from __future__ import annotations


def human_size(size: int) -> str:
    """``820 bytes``, ``1 byte``, ``4.0 KB``, ``12 KB``, ``3.4 MB``: one decimal below 10, 1024 per step."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            if unit == "bytes":
                return f"{int(value)} bytes" if value != 1 else "1 byte"
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
