"""Errors the service raises for the HTTP layer to translate (422, 413)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class InvalidInput(ValueError):
    """Bad references inside a request body: `errors` in pydantic's `{loc, msg, type}` form."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e["msg"]) for e in errors))
        self.errors = errors


class TooLarge(ValueError):
    """A batch over the configured limit (HTTP 413)."""


def field_error(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One problem in pydantic's error layout."""
    return {"loc": list(loc), "msg": msg, "type": kind}


__all__ = ["InvalidInput", "TooLarge", "field_error"]
