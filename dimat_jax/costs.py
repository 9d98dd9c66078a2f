"""Compute accounting: FLOPs of the compiled passes, from XLA's own cost analysis.

``FlopCounter.gflops(fn, *args)`` lowers a jitted function for these arguments (tracing only, no
compilation or execution) and reads XLA's HLO cost analysis: the FLOPs of one call. Results are
cached per function and argument shapes, so asking again every step costs a dictionary lookup.
Multiply by the number of calls (steps, batches of a pass) for the compute of a phase.
"""
from __future__ import annotations

import jax


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return (treedef,) + tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves)


class FlopCounter:
    """GFLOPs of one call of jitted functions, cached by (function, argument shapes)."""

    def __init__(self):
        self._cache: dict = {}

    def gflops(self, fn, *args) -> float:
        """XLA's FLOP count of ``fn(*args)`` in GFLOP (0.0 when ``fn`` cannot be lowered)."""
        key = (id(fn), _signature(args))
        if key not in self._cache:
            self._cache[key] = lowered_gflops(fn, *args)
        return self._cache[key]


def lowered_gflops(fn, *args) -> float:
    """GFLOPs of one call of jitted ``fn`` on ``args`` by XLA's cost analysis of the lowered program."""
    lower = getattr(fn, "lower", None)
    if lower is None:
        return 0.0
    cost = lower(*args).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0)) / 1e9
