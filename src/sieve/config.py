"""Typed configuration objects that round-trip through TOML.

Every model and stage has one frozen dataclass config; each field's meaning is
documented in the class docstring. Unknown keys and wrongly typed values are
rejected with a message naming the key, so a typo in a config file fails fast
instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Self

import tomli_w


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: validation and TOML round-trip."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _conforms(value, hints[f.name]):
                raise ConfigError(
                    f"{type(self).__name__}.{f.name}: expected {_type_name(hints[f.name])}, "
                    f"got {value!r}"
                )
            # accept ints where floats are expected and store them as floats
            if hints[f.name] is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
        self.validate()

    def validate(self) -> None:
        """Range checks of a subclass; raise `ConfigError` naming the field."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        conv = {
            k: tuple(v) if _is_tuple(hints[k]) and isinstance(v, list) else v
            for k, v in data.items()
        }
        return cls(**conv)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue  # TOML has no null: absent means default/None
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> Self:
        return cls.from_dict(tomllib.loads(text))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, naming the file and line in the error."""
    try:
        return tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _conforms(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(v, args[0]) for v in value)
        return len(args) == len(value) and all(
            _conforms(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True
