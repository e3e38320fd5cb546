"""sieve: a recommender engine with offline evaluation you can trust."""

__version__ = "0.1.0"
