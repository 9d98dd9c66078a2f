"""Algorithms: names, what each needs of the mixing matrix, and where each is implemented.

- merge family (``merge.py``): ``dimat`` (activation matching), ``wa`` (plain weighted averaging),
  ``wm`` (weight matching) — merge every ``local_epochs`` epochs, train locally in between.
- gossip family (``gossip.py``): ``cdsgd``, ``cdmsgd``, ``sgp`` (adapt-then-combine, as the
  reference ran it), ``sgp_pushsum`` (true Stochastic Gradient Push), ``cga`` (cross-gradient
  aggregation) — mix parameters every minibatch.
- ``swarmsgd`` (``swarm.py``): one interacting pair at a time steps and (sometimes) averages.
- ``local`` (Π = I) and ``centralized`` (one model on all data): ``local.py``.
"""
from __future__ import annotations

ALGORITHMS = ("dimat", "wa", "wm", "cdsgd", "cdmsgd", "sgp", "sgp_pushsum", "cga", "swarmsgd", "local", "centralized")
MERGE_FAMILY = {"dimat": "activation", "wa": "identity", "wm": "weight"}
GOSSIP_FAMILY = ("cdsgd", "cdmsgd", "sgp", "sgp_pushsum", "cga")
SWARM_VARIANTS = ("reference", "uniform_edge")  # baseline.swarm_variant (swarm.py)

# What each communicating algorithm requires of its mixing matrix (keyword arguments of
# topology.build); local and centralized ignore the topology.
TOPOLOGY_NEEDS = {
    "dimat": {}, "wa": {}, "wm": {},
    "cdsgd": {"require_doubly_stochastic": True}, "cdmsgd": {"require_doubly_stochastic": True},
    "sgp": {"require_doubly_stochastic": True}, "cga": {"require_doubly_stochastic": True},
    "sgp_pushsum": {"require_column_stochastic": True},
    "swarmsgd": {},
}


class Algorithm:
    """Base of the algorithm objects: by default no state beyond the agents' pytrees."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass


def build(name: str, ctx, topology):
    """The algorithm object: ``setup(state) -> state`` (once, after pre-training), ``round(state, r)
    -> state`` (runs round r and emits its records), ``extra_state() / load_extra_state(dict)``
    (JSON-able state beyond the agents' pytrees, saved in checkpoints)."""
    if name in MERGE_FAMILY:
        from dimat_jax.algorithms.merge import MergeFamily as cls
    elif name in GOSSIP_FAMILY:
        from dimat_jax.algorithms.gossip import Gossip as cls
    elif name == "swarmsgd":
        from dimat_jax.algorithms.swarm import Swarm as cls
    elif name in ("local", "centralized"):
        from dimat_jax.algorithms.local import Local as cls
    else:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return cls(ctx, topology)
