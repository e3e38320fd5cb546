"""Data layer: schema, importers, synthetic data, the Dataset snapshot and splits."""

from sieve.data.dataset import Dataset
from sieve.data.schema import DEFAULT_EVENT_WEIGHTS, EventWeights

__all__ = ["DEFAULT_EVENT_WEIGHTS", "Dataset", "EventWeights"]
