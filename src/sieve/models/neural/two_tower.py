"""A two-tower retrieval model trained with an in-batch sampled softmax.

Item tower: v_i = normalise(id_i + Σ_t w_it · f_t), an id embedding plus the
mean embedding of the item's features (its category tokens and the words of
its title and text, `item_document`). Id embeddings start at zero, so an item
nobody interacted with keeps the vector its features give it.

User tower: h = mean of the item vectors of the user's history, a = mean
embedding of the user's attribute tokens ("occupation=writer",
"age~5": numbers in log2 buckets), u = normalise(h + W₂ relu(W₁ [h; a] + b₁)
+ b₂). There is no per-user parameter: any user, known or new, is scored from
their history row (fold-in is one forward pass, no retraining).

Training (Yi et al., RecSys 2019): each (user, item) interaction is a
positive; the user tower sees the user's history without that item (up to
`history_len` items, resampled each epoch; hidden in `history_dropout` of the
examples, so it learns to answer from attributes alone too); the other positives of the batch
are the negatives, and their logits are corrected by −log q(item), the
item's share of the positives, so popular items are not over-penalised.
Logits are cosines divided by `temperature`.

Only the item vectors and the user tower's weights are state: scoring is
NumPy (PyTorch is needed to train only), and the item vectors are what the
funnel's ANN source indexes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import CountVectorizer

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import ArrayDict, Recommender
from sieve.models.content import item_documents
from sieve.models.neural.common import to_arrays, torch_session

#: The user tower's weights kept in the state (PyTorch parameter names).
USER_PARAMS = ("attr.weight", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig(Config):
    """Two-tower hyperparameters.

    - `dim`: embedding size of both towers (the ANN vectors' dimension).
    - `hidden`: width of the user tower's hidden layer.
    - `epochs`, `batch_size`, `learning_rate`, `weight_decay`: Adam training.
    - `temperature`: divides the cosine logits (smaller = sharper softmax).
    - `logq`: subtract log q(item) from the in-batch negatives' logits.
    - `history_len`: history items the user tower sees per training example.
    - `history_dropout`: share of training examples whose history is hidden,
      so the user tower also learns to answer from attributes alone (a
      known user without events).
    - `text_features`: most frequent item-text tokens embedded (0: none).
    - `text_min_df`: tokens found in fewer items are dropped.
    - `attribute_min_count`: user attribute tokens held by fewer users are dropped.
    - `seed`, `num_threads`: seeding and PyTorch threads (fixed for
      deterministic fits).
    - `max_seconds`: stop training after the epoch that passes this many
      seconds (0: no limit), so a fit stays bounded on large data.
    """

    dim: int = 64
    hidden: int = 128
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    temperature: float = 0.05
    logq: bool = True
    history_len: int = 50
    history_dropout: float = 0.1
    text_features: int = 2000
    text_min_df: int = 2
    attribute_min_count: int = 5
    seed: int = 42
    num_threads: int = 1
    max_seconds: float = 0.0

    def validate(self) -> None:
        for name in ("dim", "hidden", "epochs", "batch_size", "history_len", "num_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TwoTowerConfig.{name} must be >= 1")
        for name in ("learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TwoTowerConfig.{name} must be > 0")
        for name in ("weight_decay", "text_features", "max_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TwoTowerConfig.{name} must be >= 0")
        if not 0 <= self.history_dropout < 1:
            raise ConfigError("TwoTowerConfig.history_dropout must be in [0, 1)")
        if self.text_min_df < 1 or self.attribute_min_count < 1:
            raise ConfigError("TwoTowerConfig.text_min_df and attribute_min_count must be >= 1")


@dataclasses.dataclass(frozen=True)
class TwoTowerState:
    """Item vectors (items × dim, unit length), the user tower's weights, the
    attribute vocabulary and the known users' attribute rows (users ×
    attributes, each row summing to 1)."""

    item_vectors: NDArray[np.float32]
    user_params: ArrayDict
    attribute_tokens: NDArray[np.object_]
    user_attributes: sp.csr_matrix


class TwoTower(Recommender[TwoTowerConfig, TwoTowerState]):
    """Two-tower retrieval: cosine of the user tower's and item tower's vectors."""

    name = "two-tower"
    config_class = TwoTowerConfig
    state_class = TwoTowerState

    # ----------------------------------------------------------- training
    def _fit(self, dataset: Dataset) -> TwoTowerState:
        cfg = self.config
        features = item_features(dataset, cfg.text_features, cfg.text_min_df)
        tokens, attrs = user_attributes(dataset.users["attributes"], cfg.attribute_min_count)
        with torch_session(cfg.seed, cfg.num_threads) as torch:
            net = _network(torch, dataset.n_items, features.shape[1], len(tokens), cfg)
            _train(torch, net, dataset.matrix, features, attrs, cfg)
            net.eval()
            with torch.no_grad():
                vectors = [
                    net.items(torch, np.arange(s, min(s + 4096, dataset.n_items)), features)
                    for s in range(0, dataset.n_items, 4096)
                ]
            item_vectors = (
                torch.cat(vectors).numpy().astype(np.float32)
                if vectors
                else np.zeros((0, cfg.dim), np.float32)
            )
            params = to_arrays(net)
        return TwoTowerState(
            item_vectors=item_vectors,
            user_params=ArrayDict({k: params[k] for k in USER_PARAMS}),
            attribute_tokens=tokens,
            user_attributes=attrs,
        )

    # ------------------------------------------------------------ scoring
    @property
    def n_items(self) -> int:
        return int(self.state.item_vectors.shape[0])

    def user_vectors(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        """The user tower (NumPy): unit vectors from the history rows (only
        which items, not the values) and, for known users, their attributes."""
        state = self.state
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        if rows.shape[0] != len(users):
            raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} users")
        n_known = state.user_attributes.shape[0]
        bad = users[(users < -1) | (users >= n_known)]
        if len(bad):
            raise IndexError(f"user index {int(bad[0])} is outside -1..{n_known - 1}")
        binary = rows.copy()
        binary.data[:] = 1.0
        counts = np.asarray(binary.sum(axis=1)).ravel()
        h = np.asarray(binary @ state.item_vectors) / np.maximum(counts, 1.0)[:, None]
        p = state.user_params
        a = np.zeros((len(users), h.shape[1]), np.float32)
        known = users >= 0
        if known.any() and state.user_attributes.shape[1]:
            a[known] = state.user_attributes[users[known]] @ p["attr.weight"]
        z = np.maximum(np.hstack([h, a]) @ p["fc1.weight"].T + p["fc1.bias"], 0.0)
        u = h + z @ p["fc2.weight"].T + p["fc2.bias"]
        return _unit(u).astype(np.float32)

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        return np.asarray(
            self.user_vectors(users, user_items) @ self.state.item_vectors.T, dtype=np.float32
        )

    def item_vectors(self) -> NDArray[np.float32]:
        """The item tower's unit vectors (what the ANN index holds)."""
        return self.state.item_vectors


