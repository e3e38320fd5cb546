"""Typed configs: validation and TOML round-trip."""

from __future__ import annotations

import dataclasses

import pytest

from sieve.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Example(Config):
    """- `rate`: a float; - `n`: an int; - `kind`: a choice; - `tags`: names."""

    rate: float = 0.5
    n: int = 3
    kind: str = "a"
    tags: tuple[str, ...] = ("x",)
    limit: float | None = None

    def validate(self) -> None:
        if self.n < 0:
            raise ConfigError("Example.n must be >= 0")


def test_round_trip_through_toml() -> None:
    c = Example(rate=2, n=5, kind="b", tags=("p", "q"), limit=1.5)
    assert isinstance(c.rate, float)
    assert Example.from_toml(c.to_toml()) == c
    assert Example.from_toml(Example().to_toml()) == Example()


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rat'\]"):
        Example.from_dict({"rat": 1.0})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"Example\.n: expected int"):
        Example.from_dict({"n": "three"})
    with pytest.raises(ConfigError, match=r"Example\.n: expected int"):
        Example.from_dict({"n": True})


def test_range_check() -> None:
    with pytest.raises(ConfigError, match="n must be >= 0"):
        Example(n=-1)
