"""Schema-driven fuzzing: schemathesis generates requests from the app's own OpenAPI
document (valid and invalid) and sends them in-process; no answer may be a 5xx.

Bounded: `EXAMPLES` per operation (3 for the admin ones), ≈ 25 operations, a
fixed seed (derandomized): about 250 requests, well under a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sieve.serve.app import create_app
from sieve.serve.auth import hash_key
from sieve.settings import ApiKey, Settings

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extra)")

EXAMPLES = 12
KEY = "sk_fuzz_admin"


@pytest.mark.slow
def test_no_server_errors(trained: Any, tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    db = tmp_path / "fuzz.db"
    shutil.copy(trained.db, db)
    app = create_app(
        Settings(
            store_url=f"sqlite:///{db}",
            model_dir=trained.model_dir,
            api_keys=(ApiKey(name="fuzz", key_hash=hash_key(KEY), scopes=("admin",)),),
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        # an admin precompute recomputes every user's list: a few examples suffice
        examples = 3 if operation.path.startswith("/admin/") else EXAMPLES

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            nonlocal sent
            sent += 1
            # a generous client timeout: on a loaded machine an admin precompute
            # of every user may take longer than schemathesis' default 10 s,
            # which would be reported as a failure though no 5xx was answered
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"},
                checks=[not_a_server_error],
                timeout=120,
            )

        try:
            check()
        except BaseException as e:  # schemathesis raises exception groups
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {e}")
    try:
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()  # close the app's store
    except ImportError:
        pass
    assert not failures, "\n\n".join(failures)
    assert sent >= 100
