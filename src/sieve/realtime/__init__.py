"""Online state updated by every event: counters and features."""
