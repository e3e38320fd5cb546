"""Multi-armed bandits with logged propensities and cache-persisted state.

Every policy has the same interface:

- ``select(arms, rng, n=1, features=None) -> (chosen, propensities)``: picks
  ``n`` distinct arms among the candidate ``arms`` (exploration slots of a list,
  or one variant of an experiment for adaptive allocation) and returns, for
  each chosen arm, its *propensity*: the probability that the policy includes
  that arm in its choice, given the state. For ``n = 1`` these are the
  probabilities of choosing each arm, summing to 1 over ``probabilities``;
  for ``n > 1`` they are inclusion probabilities (summing to n). Log them with
  the impression: off-policy evaluation (`sieve.evaluate.offpolicy`) divides
  by them.
- ``probabilities(arms, rng, n=1, features=None)``: those propensities for
  every candidate arm.
- ``update(arm, reward)`` / ``update_many(arms, rewards)``: apply rewards
  (clicks: 0/1) from events as they arrive.
- ``save(cache, key)`` / ``load(cache, key)``: small JSON state (counts and
  sums; LinUCB: the A matrix and b vector) in a `sieve.storage.Cache`, memory
  or Redis. ``load_policy`` restores any policy type.

Policies (ties are broken by the order of ``arms``, deterministically, so the
propensities are exact):

- `EpsilonGreedy`: with probability 1 − ε the n arms with the best mean reward
  (untried arms first), else n arms uniformly at random. Propensity of an arm
  in the greedy set (1 − ε) + ε·n/m, otherwise ε·n/m (m candidates).
- `UCB1` (Auer et al., 2002): the n arms with the largest
  x̄_a + c·√(2·ln N / n_a), N = total pulls, untried arms first.
  Deterministic: propensity 1.
- `ThompsonSampling`: Beta(α₀ + s_a, β₀ + n_a − s_a) posteriors; one posterior
  draw, its n best arms. Propensities are Monte Carlo: the share of
  ``n_draws`` posterior draws in which the arm is among the n best (draw 0 is
  the one acted on, so a chosen arm's propensity is ≥ 1/n_draws, never 0).
- `LinUCB` (Li et al., 2010, shared model): reward ≈ θᵀx for the feature
  vector x of each arm; θ = A⁻¹b with A = λI + Σxxᵀ, b = Σr·x; picks the n
  largest θᵀx + α·√(xᵀA⁻¹x). Deterministic: propensity 1.

Size: the four policies share one interface, one propensity contract and one
state format in the cache; each policy is a short class of its own.

Longer than most modules: five policies behind one interface and one state
format, compared side by side.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sieve.config import Config, ConfigError
from sieve.storage.cache import Cache, CacheError

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

__all__ = [
    "UCB1",
    "BanditPolicy",
    "CountPolicy",
    "EpsilonGreedy",
    "EpsilonGreedyConfig",
    "LinUCB",
    "LinUCBConfig",
    "ThompsonConfig",
    "ThompsonSampling",
    "UCB1Config",
    "load_policy",
    "restore_policy",
]

_POLICIES: dict[str, type[BanditPolicy]] = {}


def _check_n(arms: Sequence[str], n: int) -> None:
    if len(arms) == 0:
        raise ValueError("select needs at least one candidate arm")
    if len(set(arms)) != len(arms):
        raise ValueError("candidate arms must be distinct")
    if not 1 <= n <= len(arms):
        raise ValueError(f"n must be in 1..{len(arms)} (the number of candidates), got {n}")


def _top(keys: FloatArray, n: int) -> NDArray[np.int64]:
    """Indices of the n largest keys, ties broken by position (stable)."""
    return np.argsort(-keys, kind="stable")[:n].astype(np.int64)


class BanditPolicy(ABC):
    """Common interface; subclasses hold a `Config` and a JSON-able state."""

    name: ClassVar[str]
    config: Config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _POLICIES[cls.name] = cls

    @abstractmethod
    def probabilities(
        self,
        arms: Sequence[str],
        rng: np.random.Generator | None = None,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> FloatArray:
        """Inclusion probability of each candidate arm (sums to n)."""

    @abstractmethod
    def select(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> tuple[list[str], FloatArray]:
        """``n`` distinct arms and the propensity of each."""

    @abstractmethod
    def update(self, arm: str, reward: float, features: ArrayLike | None = None) -> None:
        """Apply one observed reward."""

    def update_many(
        self, arms: Sequence[str], rewards: ArrayLike, features: ArrayLike | None = None
    ) -> None:
        """Apply a batch of rewards (same result as calling `update` for each)."""
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if len(arms) != r.size:
            raise ValueError(f"arms and rewards must pair up ({len(arms)} != {r.size})")
        x = None if features is None else np.asarray(features, dtype=np.float64)
        for i, arm in enumerate(arms):
            self.update(arm, float(r[i]), None if x is None else x[i])

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The learned state (JSON-able)."""

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "config": self.config.to_dict(), "state": self.state_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        policy = _POLICIES.get(str(data.get("policy")))
        if policy is None:
            raise ValueError(f"unknown policy {data.get('policy')!r}; known: {sorted(_POLICIES)}")
        if not issubclass(policy, cls):
            raise TypeError(f"stored policy is {policy.__name__}, not {cls.__name__}")
        out = policy._from_config(data.get("config", {}))
        out._load_state(data.get("state", {}))
        return out

    @classmethod
    @abstractmethod
    def _from_config(cls, config: dict[str, Any]) -> Self: ...

    def save(self, cache: Cache, key: str, ttl: float | None = None) -> None:
        """Store config + state as JSON at ``key``."""
        cache.set_json(key, self.to_dict(), ttl)

    @classmethod
    def load(cls, cache: Cache, key: str) -> Self:
        """The policy stored at ``key`` (KeyError if absent)."""
        data = cache.get_json(key)
        if data is None:
            raise KeyError(f"no bandit state at {key!r} in {cache.url}")
        return cls.from_dict(data)


