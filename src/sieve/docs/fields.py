"""Field descriptions, types and defaults read from the code, for the reference pages.

A field's description is its pydantic `Field(description=…)` or, for
configs documented in prose, the bullet that names it in its class
docstring (this project's convention for every `Config`)::

    - `k`: the fusion constant (larger flattens the rank differences).
    - `ann`, `item_to_item`: the weight of each source; `fresh`: another.

A bullet may name several fields (`a`, `b` / `c`: …) and, after a `; `,
define more (`subsample` / `colsample`: …). Continuation lines are indented.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from enum import Enum
from pathlib import PurePath
from typing import Any

_NAMES = r"`[A-Za-z_][\w.]*`(?:\s*(?:,|/|,?\s*and|,?\s*or)\s*`[A-Za-z_][\w.]*`)*"
_HEAD = re.compile(rf"^({_NAMES})\s*:\s*(.*)$", re.S)


def docstring_fields(cls: type) -> dict[str, str]:
    """`{field: description}` from the `- `name`: text` bullets of the
    docstrings of `cls` and its bases (a subclass's text wins)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__dict__.get("__doc__"):
            found.update(_bullets(inspect.cleandoc(klass.__doc__ or "")))
    return found


def _bullets(doc: str) -> dict[str, str]:
    texts: list[str] = []
    current: list[str] | None = None
    for line in doc.splitlines():
        if line.lstrip().startswith("- "):
            current = [line.lstrip()[2:].strip()]
            texts.append("")
        elif current is not None and line.startswith("  ") and line.strip():
            current.append(line.strip())
        else:
            current = None
            continue
        texts[-1] = " ".join(current)
    found: dict[str, str] = {}
    for text in texts:
        for part in re.split(r";\s+(?=`)", text):
            m = _HEAD.match(part)
            if m:
                description = _sentence(m.group(2))
                for name in re.findall(r"`([^`]+)`", m.group(1)):
                    found.setdefault(name, description)
    return found


def _sentence(text: str) -> str:
    """Capitalised, ending in a full stop, without a bullet's trailing ';'."""
    text = text.strip().rstrip(";").strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def type_name(hint: Any) -> str:
    """A readable name of a type hint: `int`, `str | None`, `list of str`, `"a" | "b"`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (tuple, list, set, frozenset) or hint in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return f"list of {type_name(inner[0])}" if inner else "list"
    if origin in (dict, typing.Mapping) or (origin is not None and "Mapping" in str(origin)):
        return f"table of {type_name(args[1])}" if len(args) == 2 else "table"
    if hint is type(None):
        return "none"
    if isinstance(hint, type):
        if issubclass(hint, PurePath):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            hint.__name__, hint.__name__
        )
    return str(hint).replace("typing.", "")


def value_text(value: Any) -> str:
    """A default as it would be written in TOML (`"memory://"`, `[…]`, `true`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return value_text(value.value)
    if isinstance(value, str | PurePath):
        return f'"{value}"'
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {value_text(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) or hasattr(type(value), "model_fields"):
        return "see below"
    return str(value)


def constraints(metadata: list[Any]) -> str:
    """`≥ 1, ≤ 64` from pydantic's annotated-types metadata."""
    marks = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}
    parts = []
    for item in metadata:
        for attr, mark in marks.items():
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{mark} {value_text(bound)}")
    return ", ".join(parts)


def cell(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("\\\\|", "\\|")


__all__ = ["cell", "constraints", "docstring_fields", "type_name", "value_text"]
