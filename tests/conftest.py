"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """MovieLens 100K folder (read in place, never copied); skips when absent."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}; tests that need it skip")
    return ML100K
