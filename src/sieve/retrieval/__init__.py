"""Candidate generation: the funnel's sources, their merge and the ANN index."""
