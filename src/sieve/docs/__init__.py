"""The reference documentation generated from the code (`sieve.docs.reference`).

`python -m sieve.docs` rewrites `docs/reference/*.md`; `--check` only says
which pages are stale (the test suite runs the same comparison)."""
