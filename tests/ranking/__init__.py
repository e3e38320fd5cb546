"""Ranking: features, logged-impression training."""
