"""Fixtures of the service tests: apps on a fresh store, keys, a trained funnel.

- `make_client(**settings)` builds an app (`create_app`) on a fresh SQLite
  store (or the given `store_url`) and returns a started `TestClient` that
  sends the admin key unless told otherwise.
- `store_url` is parametrised over SQLite and a real PostgreSQL (a schema of
  its own per test, dropped afterwards; skipped, naming the URL, when the
  server is unreachable).
- `trained` fits one real `Funnel` per session on synthetic data loaded into a
  store through the service's own import and training code; `serve` copies
  that store for a test and serves the trained model from it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from servers import POSTGRES_URL, libpq_url, postgres_problem
from sieve.data.io import load_data
from sieve.data.raw import RawData
from sieve.serve.app import create_app
from sieve.serve.auth import hash_key
from sieve.settings import ApiKey, Settings
from sieve.storage import open_store
from sieve.training.snapshot import import_data
from sieve.training.train import train

SYNTH = "synthetic:users=200,items=150,seed=1"
#: A small but complete funnel (ranker on), quick to fit on the synthetic data.
FUNNEL_TOML = """
[als]
factors = 16
iterations = 5
num_threads = 1

[ranker]
n_estimators = 20
max_users = 100
num_threads = 1
"""

#: Raw test keys by scope; settings get only their hashes.
KEYS = {
    "read": "sk_test_read_5b0f2c8e1d",
    "write": "sk_test_write_9a7c3e4f2b",
    "admin": "sk_test_admin_c4d1e8f07a",
}
API_KEYS = tuple(
    ApiKey(name=f"{scope}-key", key_hash=hash_key(key), scopes=(scope,))  # type: ignore[arg-type]
    for scope, key in KEYS.items()
)


def bearer(scope: str) -> dict[str, str]:
    """The Authorization header of the test key with `scope`."""
    return {"Authorization": f"Bearer {KEYS[scope]}"}


@pytest.fixture(autouse=True)
def _no_sieve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: keep the developer's SIEVE_* out of the tests."""
    for name in list(os.environ):
        if name.startswith("SIEVE_") and not name.startswith("SIEVE_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sieve.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: an SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sieve.db'}"
        return
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    schema = f"sieve_serve_{uuid.uuid4().hex[:16]}"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(libpq_url(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """Build and start apps; `headers=None` sends no key, the default sends admin's."""
    started: list[TestClient] = []

    def make(
        *,
        headers: dict[str, str] | None = bearer("admin"),
        client: tuple[str, int] = ("testclient", 50000),
        **overrides: Any,
    ) -> TestClient:
        values: dict[str, Any] = {
            "store_url": f"sqlite:///{tmp_path / 'sieve.db'}",
            "model_dir": tmp_path / "models",
            "api_keys": API_KEYS,
            **overrides,
        }
        test_client = TestClient(create_app(Settings(**values)), headers=headers, client=client)
        test_client.__enter__()
        started.append(test_client)
        # as a load balancer waits for `/ready`: the online counters hold the
        # stored log before the first request, so answers do not depend on
        # how far the background fold has got
        test_client.app.state.service.flush_counters()  # type: ignore[attr-defined]
        return test_client

    yield make
    for c in started:
        c.__exit__(None, None, None)


@pytest.fixture
def headers() -> dict[str, dict[str, str]]:
    """Authorization headers by scope: `headers["read"]`, `["write"]`, `["admin"]`."""
    return {scope: bearer(scope) for scope in KEYS}


@pytest.fixture
def keys() -> dict[str, str]:
    """The raw test keys by scope."""
    return dict(KEYS)


@dataclass(frozen=True)
class Trained:
    """A store loaded with synthetic data and a funnel trained on it."""

    db: Path
    model_dir: Path
    funnel_config: Path
    version: str
    raw: RawData


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    db = root / "seed.db"
    url = f"sqlite:///{db}"
    raw = load_data(SYNTH)
    funnel_config = root / "funnel.toml"
    funnel_config.write_text(FUNNEL_TOML)
    settings = Settings(store_url=url, model_dir=root / "models", funnel_config=funnel_config)
    with open_store(url) as store:
        import_data(store, raw)
        funnel, _ = train(settings, store)
    return Trained(
        db=db,
        model_dir=root / "models",
        funnel_config=funnel_config,
        version=str(funnel.version),
        raw=raw,
    )


@pytest.fixture
def serve(trained: Trained, tmp_path: Path, make_client: MakeClient) -> MakeClient:
    """Build apps on a private copy of the trained store, serving the trained funnel."""
    db = tmp_path / "served.db"
    shutil.copy(trained.db, db)

    def make(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "store_url": f"sqlite:///{db}",
            "model_dir": trained.model_dir,
            **overrides,
        }
        return make_client(**values)

    return make
