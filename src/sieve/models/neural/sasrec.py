"""SASRec: a self-attentive sequential next-item model (Kang & McAuley,
ICDM 2018), trained with a full softmax over the catalog (the cross-entropy
variant of Klenitskiy & Vasilev, RecSys 2023, stronger than the original
one-negative loss) or, on large catalogs, over `negatives` shared sampled
items.

A user's sequence is their positive items in time order (each at its latest
occurrence). The network embeds the last `max_len` of them plus positions,
runs causal self-attention blocks (pre-norm Transformer layers) and reads the
output at the last position: the user's vector; an item's score is its inner
product with the item's embedding. Training predicts every next item of every
window of `max_len` items of every user's sequence.

State: the network's weights (arrays), and each training user's vector from
their last `max_len` training items, like a factor model's user factors, so
known users are scored without PyTorch. A user the model has not seen (-1)
is encoded from their history row, ordered by the row's values (pass
last-event times for the true order, `row_sequence`), and the funnel's
session source passes the live session (`Query.recent`) to
`sequence_scores`; both run the network (PyTorch needed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from sieve.config import Config, ConfigError
from sieve.data.dataset import Dataset
from sieve.models.base import ArrayDict, Recommender
from sieve.models.neural.common import (
    from_arrays,
    row_sequence,
    to_arrays,
    torch_module,
    torch_session,
    user_sequences,
)


@dataclasses.dataclass(frozen=True)
class SASRecConfig(Config):
    """SASRec hyperparameters.

    - `dim`: item and position embedding size.
    - `blocks`, `heads`: self-attention layers and heads per layer.
    - `dropout`: dropout rate in training.
    - `max_len`: most recent items the network reads.
    - `epochs`, `batch_size`, `learning_rate`: Adam training.
    - `negatives`: 0 = softmax over the whole catalog; otherwise this many
      uniformly sampled items per batch are the negatives (large catalogs).
    - `seed`, `num_threads`: seeding and PyTorch threads while training.
    - `max_seconds`: stop after the epoch that passes this many seconds (0: no limit).
    """

    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.003
    negatives: int = 0
    seed: int = 42
    num_threads: int = 1
    max_seconds: float = 0.0

    def validate(self) -> None:
        for name in ("dim", "blocks", "heads", "max_len", "epochs", "batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SASRecConfig.{name} must be >= 1")
        if self.dim % self.heads:
            raise ConfigError("SASRecConfig.heads must divide dim")
        if not 0 <= self.dropout < 1:
            raise ConfigError("SASRecConfig.dropout must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ConfigError("SASRecConfig.learning_rate must be > 0")
        if self.negatives < 0 or self.max_seconds < 0:
            raise ConfigError("SASRecConfig.negatives and max_seconds must be >= 0")


@dataclasses.dataclass(frozen=True)
class SASRecState:
    """The network's weights (`item.weight` row 0 is padding, row i+1 item
    i) and the training users' vectors (users × dim)."""

    params: ArrayDict
    user_vectors: NDArray[np.float32]


