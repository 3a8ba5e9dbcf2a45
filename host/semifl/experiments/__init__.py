"""Reproductions of the seed papers' experiments, run in-process over the service's own strategies."""
