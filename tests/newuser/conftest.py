"""Fixtures of a new user's path: the service tests' clean environment and apps."""

from __future__ import annotations

from serve.conftest import (  # noqa: F401  (fixtures, found by name)
    _no_sieve_env,
    make_client,
)
