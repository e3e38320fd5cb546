"""Monitoring: Prometheus metrics of the service and drift checks that ask for a retrain.

- `sieve.monitoring.stages`: per-stage timings of the funnel, reported to
  whoever listens (a no-op until an app registers a sink);
- `sieve.monitoring.metrics`: `ServingMetrics`, the service's metrics in a
  registry of its own (one per engine, so many apps can live in one process);
- `sieve.monitoring.drift`: population-stability indices and the CTR-drop
  check, and `DriftMonitor`, which runs them and writes `model_dir/RETRAIN`.

This module imports nothing: the funnel imports `stages` on its hot path and
must not pay for `prometheus_client` or pandas.
"""
