"""Settings: defaults, TOML file < environment < flags, and start-up errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sieve.serve.auth import hash_key
from sieve.settings import Settings, load_settings


def test_defaults() -> None:
    s = Settings()
    assert s.store_url == "sqlite:///sieve.db"
    assert s.cache_url == "memory://"
    assert s.model_dir == Path("sieve-models")
    assert s.max_batch == 10_000 and s.max_n == 200
    assert s.api_keys == () and not s.open_read and not s.open_write
    assert "click" in s.event_weights


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sieve.toml"
    config.write_text(
        f"""
store_url = "sqlite:///from-file.db"
max_n = 50
max_batch = 7

[[api_keys]]
name = "web"
key_hash = "{hash_key("k").upper()}"
scopes = ["read", "write"]
"""
    )
    s = load_settings(config)
    assert s.store_url == "sqlite:///from-file.db" and s.max_n == 50
    assert s.api_keys[0].key_hash == hash_key("k")  # normalised to lower case
    monkeypatch.setenv("SIEVE_MAX_N", "70")
    monkeypatch.setenv("SIEVE_CONFIG", str(config))
    s = load_settings()
    assert s.max_n == 70 and s.max_batch == 7
    assert load_settings(max_n=3, port=None).max_n == 3  # None flags do not override


def test_unknown_key_and_bad_values_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("store_ulr = 'sqlite://'\n")
    with pytest.raises(ValidationError, match="store_ulr"):
        load_settings(config)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.toml"):
        load_settings(tmp_path / "nowhere.toml")
    with pytest.raises(ValidationError, match="max_n"):
        Settings(max_n=0)
    with pytest.raises(ValidationError, match="event types"):
        Settings(event_weights={"Click": 1.0})
    monkeypatch.setenv("SIEVE_MAX_BATCH", "lots")
    with pytest.raises(ValidationError, match="max_batch"):
        Settings()


def test_a_raw_key_in_place_of_a_hash_is_refused_without_echo() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(api_keys=[{"name": "x", "key_hash": "sk_live_plaintext", "scopes": ["read"]}])
    assert "sieve keys hash" in str(info.value)
    assert "sk_live_plaintext" not in str(info.value)


def test_open_write_needs_a_loopback_host() -> None:
    assert Settings(open_write=True).open_write
    assert Settings(open_write=True, host="::1").open_write
    with pytest.raises(ValidationError, match="loopback"):
        Settings(open_write=True, host="0.0.0.0")


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hash_key("abc")
    monkeypatch.setenv(
        "SIEVE_API_KEYS", f'[{{"name": "ops", "key_hash": "{digest}", "scopes": ["admin"]}}]'
    )
    assert Settings().api_keys[0].scopes == ("admin",)
