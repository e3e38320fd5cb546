"""Training and batch scoring on Apache Spark (the `spark` extra).

- `session`: a SparkSession for a master (`local[N]`, `spark://HOST:PORT`)
  with bounded memory, stopped on exit;
- `lake`: the export folder (`sieve export`) as Spark DataFrames;
- `models`: ALS (`pyspark.ml`), popularity and trending (Spark SQL),
  item-to-item co-occurrence top-k, all computed on the executors;
- `assemble`: the collected results as a funnel's fitted state (the same
  artefacts `sieve train` saves, so the service serves it unchanged);
- `ranker`: the ranker's training rows, featurised on the executors by the
  funnel's own code path;
- `train`: `sieve spark train`; `batch`: `sieve spark batch`.

pyspark is imported only inside these modules' functions' callers: importing
this package does not need it, and `require_pyspark` says how to install it.
"""

from __future__ import annotations

INSTALL_HINT = (
    "pyspark is not installed: install the spark extra, e.g. "
    "`pip install 'sieve[spark]'` (or `pip install 'pyspark>=4.0'`); "
    "Spark also needs a Java 17+ runtime (`java` on the PATH or JAVA_HOME)"
)


class PySparkMissingError(ValueError):
    """The `spark` extra is not installed; the message says how to install it."""


def require_pyspark() -> None:
    """Raise `PySparkMissingError` (with the install command) when pyspark is absent."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise PySparkMissingError(INSTALL_HINT) from None


__all__ = ["INSTALL_HINT", "PySparkMissingError", "require_pyspark"]
