"""Lazy expressions: nodes, the optimizer, and explain()."""
