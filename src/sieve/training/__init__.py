"""Training: the store as a snapshot, bulk import, `sieve train` and the background retrainer.

Used by the CLI, the worker and the service alike; it never imports `sieve.serve`.
"""
