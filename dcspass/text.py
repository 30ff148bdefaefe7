"""Wording shared by messages and reports: a count with its noun in the right number."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 step"``, ``"3 steps"``; ``plural_form`` for nouns not made plural by an "s" (``"classes"``)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"
