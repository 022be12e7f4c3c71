"""The runtime: hooks, attention functions and the cache that carry out a policy on one model instance."""