# ==================================================================== inputs
def item_features(dataset: Dataset, max_features: int, min_df: int) -> sp.csr_matrix:
    """Items × tokens (category tokens and text words), each non-empty row
    summing to 1: the mean-pooling weights of the item tower."""
    n = dataset.n_items
    if max_features == 0 or n == 0:
        return sp.csr_matrix((n, 0), dtype=np.float32)
    docs = item_documents(dataset)
    vectorizer = CountVectorizer(
        binary=True,
        min_df=min(min_df, n),
        max_features=max_features,
        stop_words="english",
    )
    try:
        counts = sp.csr_matrix(vectorizer.fit_transform(docs), dtype=np.float32)
    except ValueError:  # no token survives: no text features
        return sp.csr_matrix((n, 0), dtype=np.float32)
    return _row_normalise(counts)


def attribute_tokens(attributes: Mapping[str, Any]) -> list[str]:
    """A user's attribute dict as tokens: "key=value" for text and flags,
    "key~b" for numbers (b = signed log2 bucket), one token per list element."""
    out: list[str] = []
    for key, value in attributes.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, bool | str):
                if str(v).strip():
                    out.append(f"{key}={str(v).strip().lower()}")
            elif isinstance(v, int | float) and math.isfinite(float(v)):
                bucket = int(np.sign(v) * np.floor(np.log2(abs(float(v)) + 1.0)))
                out.append(f"{key}~{bucket}")
    return out


def user_attributes(
    attributes: Iterable[Any], min_count: int
) -> tuple[NDArray[np.object_], sp.csr_matrix]:
    """The attribute vocabulary (tokens held by at least `min_count` users,
    sorted) and the users × tokens matrix, rows summing to 1."""
    per_user = [
        sorted(set(attribute_tokens(a))) if isinstance(a, Mapping) else [] for a in attributes
    ]
    counts: dict[str, int] = {}
    for toks in per_user:
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
    vocab = sorted(t for t, c in counts.items() if c >= min_count)
    index = {t: k for k, t in enumerate(vocab)}
    rows, cols = [], []
    for u, toks in enumerate(per_user):
        for t in toks:
            if t in index:
                rows.append(u)
                cols.append(index[t])
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(per_user), len(vocab))
    )
    return np.array(vocab, dtype=object), _row_normalise(matrix)


