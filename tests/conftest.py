"""Shared fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from servers import REDIS_URL, redis_problem

ML100K = Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """MovieLens 100K folder (read in place, never copied); skips when absent."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}; tests that need it skip")
    return ML100K


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis cache URL with a key prefix of its own (keys removed afterwards)."""
    problem = redis_problem()
    if problem:
        pytest.skip(problem)
    prefix = f"sieve_serve_test_{uuid.uuid4().hex}:"
    yield f"{REDIS_URL}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()
