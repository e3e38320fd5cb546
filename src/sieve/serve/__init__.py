"""The REST service: `create_app(settings)` builds the FastAPI app.

- `sieve.settings`: what the service reads (`SIEVE_*`, a TOML file, flags);
- `sieve.serve.auth`: API keys (hashed in settings) with read/write/admin scopes;
- `sieve.serve.service`: the facade over store, cache and the serving
  snapshot; its parts: `holder` (snapshots, swap, variants), `ingest` (the
  event write path), `planner` (experiment arms → what to serve), `answers`
  (precomputed lists), `impressions` (the impression log);
- `sieve.serve.routes`: one router per resource (items, users, events,
  recommendations, system);
- `sieve.serve.schemas`: the request/response envelopes.
"""

from sieve.serve.app import create_app

__all__ = ["create_app"]
