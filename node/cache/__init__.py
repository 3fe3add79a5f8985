"""The regional read cache: sealed key states in the region's Redis (read_cache.py), the
coherence rules and their argument (coherence.py), the Redis scripts (store.py)."""
