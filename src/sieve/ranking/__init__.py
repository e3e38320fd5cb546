"""Learned ranking of candidates: shared offline/online features and LambdaMART."""