def _row_normalise(m: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(m.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / sums) @ m, dtype=np.float32)


def _unit(x: NDArray[np.floating]) -> NDArray[np.floating]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


# =================================================================== network
def _network(torch: Any, n_items: int, n_features: int, n_attrs: int, cfg: TwoTowerConfig) -> Any:
    nn = torch.nn
    functional = torch.nn.functional

    class Net(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.item_id = nn.Embedding(max(n_items, 1), cfg.dim)
            nn.init.zeros_(self.item_id.weight)
            self.item_feat = nn.EmbeddingBag(max(n_features, 1), cfg.dim, mode="sum")
            nn.init.normal_(self.item_feat.weight, std=0.1)
            self.attr = nn.EmbeddingBag(max(n_attrs, 1), cfg.dim, mode="sum")
            nn.init.normal_(self.attr.weight, std=0.1)
            self.fc1 = nn.Linear(2 * cfg.dim, cfg.hidden)
            self.fc2 = nn.Linear(cfg.hidden, cfg.dim)
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

        def items(self, torch: Any, idx: NDArray[np.int64], features: sp.csr_matrix) -> Any:
            e = self.item_id(torch.from_numpy(idx))
            if features.shape[1]:
                e = e + self.item_feat(*_bag(torch, features[idx]))
            return functional.normalize(e, dim=1)

        def users(self, torch: Any, h: Any, attrs: sp.csr_matrix) -> Any:
            a = (
                self.attr(*_bag(torch, attrs))
                if attrs.shape[1]
                else torch.zeros(h.shape[0], cfg.dim)
            )
            u = h + self.fc2(torch.relu(self.fc1(torch.cat([h, a], dim=1))))
            return functional.normalize(u, dim=1)

    return Net()


def _bag(torch: Any, rows: sp.csr_matrix) -> tuple[Any, Any, Any]:
    """EmbeddingBag inputs (indices, offsets, per-sample weights) of CSR rows."""
    rows = sp.csr_matrix(rows)
    return (
        torch.from_numpy(rows.indices.astype(np.int64)),
        torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
        torch.from_numpy(rows.data.astype(np.float32)),
    )


def _sampled_histories(
    matrix: sp.csr_matrix, length: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Users × `length`: a random subset of each user's items, padded with -1."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    order = np.lexsort((rng.random(len(rows)), rows))
    rank = np.arange(len(rows)) - matrix.indptr[rows]
    keep = rank < length
    out = np.full((matrix.shape[0], length), -1, np.int64)
    out[rows[keep], rank[keep]] = matrix.indices[order][keep]
    return out


def _train(
    torch: Any,
    net: Any,
    matrix: sp.csr_matrix,
    features: sp.csr_matrix,
    attrs: sp.csr_matrix,
    cfg: TwoTowerConfig,
) -> None:
    """In-batch sampled softmax with the log q correction (module doc)."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    pair_users = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    pair_items = m.indices.astype(np.int64)
    if len(pair_items) < 2:
        return
    counts = np.bincount(pair_items, minlength=m.shape[1]).astype(np.float64)
    logq = torch.from_numpy(np.log(np.maximum(counts, 1.0) / counts.sum()).astype(np.float32))
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        hist_all = _sampled_histories(m, cfg.history_len, rng)
        perm = rng.permutation(len(pair_items))
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            ub, ib = pair_users[b], pair_items[b]
            hist = hist_all[ub]
            valid = hist >= 0
            mask = valid & (hist != ib[:, None])
            mask[rng.random(len(b)) < cfg.history_dropout] = False
            uniq, inv = np.unique(np.concatenate([hist[valid], ib]), return_inverse=True)
            vecs = net.items(torch, uniq, features)
            pos = np.zeros(hist.shape, np.int64)
            pos[valid] = inv[: int(valid.sum())]
            w = torch.from_numpy(mask.astype(np.float32))
            h = (vecs[torch.from_numpy(pos)] * w[:, :, None]).sum(1) / w.sum(1).clamp(min=1.0)[
                :, None
            ]
            u = net.users(torch, h, attrs[ub])
            target = vecs[torch.from_numpy(inv[int(valid.sum()) :])]
            logits = u @ target.T / cfg.temperature
            if cfg.logq:
                logits = logits - logq[torch.from_numpy(ib)][None, :]
            same = torch.from_numpy((ib[None, :] == ib[:, None]) & ~np.eye(len(b), dtype=bool))
            logits = logits.masked_fill(same, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if cfg.max_seconds and time.perf_counter() - start > cfg.max_seconds:
            break