class SASRec(Recommender[SASRecConfig, SASRecState]):
    """Next-item scores from self-attention over the user's recent items."""

    name = "sasrec"
    config_class = SASRecConfig
    state_class = SASRecState

    def __init__(self, config: SASRecConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._net: tuple[SASRecState, Any] | None = None

    # ----------------------------------------------------------- training
    def _fit(self, dataset: Dataset) -> SASRecState:
        cfg = self.config
        sequences = user_sequences(dataset, max(dataset.n_items, 1))
        with torch_session(cfg.seed, cfg.num_threads) as torch:
            net = _network(torch, dataset.n_items, cfg)
            _train(torch, net, sequences, dataset.n_items, cfg)
            net.eval()
            users = _encode(torch, net, [s[-cfg.max_len :] for s in sequences], cfg.max_len)
            params = to_arrays(net)
        state = SASRecState(params=params, user_vectors=users)
        self._net = (state, net)
        return state

    # ------------------------------------------------------------ scoring
    @property
    def item_embeddings(self) -> NDArray[np.float32]:
        return self.state.params["item.weight"][1:]

    @property
    def n_items(self) -> int:
        return int(self.item_embeddings.shape[0])

    def encode(self, sequences: Sequence[NDArray[np.int64]]) -> NDArray[np.float32]:
        """User vectors of item sequences (oldest first; the last `max_len`
        count). Needs PyTorch."""
        for seq in sequences:
            self._check_items(np.asarray(seq, dtype=np.int64))
        torch = torch_module()
        state = self.state
        if self._net is None or self._net[0] is not state:
            net = _network(torch, self.n_items, self.config)
            from_arrays(net, state.params)
            net.eval()
            self._net = (state, net)
        cut = [np.asarray(s, dtype=np.int64)[-self.config.max_len :] for s in sequences]
        return _encode(torch, self._net[1], cut, self.config.max_len)

    def sequence_scores(self, sequences: Sequence[NDArray[np.int64]]) -> NDArray[np.float32]:
        """Next-item scores (len(sequences) × n_items) of item sequences,
        oldest first: the session source's entry point."""
        return np.asarray(self.encode(sequences) @ self.item_embeddings.T, dtype=np.float32)

    def score_batch(
        self, users: NDArray[np.int64], user_items: sp.csr_matrix
    ) -> NDArray[np.float32]:
        users = np.asarray(users, dtype=np.int64)
        rows = sp.csr_matrix(user_items)
        if rows.shape[0] != len(users):
            raise ValueError(f"user_items has {rows.shape[0]} rows for {len(users)} users")
        n_known = self.state.user_vectors.shape[0]
        bad = users[(users < -1) | (users >= n_known)]
        if len(bad):
            raise IndexError(f"user index {int(bad[0])} is outside -1..{n_known - 1}")
        vecs = np.empty((len(users), self.config.dim), np.float32)
        known = users >= 0
        vecs[known] = self.state.user_vectors[users[known]]
        unknown = np.flatnonzero(~known)
        if len(unknown):
            seqs = [row_sequence(rows[r], self.config.max_len) for r in unknown]
            vecs[unknown] = self.encode(seqs)
        return np.asarray(vecs @ self.item_embeddings.T, dtype=np.float32)

    def item_vectors(self) -> NDArray[np.float32]:
        return self.item_embeddings


# =================================================================== network
def _network(torch: Any, n_items: int, cfg: SASRecConfig) -> Any:
    nn = torch.nn

    class Net(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
            nn.init.normal_(self.item.weight, std=0.05)
            with torch.no_grad():
                self.item.weight[0].zero_()
            self.pos = nn.Embedding(cfg.max_len, cfg.dim)
            nn.init.normal_(self.pos.weight, std=0.05)
            self.drop = nn.Dropout(cfg.dropout)
            self.layers = nn.ModuleList(
                [
                    nn.TransformerEncoderLayer(
                        cfg.dim,
                        cfg.heads,
                        dim_feedforward=cfg.dim,
                        dropout=cfg.dropout,
                        batch_first=True,
                        norm_first=True,
                    )
                    for _ in range(cfg.blocks)
                ]
            )
            self.norm = nn.LayerNorm(cfg.dim)

        def forward(self, seq: Any) -> Any:
            """Outputs (B × L × dim) of left-padded sequences (0 = padding)."""
            length = seq.shape[1]
            keep = (seq > 0).unsqueeze(-1).float()
            x = self.item(seq) * math.sqrt(cfg.dim) + self.pos.weight[-length:][None]
            x = self.drop(x) * keep
            # causal, and no attending to padding (a padding row attends to itself)
            eye = torch.eye(length, dtype=torch.bool)
            allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None] & (
                (seq > 0)[:, None, :] | eye[None]
            )
            mask = (~allowed).repeat_interleave(cfg.heads, dim=0)
            for layer in self.layers:
                x = layer(x, src_mask=mask) * keep
            return self.norm(x)

    return Net()


def _pad(sequences: Sequence[NDArray[np.int64]], length: int) -> NDArray[np.int64]:
    """Left-padded B × length array of item index + 1 (0 = padding)."""
    out = np.zeros((len(sequences), length), np.int64)
    for r, s in enumerate(sequences):
        s = np.asarray(s[-length:], dtype=np.int64)
        if len(s):
            out[r, length - len(s) :] = s + 1
    return out


def _encode(
    torch: Any, net: Any, sequences: Sequence[NDArray[np.int64]], length: int
) -> NDArray[np.float32]:
    """The last position's output of each sequence (the user vector)."""
    dim = net.item.weight.shape[1]
    out = np.zeros((len(sequences), dim), np.float32)
    with torch.inference_mode():
        for s in range(0, len(sequences), 512):
            seq = torch.from_numpy(_pad(sequences[s : s + 512], length))
            out[s : s + len(seq)] = net(seq)[:, -1, :].numpy()
    return out


def _windows(sequences: Sequence[NDArray[np.int64]], length: int) -> list[NDArray[np.int64]]:
    """Every user's sequence cut into windows of `length` + 1 items from its
    end (overlapping by one item), so every item after the first is a target once."""
    out: list[NDArray[np.int64]] = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            out.append(seq[max(0, end - length - 1) : end])
            end -= length
    return out


def _train(
    torch: Any, net: Any, sequences: Sequence[NDArray[np.int64]], n_items: int, cfg: SASRecConfig
) -> None:
    windows = _windows(sequences, cfg.max_len)
    if not windows or n_items == 0:
        return
    padded = _pad(windows, cfg.max_len + 1)
    inputs, targets = padded[:, :-1], padded[:, 1:]
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98))
    start = time.perf_counter()
    net.train()
    for _ in range(cfg.epochs):
        perm = rng.permutation(len(windows))
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            x = torch.from_numpy(inputs[b])
            y = torch.from_numpy(targets[b])
            h = net(x)
            valid = y > 0
            h, y = h[valid], y[valid] - 1
            items = net.item.weight[1:]
            if cfg.negatives and cfg.negatives < n_items:
                neg = torch.from_numpy(rng.choice(n_items, cfg.negatives, replace=False))
                pos_logit = (h * items[y]).sum(-1, keepdim=True)
                neg_logit = h @ items[neg].T
                neg_logit = neg_logit.masked_fill(neg[None, :] == y[:, None], float("-inf"))
                logits = torch.cat([pos_logit, neg_logit], dim=1)
                loss = torch.nn.functional.cross_entropy(logits, torch.zeros_like(y))
            else:
                loss = torch.nn.functional.cross_entropy(h @ items.T, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if cfg.max_seconds and time.perf_counter() - start > cfg.max_seconds:
            break
