"""Exploration: bandit policies with logged propensities and persisted state."""

from sieve.explore.bandits import (
    UCB1,
    BanditPolicy,
    EpsilonGreedy,
    EpsilonGreedyConfig,
    LinUCB,
    LinUCBConfig,
    ThompsonConfig,
    ThompsonSampling,
    UCB1Config,
    load_policy,
)

__all__ = [
    "UCB1",
    "BanditPolicy",
    "EpsilonGreedy",
    "EpsilonGreedyConfig",
    "LinUCB",
    "LinUCBConfig",
    "ThompsonConfig",
    "ThompsonSampling",
    "UCB1Config",
    "load_policy",
]
