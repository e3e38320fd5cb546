"""The `sieve` command.

Its commands are defined by group in this package's modules, each registering
on `app` (from `common`) when imported: the import order below is the order of
`sieve --help`.
"""

from sieve.cli.common import app

# isort: off
from sieve.cli import evaluate, service, store, keys, models, experiments, ingest  # noqa: F401
from sieve.cli import spark  # noqa: F401
# isort: on

__all__ = ["app"]
