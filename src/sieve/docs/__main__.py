"""`python -m sieve.docs [--check] [FOLDER]`: write (or check) the reference pages."""

from __future__ import annotations

import sys
from pathlib import Path

from sieve.docs.reference import REFERENCE_DIR, REGENERATE, stale, write


def main(argv: list[str]) -> int:
    """Write the pages into FOLDER (default docs/reference); with --check,
    exit 1 naming the stale pages instead."""
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    folder = Path(rest[0]) if rest else REFERENCE_DIR
    if check:
        old = stale(folder)
        if old:
            print(f"stale reference pages in {folder}: {old}; run `{REGENERATE}`")
            return 1
        print(f"reference pages in {folder} are current")
        return 0
    for path in write(folder):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
