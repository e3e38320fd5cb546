"""A seeded synthetic world with planted tastes and known click probabilities.

Used to test models (do they recover planted tastes?) and later to simulate
live traffic and A/B tests, which need ground truth: `SyntheticWorld` exposes
each item's category, each user's favourite categories and the true
probability that a user clicks an item when shown it.

The generative story:

- Categories are directions in a latent taste space; an item's latent vector
  lies near its category's direction (and partly its secondary category's).
- A user likes 1-`max_favourites` categories; the user's vector is the
  normalised sum of those directions plus noise.
- Utility = `taste_strength` × (item in a favourite category: 1 for its
  primary category, 0.5 for its secondary) + `latent_strength` × ⟨user,
  item⟩ + item quality; the click probability is the logistic of
  `base_click_logit` + utility.
- Items shown follow a Zipf-like popularity prior, so the items a user
  engages with are drawn with probability ∝ prior × click probability (the
  distribution of clicks under popularity-driven exposure).
- Each engagement becomes one event: the deepest funnel stage reached
  (view → click → cart → purchase, higher utility goes deeper) or, with
  `with_ratings`, a 1-5 rating correlated with utility.
- Item text is drawn from category-specific vocabularies, so content
  similarity recovers categories.

Everything is drawn from `numpy.random.default_rng` streams derived from
`seed`: the same config gives identical frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from sieve.config import Config, ConfigError
from sieve.data.raw import RawData
from sieve.data.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS

__all__ = ["SyntheticConfig", "SyntheticWorld", "generate"]

_CATEGORY_NAMES = [
    "action", "comedy", "drama", "horror", "romance", "science", "travel", "cooking",
    "sports", "music", "history", "fashion", "gaming", "finance", "health", "nature",
    "art", "technology", "kids", "politics",
]  # fmt: skip
_CONSONANTS = list("bcdfghjklmnprstvz")
_VOWELS = list("aeiou")


@dataclass(frozen=True)
class SyntheticConfig(Config):
    """Size and shape of a synthetic world.

    - `n_users`, `n_items`, `n_categories`: catalog and population sizes;
    - `n_factors`: dimensions of the latent taste space;
    - `events_per_user`: mean number of items a user engages with (log-normal,
      so a few heavy users), at least `min_events_per_user`;
    - `popularity_skew`: Zipf exponent of the item popularity prior (0 = uniform);
    - `taste_strength`: utility bonus of an item in a favourite category (0 = no
      planted category taste);
    - `latent_strength`: weight of the latent-vector affinity in the utility
      (personal taste within and across categories);
    - `quality_std`: spread of item quality, a taste-independent utility term;
    - `max_favourites`: each user has 1 to this many favourite categories;
    - `secondary_category_rate`: share of items with a second category;
    - `base_click_logit`: click logit of a neutral item (sets the click rate);
    - `click_given_view`, `cart_given_click`, `purchase_given_cart`: funnel
      rates for an average engagement; `funnel_slope` makes high-utility
      engagements go deeper;
    - `with_ratings`: emit "rating" events (1-5) instead of funnel events;
    - `group_b_fraction`: share of users in group "b" (group "a" the rest);
      group "b" leans towards the last half of the categories, a planted
      difference for fairness metrics;
    - `new_item_fraction`: share of items released during the event span
      (the rest exist before it); events never precede an item's release;
    - `start_time` (epoch seconds) and `span_days`: the period of the events;
    - `words_per_category`, `text_length`: item text vocabulary and length;
    - `seed`: seed of every random draw.
    """

    n_users: int = 1000
    n_items: int = 500
    n_categories: int = 10
    n_factors: int = 8
    events_per_user: float = 40.0
    min_events_per_user: int = 5
    popularity_skew: float = 1.2
    taste_strength: float = 3.0
    latent_strength: float = 1.5
    quality_std: float = 0.5
    max_favourites: int = 3
    secondary_category_rate: float = 0.2
    base_click_logit: float = -4.0
    click_given_view: float = 0.5
    cart_given_click: float = 0.3
    purchase_given_cart: float = 0.5
    funnel_slope: float = 1.0
    with_ratings: bool = False
    group_b_fraction: float = 0.3
    new_item_fraction: float = 0.2
    start_time: float = 1_600_000_000.0
    span_days: float = 90.0
    words_per_category: int = 15
    text_length: int = 12
    seed: int = 42

    def validate(self) -> None:
        positive = ("n_users", "n_items", "n_categories", "n_factors", "max_favourites")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"SyntheticConfig.{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.max_favourites > self.n_categories:
            raise ConfigError(
                f"SyntheticConfig.max_favourites: must be ≤ n_categories ({self.n_categories}), "
                f"got {self.max_favourites}"
            )
        if not 1 <= self.min_events_per_user <= self.n_items:
            raise ConfigError(
                f"SyntheticConfig.min_events_per_user: must be in 1..n_items, "
                f"got {self.min_events_per_user}"
            )
        if self.events_per_user <= 0 or self.span_days <= 0:
            raise ConfigError("SyntheticConfig.events_per_user and span_days must be > 0")
        rates = (
            "secondary_category_rate",
            "click_given_view",
            "cart_given_click",
            "purchase_given_cart",
            "group_b_fraction",
            "new_item_fraction",
        )
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(
                    f"SyntheticConfig.{name}: must be in [0, 1], got {getattr(self, name)}"
                )
        if self.words_per_category < 2 or self.text_length < 1:
            raise ConfigError("SyntheticConfig: words_per_category ≥ 2 and text_length ≥ 1 needed")


#: Catalogs up to this size are sampled exactly (over every item per user).
EXACT_SAMPLING_ITEMS = 20_000
#: Candidate pool per user in pooled sampling, as a multiple of the user's event count.
POOL_FACTOR = 8


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return float(np.log(p / (1 - p)))


def _unit(x: NDArray[np.float64]) -> NDArray[np.float64]:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class SyntheticWorld:
    """Ground truth of a synthetic dataset: catalog, planted tastes, click model.

    User and item indices are positions in `user_ids` / `item_ids`; the ids are
    zero-padded, so a `Dataset` built from `generate`'s frames has the same
    index order.
    """

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        cfg = config or SyntheticConfig()
        self.config = cfg
        seeds = np.random.SeedSequence(cfg.seed).spawn(3)
        rng = np.random.default_rng(seeds[0])
        self._text_seed = seeds[2]  # item text has its own stream
        n_u, n_i, n_c, n_f = cfg.n_users, cfg.n_items, cfg.n_categories, cfg.n_factors

        self.category_names: list[str] = [
            _CATEGORY_NAMES[c] if n_c <= len(_CATEGORY_NAMES) else f"category{c}"
            for c in range(n_c)
        ]
        self.user_ids = np.array([f"u{k:0{len(str(n_u - 1))}d}" for k in range(n_u)], dtype=object)
        self.item_ids = np.array([f"i{k:0{len(str(n_i - 1))}d}" for k in range(n_i)], dtype=object)

        # catalog: categories, latent vectors, quality, popularity, release time
        self.category_vectors = _unit(rng.normal(size=(n_c, n_f)))
        self.item_category: NDArray[np.int64] = rng.integers(0, n_c, size=n_i)
        second = (self.item_category + rng.integers(1, max(n_c, 2), size=n_i)) % n_c
        has_second = (rng.random(n_i) < cfg.secondary_category_rate) & (n_c > 1)
        self.item_secondary_category: NDArray[np.int64] = np.where(has_second, second, -1)
        membership = np.zeros((n_i, n_c))
        membership[has_second, second[has_second]] = 0.5
        membership[np.arange(n_i), self.item_category] = 1.0
        self.item_membership: NDArray[np.float64] = membership
        vec = self.category_vectors[self.item_category] + 0.5 * np.where(
            has_second[:, None], self.category_vectors[second], 0.0
        )
        self.item_vectors = _unit(vec + rng.normal(scale=0.25, size=(n_i, n_f)))
        self.item_quality = rng.normal(scale=cfg.quality_std, size=n_i)
        rank = rng.permutation(n_i)
        prior = (rank + 1.0) ** -cfg.popularity_skew
        self.popularity_prior: NDArray[np.float64] = prior / prior.sum()
        span = cfg.span_days * 86400.0
        is_new = rng.random(n_i) < cfg.new_item_fraction
        self.item_created_at = np.floor(
            np.where(
                is_new,
                cfg.start_time + rng.random(n_i) * span * 0.8,
                cfg.start_time - rng.random(n_i) * 365 * 86400.0,
            )
        )
        self.item_price = np.round(np.exp(rng.normal(3.0, 0.8, size=n_i)), 2)

        # users: group, favourite categories, latent vectors
        self.user_group = np.where(rng.random(n_u) < cfg.group_b_fraction, "b", "a")
        lean = np.where(np.arange(n_c) >= n_c // 2, 3.0, 1.0)
        self.user_favourite_categories: list[NDArray[np.int64]] = []
        fav_mask = np.zeros((n_u, n_c), dtype=bool)
        n_fav = rng.integers(1, cfg.max_favourites + 1, size=n_u)
        for u in range(n_u):
            w = lean if self.user_group[u] == "b" else np.ones(n_c)
            favs = np.sort(rng.choice(n_c, size=n_fav[u], replace=False, p=w / w.sum()))
            self.user_favourite_categories.append(favs.astype(np.int64))
            fav_mask[u, favs] = True
        self.favourite_mask: NDArray[np.bool_] = fav_mask
        self.user_vectors = _unit(
            fav_mask.astype(np.float64) @ self.category_vectors
            + rng.normal(scale=0.15, size=(n_u, n_f))
        )

        # content: per-category vocabularies of pseudo-words, plus shared filler
        words = _pseudo_words(rng, n_c * cfg.words_per_category + 30)
        self.category_words = [
            [
                self.category_names[c],
                *words[c * cfg.words_per_category : (c + 1) * cfg.words_per_category],
            ]
            for c in range(n_c)
        ]
        self.filler_words = words[n_c * cfg.words_per_category :]

    # ------------------------------------------------------------ ground truth
    def true_utility(self, user_idx: ArrayLike, item_idx: ArrayLike) -> NDArray[np.float64]:
        """Utility of user–item pairs (broadcast elementwise)."""
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        cfg = self.config
        category = np.einsum("...c,...c->...", self.favourite_mask[u], self.item_membership[i])
        latent = np.einsum("...f,...f->...", self.user_vectors[u], self.item_vectors[i])
        return cfg.taste_strength * category + cfg.latent_strength * latent + self.item_quality[i]

    def click_probability(self, users: ArrayLike, items: ArrayLike) -> NDArray[np.float64]:
        """True probability that each user clicks the paired item when shown it."""
        return _sigmoid(self.config.base_click_logit + self.true_utility(users, items))

    def preference_matrix(self) -> NDArray[np.float64]:
        """Dense users × items click probabilities."""
        cfg = self.config
        util = cfg.taste_strength * (self.favourite_mask @ self.item_membership.T)
        util += cfg.latent_strength * (self.user_vectors @ self.item_vectors.T)
        return _sigmoid(cfg.base_click_logit + util + self.item_quality[None, :])

    def sample_clicks(
        self, users: ArrayLike, items: ArrayLike, rng: np.random.Generator
    ) -> NDArray[np.bool_]:
        """Simulated click outcomes of showing each item to the paired user."""
        p = self.click_probability(users, items)
        return rng.random(p.shape) < p

    # ----------------------------------------------------------------- frames
    def sample_events(self, rng: np.random.Generator) -> pd.DataFrame:
        """Draw every user's events (one per engaged item), sorted by time."""
        cfg = self.config
        n_u, n_i = cfg.n_users, cfg.n_items
        sigma = 0.8
        mu = np.log(cfg.events_per_user) - sigma**2 / 2
        counts = np.clip(
            np.round(rng.lognormal(mu, sigma, size=n_u)), cfg.min_events_per_user, n_i
        ).astype(np.int64)

        if n_i <= EXACT_SAMPLING_ITEMS:
            u, i = self._draw_exact(counts, rng)
        else:
            u, i = self._draw_pooled(counts, rng)

        util = self.true_utility(u, i)
        z = (util - util.mean()) / (util.std() or 1.0)
        n = len(u)
        if cfg.with_ratings:
            raw = 3.0 + 1.1 * z + rng.normal(scale=0.7, size=n)
            types = np.full(n, "rating", dtype=object)
            value = np.clip(np.round(raw), 1, 5).astype(np.float64)
        else:
            stages = np.zeros(n, dtype=np.int64)
            alive = np.ones(n, dtype=bool)
            for k, rate in enumerate(
                (cfg.click_given_view, cfg.cart_given_click, cfg.purchase_given_cart), start=1
            ):
                advance = rng.random(n) < _sigmoid(_logit(rate) + cfg.funnel_slope * z)
                alive &= advance
                stages[alive] = k
            types = np.array(["view", "click", "cart", "purchase"], dtype=object)[stages]
            value = np.full(n, np.nan)

        span_end = cfg.start_time + cfg.span_days * 86400.0
        begin = np.maximum(cfg.start_time, self.item_created_at[i])
        ts = np.floor(begin + rng.random(n) * (span_end - begin))
        order = np.lexsort((i, u, ts))
        width = len(str(max(n - 1, 0)))
        frame = pd.DataFrame(
            {
                "event_id": pd.Series([f"e{k:0{width}d}" for k in range(n)], dtype="str"),
                "user_id": pd.Series(self.user_ids[u[order]], dtype="str"),
                "item_id": pd.Series(self.item_ids[i[order]], dtype="str"),
                "type": pd.Series(types[order], dtype="str"),
                "value": value[order],
                "timestamp": ts[order],
            }
        )
        return frame[EVENT_COLUMNS]

    def _draw_exact(
        self, counts: NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Gumbel top-k over the whole catalog: k items per user without
        replacement, ∝ prior × click probability. O(users × items)."""
        n_u, n_i = self.config.n_users, self.config.n_items
        log_prior = np.log(self.popularity_prior)
        users: list[NDArray[np.int64]] = []
        items: list[NDArray[np.int64]] = []
        block = max(1, 2_000_000 // n_i)
        for start in range(0, n_u, block):
            b = np.arange(start, min(start + block, n_u))
            p = self.click_probability(b[:, None], np.arange(n_i)[None, :])
            keys = log_prior[None, :] + np.log(p) + rng.gumbel(size=p.shape)
            order = np.argsort(-keys, axis=1)
            take = np.arange(n_i)[None, :] < counts[b][:, None]
            users.append(np.broadcast_to(b[:, None], order.shape)[take])
            items.append(order[take])
        return np.concatenate(users), np.concatenate(items)

    def _draw_pooled(
        self, counts: NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Large catalogs: draw a candidate pool per user from the popularity
        prior (with replacement), then Gumbel top-k by click probability within
        the pool. Approximately ∝ prior × click probability, O(users × pool)
        instead of O(users × items) — 100K × 100K takes seconds, not minutes."""
        n_u, n_i = self.config.n_users, self.config.n_items
        cdf = np.cumsum(self.popularity_prior / self.popularity_prior.sum())
        users: list[NDArray[np.int64]] = []
        items: list[NDArray[np.int64]] = []
        start = 0
        while start < n_u:
            stop = start + 1
            pool = POOL_FACTOR * int(counts[start])
            while (
                stop < n_u
                and (stop - start + 1) * max(pool, POOL_FACTOR * int(counts[stop])) < 2_000_000
            ):
                pool = max(pool, POOL_FACTOR * int(counts[stop]))
                stop += 1
            pool = min(max(pool, 64), 4 * n_i)
            b = np.arange(start, stop)
            cand = np.minimum(np.searchsorted(cdf, rng.random((len(b), pool))), n_i - 1)
            cand.sort(axis=1)
            dup = np.zeros(cand.shape, dtype=bool)
            dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
            p = self.click_probability(b[:, None], cand)
            keys = np.log(p) + rng.gumbel(size=p.shape)
            keys[dup] = -np.inf
            order = np.argsort(-keys, axis=1)
            ranked = np.take_along_axis(cand, order, axis=1)
            valid = np.isfinite(np.take_along_axis(keys, order, axis=1))
            take = (np.arange(pool)[None, :] < counts[b][:, None]) & valid
            users.append(np.broadcast_to(b[:, None], ranked.shape)[take])
            items.append(ranked[take])
            start = stop
        return np.concatenate(users), np.concatenate(items)

    def items_frame(self) -> pd.DataFrame:
        """Catalog metadata: title and text from category vocabularies, categories,
        release time and a price attribute."""
        cfg = self.config
        rng = np.random.default_rng(self._text_seed)
        titles, texts, cats = [], [], []
        for k in range(cfg.n_items):
            c1 = int(self.item_category[k])
            c2 = int(self.item_secondary_category[k])
            primary = self.category_words[c1]
            secondary = self.category_words[c2] if c2 >= 0 else primary
            source = rng.choice(3, size=cfg.text_length, p=[0.7, 0.15, 0.15])
            body = [str(rng.choice((primary, secondary, self.filler_words)[s])) for s in source]
            title_words = rng.choice(primary[1:], size=2, replace=False)
            title = " ".join(w.capitalize() for w in title_words)
            titles.append(title)
            texts.append(" ".join([title.lower(), *body]))
            cats.append([self.category_names[c1]] + ([self.category_names[c2]] if c2 >= 0 else []))
        frame = pd.DataFrame(
            {
                "item_id": pd.Series(self.item_ids, dtype="str"),
                "title": pd.Series(titles, dtype="str"),
                "text": pd.Series(texts, dtype="str"),
                "categories": pd.Series(cats, dtype=object),
                "created_at": self.item_created_at.astype(np.float64),
                "attributes": pd.Series(
                    [{"price": float(p)} for p in self.item_price], dtype=object
                ),
            }
        )
        return frame[ITEM_COLUMNS]

    def users_frame(self) -> pd.DataFrame:
        """Users with a `group` label and their (planted) favourite categories."""
        attrs = [
            {
                "group": str(g),
                "favourite_categories": [self.category_names[c] for c in favs],
            }
            for g, favs in zip(self.user_group, self.user_favourite_categories, strict=True)
        ]
        frame = pd.DataFrame(
            {
                "user_id": pd.Series(self.user_ids, dtype="str"),
                "attributes": pd.Series(attrs, dtype=object),
            }
        )
        return frame[USER_COLUMNS]


def _pseudo_words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct pronounceable pseudo-words (two or three syllables)."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        n_syl = int(rng.integers(2, 4))
        w = "".join(str(rng.choice(_CONSONANTS)) + str(rng.choice(_VOWELS)) for _ in range(n_syl))
        if w not in seen and w not in _CATEGORY_NAMES:
            seen.add(w)
            words.append(w)
    return words


def generate(config: SyntheticConfig | None = None) -> tuple[RawData, SyntheticWorld]:
    """A synthetic dataset and the world (ground truth) it was drawn from."""
    cfg = config or SyntheticConfig()
    world = SyntheticWorld(cfg)
    events_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[1])
    raw = RawData(world.sample_events(events_rng), world.items_frame(), world.users_frame())
    return raw, world