def load_policy(cache: Cache, key: str) -> BanditPolicy:
    """Whatever policy is stored at ``key``."""
    return BanditPolicy.load(cache, key)


def restore_policy(cache: Cache | None, key: str, fresh: BanditPolicy) -> BanditPolicy:
    """The policy stored at ``key``, or ``fresh`` when there is none (or no
    cache, or an unreadable state: logged, then started afresh)."""
    if cache is None:
        return fresh
    try:
        return BanditPolicy.load(cache, key)
    except KeyError:
        return fresh
    except (CacheError, ValueError, TypeError):
        log.warning("bandit state at %r unreadable: starting afresh", key)
        return fresh


# --------------------------------------------------------- count-based policies
class _CountPolicy(BanditPolicy):
    """Per-arm pull counts n_a and reward sums s_a."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.pulls = np.zeros(0)
        self.rewards = np.zeros(0)
        #: all pulls of every arm (UCB1's N) when the state holds only some
        #: arms (a shared bandit reads the candidates'); None: the sum of `pulls`
        self.total: float | None = None

    @property
    def arms(self) -> list[str]:
        return list(self._index)

    def _ids(self, arms: Sequence[str]) -> NDArray[np.int64]:
        new = [a for a in dict.fromkeys(arms) if a not in self._index]
        if new:
            for a in new:
                self._index[str(a)] = len(self._index)
            self.pulls = np.concatenate([self.pulls, np.zeros(len(new))])
            self.rewards = np.concatenate([self.rewards, np.zeros(len(new))])
        return np.fromiter((self._index[a] for a in arms), dtype=np.int64, count=len(arms))

    def counts(self, arms: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """(pulls, reward sums) of the given arms (0 for unknown arms)."""
        idx = [self._index.get(a, -1) for a in arms]
        n = np.array([self.pulls[i] if i >= 0 else 0.0 for i in idx])
        s = np.array([self.rewards[i] if i >= 0 else 0.0 for i in idx])
        return n, s

    def update(self, arm: str, reward: float, features: ArrayLike | None = None) -> None:
        self.update_many([arm], [reward])

    def update_many(
        self, arms: Sequence[str], rewards: ArrayLike, features: ArrayLike | None = None
    ) -> None:
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if len(arms) != r.size:
            raise ValueError(f"arms and rewards must pair up ({len(arms)} != {r.size})")
        if not np.all(np.isfinite(r)):
            raise ValueError("rewards must be finite")
        idx = self._ids([str(a) for a in arms])
        np.add.at(self.pulls, idx, 1.0)
        np.add.at(self.rewards, idx, r)

    def credit(self, arm: str, reward: float) -> None:
        """Add a reward to a pull counted earlier (a served list counts the pull
        at once with `update(arm, 0)`; a click that arrives later credits it).
        A reward sum never exceeds the pulls, so a stray click cannot push a
        Beta posterior out of range."""
        if not math.isfinite(reward):
            raise ValueError("rewards must be finite")
        i = self._index.get(str(arm))
        if i is None:
            return  # never served by this policy: nothing to credit
        self.rewards[i] = min(self.rewards[i] + reward, self.pulls[i])

    def state_dict(self) -> dict[str, Any]:
        return {
            "arms": list(self._index),
            "pulls": self.pulls.tolist(),
            "rewards": self.rewards.tolist(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        arms = [str(a) for a in state.get("arms", [])]
        self._index = {a: i for i, a in enumerate(arms)}
        self.pulls = np.asarray(state.get("pulls", []), dtype=np.float64)
        self.rewards = np.asarray(state.get("rewards", []), dtype=np.float64)
        if not (len(arms) == self.pulls.size == self.rewards.size):
            raise ValueError("corrupt bandit state: arms, pulls and rewards differ in length")

    def select(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> tuple[list[str], FloatArray]:
        chosen, probs = self._choose(list(arms), rng, n)
        return [arms[i] for i in chosen], probs[chosen]

    @abstractmethod
    def _choose(
        self, arms: list[str], rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], FloatArray]:
        """(chosen positions, inclusion probabilities of all candidates)."""

    def probabilities(
        self,
        arms: Sequence[str],
        rng: np.random.Generator | None = None,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> FloatArray:
        _check_n(arms, n)
        return self._probabilities(list(arms), rng, n)

    @abstractmethod
    def _probabilities(
        self, arms: list[str], rng: np.random.Generator | None, n: int
    ) -> FloatArray: ...


#: The policies whose state is per-arm pull counts and reward sums.
CountPolicy = _CountPolicy


@dataclass(frozen=True)
class EpsilonGreedyConfig(Config):
    """`epsilon`: probability of exploring (n arms uniformly at random)."""

    epsilon: float = 0.1

    def validate(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"EpsilonGreedyConfig.epsilon: must be in [0, 1], got {self.epsilon}")


class EpsilonGreedy(_CountPolicy):
    """ε-greedy on mean rewards; untried arms count as best (tried once each)."""

    name = "epsilon_greedy"

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.config: EpsilonGreedyConfig = EpsilonGreedyConfig(epsilon)

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**EpsilonGreedyConfig.from_dict(config).to_dict())

    def _greedy(self, arms: list[str], n: int) -> NDArray[np.int64]:
        pulls, sums = self.counts(arms)
        means = np.where(pulls > 0, sums / np.maximum(pulls, 1.0), np.inf)
        return _top(means, n)

    def _probabilities(
        self, arms: list[str], rng: np.random.Generator | None, n: int
    ) -> FloatArray:
        eps, m = self.config.epsilon, len(arms)
        p = np.full(m, eps * n / m)
        p[self._greedy(arms, n)] += 1.0 - eps
        return p

    def _choose(
        self, arms: list[str], rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], FloatArray]:
        _check_n(arms, n)
        if rng.random() < self.config.epsilon:
            chosen = rng.choice(len(arms), size=n, replace=False).astype(np.int64)
        else:
            chosen = self._greedy(arms, n)
        return chosen, self._probabilities(arms, None, n)


@dataclass(frozen=True)
class UCB1Config(Config):
    """`c`: exploration weight of the confidence bonus c·√(2 ln N / n_a) (1 = UCB1)."""

    c: float = 1.0

    def validate(self) -> None:
        if self.c < 0:
            raise ConfigError(f"UCB1Config.c: must be ≥ 0, got {self.c}")


class UCB1(_CountPolicy):
    """UCB1: optimism in the face of uncertainty; deterministic given the state."""

    name = "ucb1"

    def __init__(self, c: float = 1.0) -> None:
        super().__init__()
        self.config: UCB1Config = UCB1Config(c)

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**UCB1Config.from_dict(config).to_dict())

    def index(self, arms: Sequence[str]) -> FloatArray:
        """x̄_a + c·√(2 ln N / n_a) (+inf for untried arms)."""
        pulls, sums = self.counts(list(arms))
        total = max(float(self.pulls.sum() if self.total is None else self.total), 1.0)
        safe = np.maximum(pulls, 1.0)
        bonus = self.config.c * np.sqrt(2.0 * math.log(total) / safe)
        return np.where(pulls > 0, sums / safe + bonus, np.inf)

    def _probabilities(
        self, arms: list[str], rng: np.random.Generator | None, n: int
    ) -> FloatArray:
        p = np.zeros(len(arms))
        p[_top(self.index(arms), n)] = 1.0
        return p

    def _choose(
        self, arms: list[str], rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], FloatArray]:
        _check_n(arms, n)
        p = self._probabilities(arms, None, n)
        return _top(self.index(arms), n), p


@dataclass(frozen=True)
class ThompsonConfig(Config):
    """Beta(`alpha`, `beta`) prior of every arm's reward rate; `n_draws`
    posterior draws estimate the propensities."""

    alpha: float = 1.0
    beta: float = 1.0
    n_draws: int = 1000

    def validate(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ConfigError("ThompsonConfig: alpha and beta must be > 0")
        if self.n_draws < 1:
            raise ConfigError(f"ThompsonConfig.n_draws: must be ≥ 1, got {self.n_draws}")


class ThompsonSampling(_CountPolicy):
    """Beta–Bernoulli Thompson sampling (rewards in [0, 1]; fractional rewards
    update the posterior as fractional successes)."""

    name = "thompson"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, n_draws: int = 1000) -> None:
        super().__init__()
        self.config: ThompsonConfig = ThompsonConfig(alpha, beta, n_draws)

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**ThompsonConfig.from_dict(config).to_dict())

    def posterior(self, arms: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """Beta parameters (α₀ + s, β₀ + n − s) of each arm."""
        pulls, sums = self.counts(list(arms))
        return self.config.alpha + sums, self.config.beta + np.maximum(pulls - sums, 0.0)

    def _draw_top(
        self, arms: list[str], rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], FloatArray]:
        a, b = self.posterior(arms)
        m, d = len(arms), self.config.n_draws
        draws = rng.beta(a, b, size=(d, m))
        if n == 1:
            best = draws.argmax(axis=1)
            p = np.bincount(best, minlength=m) / d
            return best[:1].astype(np.int64), p
        top = np.argpartition(-draws, n - 1, axis=1)[:, :n]
        p = np.bincount(top.ravel(), minlength=m) / d
        first = top[0][np.argsort(-draws[0, top[0]])]
        return first.astype(np.int64), p

    def _probabilities(
        self, arms: list[str], rng: np.random.Generator | None, n: int
    ) -> FloatArray:
        if rng is None:
            raise ValueError("Thompson sampling propensities are Monte Carlo: pass an rng")
        return self._draw_top(arms, rng, n)[1]

    def _choose(
        self, arms: list[str], rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], FloatArray]:
        _check_n(arms, n)
        return self._draw_top(arms, rng, n)


# ------------------------------------------------------------------ LinUCB
@dataclass(frozen=True)
class LinUCBConfig(Config):
    """`alpha`: width of the confidence bonus; `dim`: feature dimension;
    `ridge`: λ of A = λI + Σxxᵀ."""

    alpha: float = 1.0
    dim: int = 8
    ridge: float = 1.0

    def validate(self) -> None:
        if self.alpha < 0 or self.dim < 1 or self.ridge <= 0:
            raise ConfigError("LinUCBConfig: need alpha ≥ 0, dim ≥ 1 and ridge > 0")


class LinUCB(BanditPolicy):
    """Linear UCB with one shared model over arm (or context × arm) features.

    ``features`` of `select`: (m, dim), one row per candidate arm; of `update`:
    the (dim,) vector of the arm that was shown.
    """

    name = "linucb"

    def __init__(self, alpha: float = 1.0, dim: int = 8, ridge: float = 1.0) -> None:
        self.config: LinUCBConfig = LinUCBConfig(alpha, dim, ridge)
        self.A = ridge * np.eye(dim)
        self.b = np.zeros(dim)

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**LinUCBConfig.from_dict(config).to_dict())

    def _features(self, features: ArrayLike | None, rows: int | None) -> FloatArray:
        if features is None:
            raise ValueError("LinUCB needs features")
        x = np.asarray(features, dtype=np.float64)
        want = (rows, self.config.dim) if rows is not None else (self.config.dim,)
        if x.shape != want:
            raise ValueError(f"features must have shape {want}, got {x.shape}")
        return x

    def scores(self, features: ArrayLike) -> FloatArray:
        """θᵀx + α·√(xᵀA⁻¹x) of each row of ``features``."""
        x = np.asarray(features, dtype=np.float64)
        a_inv_x = np.linalg.solve(self.A, x.T).T
        theta = np.linalg.solve(self.A, self.b)
        width = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, a_inv_x), 0.0))
        return np.asarray(x @ theta + self.config.alpha * width, dtype=np.float64)

    def probabilities(
        self,
        arms: Sequence[str],
        rng: np.random.Generator | None = None,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> FloatArray:
        _check_n(arms, n)
        x = self._features(features, len(arms))
        p = np.zeros(len(arms))
        p[_top(self.scores(x), n)] = 1.0
        return p

    def select(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        n: int = 1,
        features: ArrayLike | None = None,
    ) -> tuple[list[str], FloatArray]:
        _check_n(arms, n)
        x = self._features(features, len(arms))
        chosen = _top(self.scores(x), n)
        return [arms[i] for i in chosen], np.ones(n)

    def update(self, arm: str, reward: float, features: ArrayLike | None = None) -> None:
        x = self._features(features, None)
        self.A += np.outer(x, x)
        self.b += float(reward) * x

    def update_many(
        self, arms: Sequence[str], rewards: ArrayLike, features: ArrayLike | None = None
    ) -> None:
        r = np.asarray(rewards, dtype=np.float64).ravel()
        x = self._features(features, r.size)
        if len(arms) != r.size:
            raise ValueError(f"arms and rewards must pair up ({len(arms)} != {r.size})")
        self.A += x.T @ x
        self.b += x.T @ r

    def state_dict(self) -> dict[str, Any]:
        return {"A": self.A.tolist(), "b": self.b.tolist()}

    def _load_state(self, state: dict[str, Any]) -> None:
        d = self.config.dim
        A = np.asarray(state.get("A", self.A), dtype=np.float64)
        b = np.asarray(state.get("b", self.b), dtype=np.float64)
        if A.shape != (d, d) or b.shape != (d,):
            raise ValueError(f"corrupt LinUCB state: A {A.shape}, b {b.shape} for dim {d}")
        self.A, self.b = A, b
