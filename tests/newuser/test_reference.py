"""The reference pages are generated from the code and checked in current."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sieve.docs import reference
from sieve.docs.fields import docstring_fields
from sieve.pipeline.config import FunnelConfig
from sieve.settings import Settings

PAGES = Path(__file__).resolve().parents[2] / reference.REFERENCE_DIR


def test_checked_in_reference_pages_are_current() -> None:
    stale = reference.stale(PAGES)
    assert not stale, (
        f"docs/reference/{stale} differ from what the code generates: run "
        f"`{reference.REGENERATE}` at the repository root and commit the pages"
    )


def test_every_setting_is_documented_with_its_variable_and_default() -> None:
    page = (PAGES / "settings.md").read_text()
    for name in Settings.model_fields:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`SIEVE_{name.upper()}`" in row
    assert "| `max_n` | `SIEVE_MAX_N` | integer (≥ 1, ≤ 10000) | `200` |" in page
    assert '| `cache_url` | `SIEVE_CACHE_URL` | string | `"memory://"` |' in page


def test_every_funnel_key_is_documented_under_its_table() -> None:
    page = (PAGES / "funnel-config.md").read_text()
    for section in dataclasses.fields(FunnelConfig):
        assert f"## `[{section.name}]`" in page
    assert "## `[rerank.mmr]`" in page
    sources = page.split("## `[sources]`")[1].split("## ")[0]
    assert "| `ease_max_items` | integer | `10000` |" in sources
    assert "| `factors` | integer | `64` |" in page.split("## `[als]`")[1]  # the funnel's default


def test_events_and_cli_pages_cover_the_types_and_commands() -> None:
    events = (PAGES / "events.md").read_text()
    for kind in ("view", "click", "cart", "purchase", "rating"):
        assert f"| `{kind}` |" in events
    assert "## Adding an event type" in events
    cli = (PAGES / "cli.md").read_text()
    for command in ("evaluate", "train", "serve", "import", "models list", "experiment create"):
        assert f"## `sieve {command}`" in cli
    assert "| `--holdout` | number (≥ 0, ≤ 0.5) | `0.1` |" in cli


def test_a_field_without_a_description_fails_the_rendering() -> None:
    class Undocumented(BaseModel):
        """A model whose bullets miss one field.

        - `named`: has a description.
        """

        named: int = 1
        silent: int = 2

    with pytest.raises(reference.MissingDescription, match=r"silent"):
        reference._pydantic_rows(Undocumented, None)


def test_docstring_bullets_name_several_fields_and_continue() -> None:
    class Documented:
        """Doc.

        - `a`, `b` / `c`: shared text that goes
          on here; `d`: another one
        - `e`: last
        """

    docs = docstring_fields(Documented)
    assert docs["a"] == docs["b"] == docs["c"] == "Shared text that goes on here."
    assert docs["d"] == "Another one." and docs["e"] == "Last."


def test_the_openapi_schema_lists_the_configured_event_types(make_client: Any) -> None:
    weights = {"view": 1.0, "click": 2.0, "purchase": 8.0, "wishlist": 1.5}
    client = make_client(event_weights=weights)
    operation = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    assert operation["x-sieve-event-types"]["wishlist"] == {
        "weight": 1.5,
        "click": False,
        "conversion": False,
        "attributed": False,
    }
    assert operation["x-sieve-event-types"]["click"]["click"] is True
    assert "| `wishlist` | 1.5 |" in operation["description"]
    assert "configurable" in operation["description"]
