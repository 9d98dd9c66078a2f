"""Communication accounting: what one message weighs and who sends how many (the run's cumulative
counts live in ``services.RunCounters``).

A message is one model-sized payload from one agent to another. Π[i, j] > 0 (i ≠ j) means agent j
sends to agent i. Bytes are the real byte size of the payload (parameters, plus BatchNorm
statistics for the merge family, which mixes them too).
"""
from __future__ import annotations

import numpy as np


def payload_bytes(tree) -> int:
    """Bytes of one agent's slice of a stacked pytree (leaves [N, ...])."""
    import jax
    leaves = jax.tree.leaves(tree)
    return sum(int(np.prod(x.shape[1:])) * np.dtype(x.dtype).itemsize for x in leaves)


def senders(w: np.ndarray) -> np.ndarray:
    """[N] messages each agent sends when every agent pulls from its neighbours once: the number
    of other agents i with Π[i, j] > 0, per column j."""
    w = np.asarray(w)
    off = (w > 0) & ~np.eye(w.shape[0], dtype=bool)
    return off.sum(0)
