"""Sampling: the typed plan, the per-image-seeded image iterator, output shards and the multi-process driver."""
