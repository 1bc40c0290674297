"""Hooks: how a lower app asks an app above it for an answer without importing it.

The apps are in layers (README, "Layout"; enforced by ``lint-imports``): a module
never imports an app above its own. When a lower app needs something only a
higher one knows (federation: "accept this notification"; attachments: "how
many bytes does this mailbox hold"), it declares a :class:`Hook` and calls it
like a function; the app that answers registers its function in its
``AppConfig.ready()`` (its ``receivers`` module). Events that need no answer
(a message was withdrawn, read) are Django signals instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

from django.core.exceptions import ImproperlyConfigured

P = ParamSpec("P")
R = TypeVar("R")


class Hook(Generic[P, R]):
    """One function that a higher app provides to a lower one (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._answer: Callable[P, R] | None = None

    def register(self, answer: Callable[P, R]) -> Callable[P, R]:
        """Answer this hook with ``answer``; another function already registered is an error."""
        if self._answer is not None and self._answer is not answer:
            raise ImproperlyConfigured(f"{self.name} is already answered by {self._answer!r}")
        self._answer = answer
        return answer

    @property
    def answered(self) -> bool:
        return self._answer is not None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._answer is None:
            raise ImproperlyConfigured(f"nothing answers {self.name}: is the app that does in INSTALLED_APPS?")
        return self._answer(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Hook {self.name}>"
