"""Vectorised simulations that check the statistics of online evaluation.

Shared by the tests (few repetitions) and the benchmarks (many):

- `aa_false_positive_rate` / `ab_detection_rate`: two-proportion z-tests on
  Binomial totals of simulated Bernoulli clicks, one row per repetition;
- `peeking_error_rates`: A/A tests read after every batch, by the naive
  fixed-horizon z-test ("stop at the first p < α") and by the always-valid
  mSPRT p-value;
- `RankerWorld`: two rankers of different quality over a `SyntheticWorld`,
  clicks from a position-biased click model, and the power of an A/B test
  and of team-draft interleaving as functions of the number of impressions;
- `bandit_rates` / `run_bandit`: the Bernoulli bandit scenario;
- `OPEWorld`: a contextual click model with a logging and a target policy
  whose true CTR is known exactly, to check off-policy intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from sieve.config import Config, ConfigError
from sieve.data.synthetic import SyntheticConfig, SyntheticWorld
from sieve.experiments.analysis import two_proportion_pvalues
from sieve.experiments.interleaving import credit_many, sign_test_pvalues, team_draft_batch
from sieve.experiments.sequential import always_valid_pvalues_proportions
from sieve.explore.bandits import BanditPolicy

FloatArray = NDArray[np.float64]

__all__ = [
    "OPEScenario",
    "OPEWorld",
    "PeekingResult",
    "RankerScenario",
    "RankerWorld",
    "aa_false_positive_rate",
    "ab_detection_rate",
    "bandit_rates",
    "impressions_for_power",
    "peeking_error_rates",
    "run_bandit",
]


# --------------------------------------------------------------- A/A and A/B
def ab_detection_rate(
    n_per_arm: int,
    base_rate: float,
    relative_lift: float,
    reps: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
) -> float:
    """Share of ``reps`` two-proportion z-tests with p < α when B's true rate is
    base·(1 + lift) (lift 0: an A/A test, so the false positive rate)."""
    xa = rng.binomial(n_per_arm, base_rate, size=reps)
    xb = rng.binomial(n_per_arm, base_rate * (1 + relative_lift), size=reps)
    return float((two_proportion_pvalues(xa, n_per_arm, xb, n_per_arm) < alpha).mean())


def aa_false_positive_rate(
    n_per_arm: int, base_rate: float, reps: int, rng: np.random.Generator, alpha: float = 0.05
) -> float:
    """False positive rate of A/A tests (identical arms)."""
    return ab_detection_rate(n_per_arm, base_rate, 0.0, reps, rng, alpha)


@dataclass(frozen=True)
class PeekingResult:
    """Share of repetitions declared significant at any look: naive fixed-horizon
    p-values vs always-valid p-values; and the fixed-horizon test at the last
    look only (what peeking should be compared with)."""

    naive: float
    sequential: float
    final_only: float


def peeking_error_rates(
    n_looks: int,
    batch_per_arm: int,
    base_rate: float,
    reps: int,
    rng: np.random.Generator,
    tau: float,
    alpha: float = 0.05,
    relative_lift: float = 0.0,
) -> PeekingResult:
    """Read a test after each of ``n_looks`` batches (``batch_per_arm`` units per
    arm each) and stop at the first p < α. With lift 0 the rates are false
    positive rates; otherwise detection rates."""
    shape = (reps, n_looks)
    xa = np.cumsum(rng.binomial(batch_per_arm, base_rate, size=shape), axis=1)
    xb = np.cumsum(rng.binomial(batch_per_arm, base_rate * (1 + relative_lift), size=shape), axis=1)
    n = np.broadcast_to(batch_per_arm * np.arange(1, n_looks + 1), shape)
    naive = two_proportion_pvalues(xa, n, xb, n)
    seq = always_valid_pvalues_proportions(xa, n, xb, n, tau=tau, burn_in=1)
    return PeekingResult(
        float((naive < alpha).any(axis=1).mean()),
        float((seq[:, -1] <= alpha).mean()),
        float((naive[:, -1] < alpha).mean()),
    )


# ------------------------------------------------------- interleaving vs A/B
@dataclass(frozen=True)
class RankerScenario(Config):
    """Two rankers over a synthetic population with position-biased clicks.

    - `n_contexts`: distinct requests (a user and a candidate pool), drawn once;
      impressions sample requests uniformly;
    - `n_candidates`: items per pool (random items of the catalog);
    - `list_length`: slots shown;
    - `good_noise`, `weak_noise`: sd of the Gaussian noise each ranker adds to
      the true click logit before sorting (A = good, B = weak);
    - `position_decay`: a slot at rank r (0-based) is examined with probability
      1/(r + 1)^decay; click = examined ∧ Bernoulli(true click probability);
    - `user_logit_sd`: sd of a per-request shift of every click logit (some
      users click much more than others; rankings are unaffected);
    - `n_users`, `n_items`, `base_click_logit`, `seed`: the `SyntheticWorld`
      (its click logit of a neutral item sets the CTR) and all draws.
    """

    n_contexts: int = 5000
    n_candidates: int = 30
    list_length: int = 10
    good_noise: float = 0.5
    weak_noise: float = 1.0
    position_decay: float = 1.0
    user_logit_sd: float = 0.0
    n_users: int = 1000
    n_items: int = 500
    base_click_logit: float = -7.0
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.list_length <= self.n_candidates <= self.n_items:
            raise ConfigError("RankerScenario: need 1 ≤ list_length ≤ n_candidates ≤ n_items")
        if min(self.good_noise, self.weak_noise, self.position_decay, self.user_logit_sd) < 0:
            raise ConfigError(
                "RankerScenario: noises, position_decay and user_logit_sd must be ≥ 0"
            )


class RankerWorld:
    """Precomputed requests, rankings and slot click probabilities of a scenario."""

    def __init__(self, scenario: RankerScenario | None = None) -> None:
        sc = scenario or RankerScenario()
        self.scenario = sc
        world = SyntheticWorld(
            SyntheticConfig(
                n_users=sc.n_users,
                n_items=sc.n_items,
                base_click_logit=sc.base_click_logit,
                seed=sc.seed,
            )
        )
        rng = np.random.default_rng(sc.seed)
        c, m, k = sc.n_contexts, sc.n_candidates, sc.list_length
        users = rng.integers(0, sc.n_users, size=c)
        pools = np.argsort(rng.random((c, sc.n_items)), axis=1)[:, :m]
        logit = sc.base_click_logit + world.true_utility(users[:, None], pools)  # (c, m)
        shift = rng.normal(0.0, sc.user_logit_sd, size=(c, 1)) if sc.user_logit_sd else 0.0
        self.p = 1.0 / (1.0 + np.exp(-(logit + shift)))
        self.rank_a = np.argsort(-(logit + rng.normal(0, sc.good_noise, (c, m))), axis=1)
        self.rank_b = np.argsort(-(logit + rng.normal(0, sc.weak_noise, (c, m))), axis=1)
        self.examine = 1.0 / (np.arange(k) + 1.0) ** sc.position_decay
        rows = np.arange(c)[:, None]
        self.slot_p_a = self.p[rows, self.rank_a[:, :k]] * self.examine
        self.slot_p_b = self.p[rows, self.rank_b[:, :k]] * self.examine
        self._cdf_a = _poisson_binomial_cdf(self.slot_p_a)
        self._cdf_b = _poisson_binomial_cdf(self.slot_p_b)

    @property
    def clicks_per_impression(self) -> tuple[float, float]:
        """True expected clicks per impression of ranker A and of ranker B."""
        return float(self.slot_p_a.sum(1).mean()), float(self.slot_p_b.sum(1).mean())

    def ab_clicks(self, arm: str, shape: tuple[int, ...], rng: np.random.Generator) -> FloatArray:
        """Clicks of impressions of one ranker ("a" or "b") on random requests."""
        cdf = self._cdf_a if arm == "a" else self._cdf_b
        ctx = rng.integers(0, self.scenario.n_contexts, size=shape)
        u = rng.random(shape)
        return (u[..., None] > cdf[ctx]).sum(axis=-1).astype(np.float64)

    def ab_power(
        self, n_per_arm: Sequence[int], reps: int, rng: np.random.Generator, alpha: float = 0.05
    ) -> FloatArray:
        """Share of A/B tests (clicks per impression, Welch z-test) significant at
        each ``n_per_arm`` (fixed horizon each; one growing stream per repetition)."""
        grid = np.asarray(n_per_arm, dtype=np.int64)
        n_max = int(grid.max())
        hits = np.zeros(grid.size)
        chunk = max(1, 4_000_000 // (n_max * (self.scenario.list_length + 1)))
        for start in range(0, reps, chunk):
            r = min(chunk, reps - start)
            stats = []
            for arm in ("a", "b"):
                c = self.ab_clicks(arm, (r, n_max), rng)
                s, q = np.cumsum(c, axis=1)[:, grid - 1], np.cumsum(c * c, axis=1)[:, grid - 1]
                mean = s / grid
                var = np.maximum(q / grid - mean**2, 0.0) * grid / np.maximum(grid - 1, 1)
                stats.append((mean, var / grid))
            (ma, va), (mb, vb) = stats
            se = np.sqrt(va + vb)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(se > 0, (ma - mb) / se, 0.0)
            hits += (2 * scipy.stats.norm.sf(np.abs(z)) < alpha).sum(axis=0)
        return hits / reps

    def interleave(
        self, n: int, rng: np.random.Generator
    ) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
        """Outcomes (+1 A wins, −1 B wins, 0 tie) of ``n`` interleaved impressions,
        and the teams of their slots."""
        k = self.scenario.list_length
        ctx = rng.integers(0, self.scenario.n_contexts, size=n)
        items, teams = team_draft_batch(self.rank_a[ctx], self.rank_b[ctx], rng, k)
        prob = self.p[ctx[:, None], items] * self.examine
        clicks = rng.random(prob.shape) < prob
        return credit_many(teams, clicks), teams

    def interleaving_power(
        self, n_impressions: Sequence[int], reps: int, rng: np.random.Generator, alpha: float = 0.05
    ) -> FloatArray:
        """Share of interleaving sign tests significant at each number of impressions."""
        grid = np.asarray(n_impressions, dtype=np.int64)
        n_max = int(grid.max())
        hits = np.zeros(grid.size)
        chunk = max(1, 2_000_000 // n_max)
        for start in range(0, reps, chunk):
            r = min(chunk, reps - start)
            outcome = self.interleave(r * n_max, rng)[0].reshape(r, n_max)
            wa = np.cumsum(outcome > 0, axis=1)[:, grid - 1]
            wb = np.cumsum(outcome < 0, axis=1)[:, grid - 1]
            hits += (sign_test_pvalues(wa, wb) < alpha).sum(axis=0)
        return hits / reps


def _poisson_binomial_cdf(p: FloatArray) -> FloatArray:
    """CDF of the number of successes of independent Bernoulli(p_j), per row."""
    rows, k = p.shape
    pmf = np.zeros((rows, k + 1))
    pmf[:, 0] = 1.0
    for j in range(k):
        q = p[:, j : j + 1]
        pmf[:, 1:] = pmf[:, 1:] * (1 - q) + pmf[:, :-1] * q
        pmf[:, 0] *= 1 - q[:, 0]
    cdf = np.cumsum(pmf, axis=1)
    cdf[:, -1] = 1.0
    return cdf


def impressions_for_power(grid: ArrayLike, power: ArrayLike, target: float = 0.8) -> float:
    """Impressions where the power curve first reaches ``target`` (log-linear
    interpolation between grid points; inf if never, the first point if already)."""
    g = np.asarray(grid, dtype=np.float64)
    pw = np.asarray(power, dtype=np.float64)
    above = np.flatnonzero(pw >= target)
    if above.size == 0:
        return math.inf
    j = int(above[0])
    if j == 0:
        return float(g[0])
    lo, hi = math.log(g[j - 1]), math.log(g[j])
    frac = (target - pw[j - 1]) / (pw[j] - pw[j - 1])
    return float(math.exp(lo + frac * (hi - lo)))


# ------------------------------------------------------------------ bandits
def bandit_rates(
    rng: np.random.Generator,
    n_arms: int = 20,
    fixed: Mapping[int, float] | None = None,
    a: float = 2.0,
    b: float = 8.0,
) -> FloatArray:
    """True click rates: Beta(a, b) draws, with the ``fixed`` arms overridden
    (default: arms 3, 7, 15 at 0.50, 0.40, 0.45)."""
    rates = rng.beta(a, b, size=n_arms)
    for arm, rate in (fixed if fixed is not None else {3: 0.50, 7: 0.40, 15: 0.45}).items():
        rates[arm] = rate
    return rates


def run_bandit(
    policy: BanditPolicy, rates: FloatArray, rounds: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
    """Play ``rounds`` single-slot rounds: (chosen arm index, reward, propensity)
    per round. Rewards are Bernoulli(rates[arm])."""
    arms = [str(i) for i in range(rates.size)]
    chosen = np.empty(rounds, dtype=np.int64)
    rewards = np.empty(rounds)
    props = np.empty(rounds)
    for t in range(rounds):
        pick, prop = policy.select(arms, rng)
        a = int(pick[0])
        r = float(rng.random() < rates[a])
        policy.update(pick[0], r)
        chosen[t], rewards[t], props[t] = a, r, prop[0]
    return chosen, rewards, props


# -------------------------------------------------------------- off-policy
@dataclass(frozen=True)
class OPEScenario(Config):
    """A contextual click model: contexts = users of a `SyntheticWorld` (uniform),
    actions = `n_actions` random items, reward = click ~ Bernoulli(true p).

    Logging policy: softmax of (true logit + N(0, `logging_noise`²))/`logging_temperature`
    mixed with `logging_epsilon` uniform exploration. Target policy: softmax of
    (true logit + N(0, `target_noise`²))/`target_temperature` (a better ranker).
    `base_click_logit` sets the world's click rates.
    """

    n_users: int = 500
    n_items: int = 300
    n_actions: int = 10
    logging_noise: float = 1.5
    logging_temperature: float = 1.0
    logging_epsilon: float = 0.2
    target_noise: float = 0.5
    target_temperature: float = 0.5
    base_click_logit: float = -5.0
    seed: int = 0

    def validate(self) -> None:
        if not 2 <= self.n_actions <= self.n_items:
            raise ConfigError("OPEScenario.n_actions: must be in 2..n_items")
        if not 0 < self.logging_epsilon <= 1:
            raise ConfigError("OPEScenario.logging_epsilon: must be in (0, 1] (full support)")
        if self.logging_temperature <= 0 or self.target_temperature <= 0:
            raise ConfigError("OPEScenario: temperatures must be > 0")


def _softmax(x: FloatArray) -> FloatArray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True)
class Logs:
    """Simulated logs: context (user) and action per impression, the logging
    propensity, the reward, the target distribution (n, K) and a reward model's
    predictions (n, K): per-action mean reward of the logs (context-blind)."""

    users: NDArray[np.int64]
    actions: NDArray[np.int64]
    propensities: FloatArray
    rewards: FloatArray
    target: FloatArray
    reward_model: FloatArray


class OPEWorld:
    """Click probabilities, logging and target policies; the exact target CTR."""

    def __init__(self, scenario: OPEScenario | None = None) -> None:
        sc = scenario or OPEScenario()
        self.scenario = sc
        world = SyntheticWorld(
            SyntheticConfig(
                n_users=sc.n_users,
                n_items=sc.n_items,
                base_click_logit=sc.base_click_logit,
                seed=sc.seed,
            )
        )
        rng = np.random.default_rng(sc.seed)
        items = rng.choice(sc.n_items, size=sc.n_actions, replace=False)
        self.p = world.click_probability(np.arange(sc.n_users)[:, None], items[None, :])
        logit = np.log(self.p) - np.log1p(-self.p)
        shape = self.p.shape
        log_scores = (logit + rng.normal(0, sc.logging_noise, shape)) / sc.logging_temperature
        self.logging = (1 - sc.logging_epsilon) * _softmax(log_scores) + sc.logging_epsilon / (
            sc.n_actions
        )
        tgt_scores = (logit + rng.normal(0, sc.target_noise, shape)) / sc.target_temperature
        self.target = _softmax(tgt_scores)

    def true_value(self, policy: FloatArray | None = None) -> float:
        """Exact CTR of a policy (default: the target): mean over users of Σ_a π·p."""
        pol = self.target if policy is None else policy
        return float((pol * self.p).sum(axis=1).mean())

    def sample_logs(self, n: int, rng: np.random.Generator) -> Logs:
        """``n`` impressions of the logging policy."""
        k = self.scenario.n_actions
        users = rng.integers(0, self.scenario.n_users, size=n)
        cdf = np.cumsum(self.logging[users], axis=1)
        actions = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), k - 1)
        prop = self.logging[users, actions]
        rewards = (rng.random(n) < self.p[users, actions]).astype(np.float64)
        counts = np.bincount(actions, minlength=k)
        means = np.bincount(actions, weights=rewards, minlength=k) / np.maximum(counts, 1)
        return Logs(
            users,
            actions.astype(np.int64),
            prop,
            rewards,
            self.target[users],
            np.broadcast_to(means, (n, k)).copy(),
        )
