"""What the neural models share: the lazy PyTorch import, a seeded and
thread-bounded training session, weights ↔ arrays, and time-ordered user
sequences."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.data.dataset import Dataset
from sieve.models.base import ArrayDict

INSTALL_HINT = "install the neural extra: pip install 'sieve[neural]'"


def torch_module() -> Any:
    """PyTorch, imported on first use; a clear message when it is missing."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"this model needs PyTorch: {INSTALL_HINT}") from exc
    return torch


@contextlib.contextmanager
def torch_session(seed: int, threads: int) -> Iterator[Any]:
    """Seed PyTorch and bound its intra-op threads for a deterministic fit
    (restoring the process's thread count afterwards); yields the module."""
    torch = torch_module()
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    try:
        yield torch
    finally:
        torch.set_num_threads(before)


def to_arrays(module: Any) -> ArrayDict:
    """A module's parameters and buffers as float32 arrays, by name."""
    return ArrayDict(
        {k: v.detach().cpu().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    )


def from_arrays(module: Any, params: ArrayDict) -> None:
    """Load arrays written by `to_arrays` into a module of the same shape."""
    torch = torch_module()
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()})


def user_sequences(dataset: Dataset, max_len: int) -> list[NDArray[np.int64]]:
    """Each user's positive items in time order (oldest first), each item at
    its latest occurrence, the last `max_len` of them. Ties in time keep the
    events' order in the snapshot."""
    ev = dataset.events
    keep = ev["weight"].to_numpy(np.float64) > 0
    users = ev["user_idx"].to_numpy(np.int64)[keep]
    items = ev["item_idx"].to_numpy(np.int64)[keep]
    ts = np.nan_to_num(ev["timestamp"].to_numpy(np.float64)[keep], nan=-np.inf)
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, items = users[order], items[order]
    # keep each (user, item)'s last occurrence: scan from the end
    key = users * dataset.n_items + items
    _, last_from_end = np.unique(key[::-1], return_index=True)
    last = np.sort(len(key) - 1 - last_from_end)
    users, items = users[last], items[last]
    bounds = np.searchsorted(users, np.arange(dataset.n_users + 1))
    return [items[max(lo, hi - max_len) : hi] for lo, hi in itertools.pairwise(bounds)]


def row_sequence(row: sp.csr_matrix, max_len: int) -> NDArray[np.int64]:
    """A history row as a sequence, oldest first: ordered by the row's
    values (pass last-event times, e.g. `Dataset.last_time`, for the true
    order; with event weights the strongest items count as the latest),
    ties by item index; the last `max_len`."""
    r = sp.csr_matrix(row)
    items = r.indices.astype(np.int64)
    order = np.lexsort((items, r.data))
    return items[order][-max_len:]
