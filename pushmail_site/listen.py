"""The ``host:port`` a server process listens on, read from a setting or an option."""

from __future__ import annotations

__all__ = ["listen_address"]


def listen_address(value: str, *, setting: str = "the listen address") -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as a pair; ValueError naming ``setting`` and the problem."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{setting} {value!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
