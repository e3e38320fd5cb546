"""Memory budgets for model fitting: estimate the peak first, refuse before allocating.

A model whose fit grows faster than the data (EASE's dense item × item
inverse: n_items² floats) says what its fit will need (`estimate_fit_bytes`)
and `Recommender.fit` compares it with the budget before anything is
allocated, raising `MemoryBudgetError` with the estimate and the budget. A
model that has a leaner variant switches to it instead and says so with a
`ModelNotice` warning (the evaluation reports it next to the model).

The budget, in order: the innermost `memory_budget(...)` block; the
`SIEVE_MEMORY_BUDGET` environment variable (`"4G"`, `"512M"`, bytes); else
80% of the memory available now (`MemAvailable` of /proc/meminfo, or the
free physical pages where there is no /proc).
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

#: The share of the available memory a fit may plan to use when no budget is set.
DEFAULT_SHARE = 0.8
ENV_VAR = "SIEVE_MEMORY_BUDGET"

_budget: contextvars.ContextVar[int | None] = contextvars.ContextVar("memory_budget", default=None)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryBudgetError(MemoryError):
    """A fit whose estimated peak memory is over the budget; nothing was allocated."""

    def __init__(self, model: str, estimate: int, budget: int, hint: str = "") -> None:
        self.model, self.estimate, self.budget = model, estimate, budget
        text = (
            f"{model}: fitting needs about {format_bytes(estimate)} at its peak, over the "
            f"memory budget of {format_bytes(budget)}"
        )
        super().__init__(f"{text}; {hint}" if hint else text)


class ModelNotice(UserWarning):
    """A model chose a different variant than configured (e.g. to fit in memory)."""


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5g', '1000000' → bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGTkmgt]?)i?[Bb]?\s*", text)
    if m is None:
        raise ValueError(f"not a memory size: {text!r} (e.g. 4G, 512M or a byte count)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"a memory budget must be > 0, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes as a short human figure: '2.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def available_bytes() -> int:
    """Memory available to a new allocation now (MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # no way to ask: assume a small machine


def current_budget() -> int:
    """The memory a fit may plan to use (see the module docstring)."""
    inner = _budget.get()
    if inner is not None:
        return inner
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env)
    return int(DEFAULT_SHARE * available_bytes())


@contextmanager
def memory_budget(n_bytes: int | None) -> Iterator[None]:
    """Fits inside the block plan with `n_bytes` (None: the default budget)."""
    token = _budget.set(n_bytes)
    try:
        yield
    finally:
        _budget.reset(token)
