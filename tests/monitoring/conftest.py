"""Fixtures of the monitoring tests: the service tests' apps, keys and trained funnel.

`serve`, `make_client` and `trained` are the fixtures of `tests/serve`
(imported here; see tests/serve/conftest.py).
"""

from __future__ import annotations

from serve.conftest import (  # noqa: F401  (fixtures, found by name)
    _no_sieve_env,
    headers,
    make_client,
    serve,
    trained,
)
from storage.conftest import store, target  # noqa: F401  (fixtures: a store on each backend)
