"""The REST service: `create_app(settings)` builds the FastAPI app.

- `sieve.settings`: what the service reads (`SIEVE_*`, a TOML file, flags);
- `sieve.serve.auth`: API keys (hashed in settings) with read/write/admin scopes;
- `sieve.serve.engine`: store + cache + the current funnel; training, the
  batch precompute and the hybrid (cached or live) answers;
- `sieve.serve.routes`: one router per resource (items, users, events,
  recommendations, system);
- `sieve.serve.schemas`: the request/response envelopes.
"""

from sieve.serve.app import create_app

__all__ = ["create_app"]
