"""Re-ranking: diversity, category cap, calibration, freshness, long-tail
exposure, business rules and explanations."""
