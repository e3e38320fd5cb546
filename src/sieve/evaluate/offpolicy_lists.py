"""Off-policy estimates for ranked lists under a position-based click model.

A logged request r showed items a_j at positions k_j, each with its logging
propensity p_j = μ(a_j in the list | x_r) (1 for a deterministic ranked slot,
the bandit's inclusion probability for an explored one, n/P for a list drawn
uniformly from a pool of P), and got clicks c_j ∈ {0, 1}. A target policy π
answers the same request with its own list L_r of length n_r.

Position-based model (PBM): P(click | a at k) = θ_k · γ(x, a), θ_k the
examination probability of position k. Then c_j/θ_{k_j} is an unbiased
estimate of the relevance γ(x_r, a_j), and the target's expected clicks per
slot on request r are (1/n_r) Σ_k θ_k γ(x_r, L_r[k]). Weighting each logged
slot by g_j = 1[a_j ∈ L_r]·θ_{pos(a_j)}/p_j gives (Li et al., 2018, the
"item-position / PBM" estimators; only ratios of θ matter, θ_0 = 1):

- IPS:   t_r = (1/n_r) Σ_j g_j · c_j/θ_{k_j},  V̂ = mean_r t_r;
- SNIPS: s_r = Σ_j g_j / Σ_{k<n_r} θ_k has expectation 1 when every item of L_r
  could have been shown (full support), V̂ = Σ t_r / Σ s_r, delta-method interval;
- DR:    d_r = (1/n_r)[Σ_k θ_k γ̂(L_r[k]) + Σ_j g_j (c_j/θ_{k_j} − γ̂(a_j))] with
  a reward model γ̂ (here the debiased per-item click rate of the logs).

IPS and DR intervals are t intervals over requests. Mean s_r is the share of
the target's exposure the log supports: well below 1, the target's items were
rarely or never shown and every estimate is biased low (a warning says so).
The examination probabilities come from lists whose order is random (the
random slice, `examination_from_random`): there the CTR of position k is
proportional to θ_k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.stats
from numpy.typing import NDArray
from sklearn.isotonic import IsotonicRegression

from sieve.evaluate.offpolicy import OPEResult, effective_sample_size
from sieve.evaluate.stats import Interval, mean_ci

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

__all__ = [
    "ListOPE",
    "LoggedSlots",
    "estimate_lists",
    "examination_from_random",
    "examination_influence",
    "item_relevance",
]


@dataclass(frozen=True)
class LoggedSlots:
    """Shown slots of R logged requests, one entry per slot.

    `request` indexes requests 0..R-1; `item` is an integer item code (the same
    codes as the target lists; −1 for an item the candidate does not know);
    `position` is 0-based; `propensity` the logging propensity in (0, 1];
    `click` 0/1; `random` marks slots of lists drawn uniformly at random."""

    request: IntArray
    item: IntArray
    position: IntArray
    propensity: FloatArray
    click: FloatArray
    random: NDArray[np.bool_]
    n_requests: int

    def __post_init__(self) -> None:
        n = len(self.request)
        for name in ("item", "position", "propensity", "click", "random"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one value per slot ({n})")
        if n and (self.request.min() < 0 or self.request.max() >= self.n_requests):
            raise ValueError(f"request indices must lie in [0, {self.n_requests})")
        p = self.propensity
        if np.any(~np.isfinite(p)) or np.any(p <= 0) or np.any(p > 1):
            raise ValueError("logging propensities must lie in (0, 1]")
        if np.any(self.position < 0):
            raise ValueError("positions must be ≥ 0")

    def lengths(self) -> IntArray:
        """Slots shown per request."""
        return np.bincount(self.request, minlength=self.n_requests).astype(np.int64)

    def subset(self, requests: NDArray[np.bool_]) -> tuple[LoggedSlots, IntArray]:
        """The slots of the requests where `requests` is True, renumbered,
        and the old index of each kept request."""
        keep = np.flatnonzero(requests)
        new = np.full(self.n_requests, -1, np.int64)
        new[keep] = np.arange(len(keep))
        m = requests[self.request]
        return (
            LoggedSlots(
                new[self.request[m]],
                self.item[m],
                self.position[m],
                self.propensity[m],
                self.click[m],
                self.random[m],
                len(keep),
            ),
            keep,
        )


@dataclass(frozen=True)
class ListOPE:
    """Estimates of a target's CTR per shown slot, and the diagnostics.

    `logging`: the logged policy's observed CTR on the same requests;
    `support`: mean s_r (share of the target's exposure the log supports);
    `matched`: target slots whose item the log showed on that request;
    `warnings`: plain-language problems (thin support, few requests)."""

    estimates: dict[str, OPEResult]
    logging: Interval
    n_requests: int
    support: float
    matched: int
    theta: FloatArray
    warnings: list[str] = field(default_factory=list)

    @property
    def ess(self) -> float:
        return self.estimates["ips"].ess


def examination_from_random(
    position: IntArray, click: FloatArray, n_positions: int, min_slots: int = 20
) -> FloatArray:
    """θ_k / θ_0 for k < n_positions from slots of uniformly random lists (an
    item's position is independent of the item, so CTR_k ∝ θ_k): the
    per-position CTR made non-increasing by an isotonic fit weighted by the
    slots shown. Positions with fewer than `min_slots` slots take the last
    estimated value; with no click at all, θ = 1 everywhere (no evidence)."""
    if n_positions < 1:
        raise ValueError("n_positions must be ≥ 1")
    keep = position < n_positions
    shown = np.bincount(position[keep], minlength=n_positions).astype(np.float64)
    clicks = np.bincount(position[keep], weights=click[keep], minlength=n_positions)
    ok = shown >= min_slots
    if clicks[ok].sum() <= 0 or not ok[0]:
        return np.ones(n_positions)
    k = np.flatnonzero(ok)
    iso = IsotonicRegression(increasing=False, y_min=0.0)
    fitted = iso.fit_transform(k.astype(np.float64), clicks[k] / shown[k], sample_weight=shown[k])
    theta = np.interp(np.arange(n_positions), k, fitted)
    if theta[0] <= 0:
        return np.ones(n_positions)
    # a position with no click at all keeps a small positive examination
    return np.asarray(np.maximum(theta / theta[0], 1e-3), dtype=np.float64)


def item_relevance(
    slots: LoggedSlots, theta: FloatArray, n_items: int, prior_weight: float = 20.0
) -> FloatArray:
    """Per-item relevance γ̂(a) = (Σ c + α·γ̄) / (Σ θ_k + α) over the item's logged
    slots (its clicks over its expected examinations, shrunk to the mean γ̄ with
    α = `prior_weight` examinations): the doubly robust reward model."""
    known = slots.item >= 0
    exam = theta[np.minimum(slots.position, len(theta) - 1)]
    total_c = float(slots.click[known].sum())
    total_e = float(exam[known].sum())
    mean = total_c / total_e if total_e > 0 else 0.0
    c = np.bincount(slots.item[known], weights=slots.click[known], minlength=n_items)
    e = np.bincount(slots.item[known], weights=exam[known], minlength=n_items)
    return np.asarray((c + prior_weight * mean) / (e + prior_weight), dtype=np.float64)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(scipy.stats.norm.ppf(0.5 + confidence / 2))


def examination_influence(slots: LoggedSlots, n_positions: int) -> FloatArray:
    """Per request (R × n_positions), the influence of its clicks on the
    examination estimate θ_k = m_k/m_0 (m_k: the random slice's CTR at
    position k): ψ_rk = (R_rand/S_k)(c_rk − m_k·1[r shows k])/m_0 −
    θ_k (R_rand/S_0)(c_r0 − m_0·1[r shows 0])/m_0 on random-slice requests,
    0 elsewhere, so θ̂ − θ ≈ mean over the random requests of ψ. Adding
    Σ_k ∂V/∂θ_k · ψ_rk to each request's term puts the uncertainty of θ̂ into
    the estimators' intervals (the delta method)."""
    r = slots.random & (slots.position < n_positions)
    out = np.zeros((slots.n_requests, n_positions))
    random_requests = np.zeros(slots.n_requests, bool)
    random_requests[slots.request[slots.random]] = True
    n_random = int(random_requests.sum())
    if n_random == 0:
        return out
    req, pos, clicks = slots.request[r], slots.position[r], slots.click[r]
    shown = np.zeros((slots.n_requests, n_positions))
    c = np.zeros((slots.n_requests, n_positions))
    shown[req, pos] = 1.0
    c[req, pos] = clicks
    n_shown = shown.sum(axis=0)
    m = c.sum(axis=0) / np.maximum(n_shown, 1.0)
    if m[0] <= 0:
        return out
    theta = m / m[0]
    dev = n_random / np.maximum(n_shown, 1.0) * (c - m * shown) / m[0]
    out[random_requests] = (dev - theta * dev[:, :1])[random_requests]
    out[:, 0] = 0.0
    return out


def _terms(
    slots: LoggedSlots,
    target: IntArray,
    theta: FloatArray,
    relevance: FloatArray | None,
    clip: float | None,
) -> tuple[FloatArray, FloatArray, FloatArray | None, int, int]:
    """Per request: the IPS term t_r, the normaliser s_r and the DR term d_r
    (module doc), the number of slots clipped and of target items matched."""
    R, m = target.shape
    n_target = (target >= 0).sum(axis=1)
    # where each logged item stands in its request's target list (−1: absent)
    row = target[slots.request]  # (slots, m)
    hit = (row == slots.item[:, None]) & (slots.item[:, None] >= 0)
    pos = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    matched = pos >= 0
    g = np.where(matched, theta[np.maximum(pos, 0)] / slots.propensity, 0.0)
    ratio = g / theta[slots.position]
    n_clipped = 0
    if clip is not None:
        n_clipped = int((ratio > clip).sum())
        scale = np.where(ratio > clip, clip / np.maximum(ratio, 1e-300), 1.0)
        g, ratio = g * scale, np.minimum(ratio, clip)
    length = np.maximum(n_target, 1).astype(np.float64)
    t = np.bincount(slots.request, weights=ratio * slots.click, minlength=R) / length
    cum_theta = np.concatenate([[0.0], np.cumsum(theta)])
    s = np.bincount(slots.request, weights=g, minlength=R) / cum_theta[np.maximum(n_target, 1)]
    d = None
    if relevance is not None:
        gamma = np.asarray(relevance, dtype=np.float64)
        rel_target = np.where(target >= 0, gamma[np.maximum(target, 0)], 0.0)
        direct = (rel_target * theta[:m]).sum(axis=1)
        logged_rel = np.where(slots.item >= 0, gamma[np.maximum(slots.item, 0)], 0.0)
        correction = np.bincount(
            slots.request,
            weights=g * (slots.click / theta[slots.position]) - g * logged_rel,
            minlength=R,
        )
        d = (direct + correction) / length
    return t, s, d, n_clipped, int(matched.sum())


def _values(t: FloatArray, s: FloatArray, d: FloatArray | None) -> dict[str, float]:
    out = {"ips": float(t.mean())}
    if s.sum() > 0:
        out["snips"] = float(t.sum() / s.sum())
    if d is not None:
        out["dr"] = float(d.mean())
    return out


def estimate_lists(
    slots: LoggedSlots,
    target: IntArray,
    theta: FloatArray,
    relevance: FloatArray | None = None,
    *,
    theta_influence: FloatArray | None = None,
    confidence: float = 0.95,
    clip: float | None = None,
    min_support: float = 0.8,
    min_ess: float = 100.0,
) -> ListOPE:
    """IPS, SNIPS and (with `relevance`, a γ̂ per item code) DR estimates of the
    CTR per slot of the target lists `target` (R × m item codes, −1 padding:
    row r is the target's list for request r), under the PBM with examination
    `theta` (θ_0 = 1, at least m positions). `clip` caps g_j/θ_{k_j}.

    `theta_influence` (R × positions, `examination_influence`): when θ was
    estimated from these requests, its uncertainty enters the intervals: each
    request's term gets Σ_k ∂V/∂θ_k·ψ_rk (gradients by finite differences)."""
    z = _z(confidence)
    R = slots.n_requests
    if R == 0:
        raise ValueError("no logged requests in the window")
    target = np.asarray(target, dtype=np.int64)
    if target.ndim != 2 or target.shape[0] != R:
        raise ValueError(f"target must be (n_requests={R}, m), got {target.shape}")
    m = target.shape[1]
    theta = np.asarray(theta, dtype=np.float64)
    depth = max(m, int(slots.position.max(initial=0)) + 1)
    if len(theta) < depth:  # positions beyond the estimate keep its last value
        theta = np.concatenate([theta, np.full(depth - len(theta), theta[-1])])
    has_list = (target >= 0).sum(axis=1) > 0
    if not has_list.any():
        raise ValueError("the candidate returned no list for any logged request")
    t, s, d, n_clipped, matched = _terms(slots, target, theta, relevance, clip)
    base = _values(t[has_list], s[has_list], None if d is None else d[has_list])
    # each estimator's per-request linearised terms (mean: the estimate)
    lin: dict[str, FloatArray] = {"ips": t}
    if "snips" in base:
        lin["snips"] = base["snips"] + (t - base["snips"] * s) / float(s[has_list].mean())
    if d is not None:
        lin["dr"] = d
    if theta_influence is not None:
        psi = np.asarray(theta_influence, dtype=np.float64)
        for k in range(1, min(psi.shape[1], depth)):
            if not psi[:, k].any():
                continue
            h = 1e-4 * max(theta[k], 1e-3)
            bumped = theta.copy()
            bumped[k] += h
            tb, sb, db, _, _ = _terms(slots, target, bumped, relevance, clip)
            moved = _values(tb[has_list], sb[has_list], None if db is None else db[has_list])
            for name in lin:
                lin[name] = lin[name] + (moved[name] - base[name]) / h * psi[:, k]
    ess = effective_sample_size(s[has_list])
    n = int(has_list.sum())
    estimates: dict[str, OPEResult] = {}
    for name, terms in lin.items():
        iv = mean_ci(terms[has_list], confidence)
        if name == "snips":  # a ratio: centred on Σt/Σs, normal interval
            half = z * float(terms[has_list].std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
            iv = Interval(base["snips"], base["snips"] - half, base["snips"] + half)
        else:
            iv = Interval(base[name], iv.low, iv.high)
        estimates[name] = OPEResult(name, iv, ess, n, n_clipped)
    shown = slots.lengths().astype(np.float64)
    per_request = np.bincount(slots.request, weights=slots.click, minlength=R)
    logged = mean_ci((per_request / np.maximum(shown, 1.0))[shown > 0], confidence)
    support = float(s[has_list].mean())
    warnings = []
    if support < min_support or ess < min_ess:
        warnings.append(
            f"thin support: the log could have shown only {100 * support:.0f}% of the "
            f"candidate's slots ({matched} of its items shown in {n} requests, "
            f"effective sample size {ess:.0f}): its items were rarely shown, so the estimates "
            "are unreliable (biased low); serve a random slice (`random_share`) to measure it"
        )
    return ListOPE(estimates, logged, n, support, matched, theta[:m], warnings)
