"""Algorithms: where each is implemented, and the interface they share.

- merge family (``merge.py``): ``dimat`` (activation matching), ``wa`` (plain weighted averaging),
  ``wm`` (weight matching) — merge every ``local_epochs`` epochs, train locally in between.
- gossip family (``gossip.py``): ``cdsgd``, ``cdmsgd``, ``sgp`` (adapt-then-combine, as the
  reference ran it), ``sgp_pushsum`` (true Stochastic Gradient Push), ``cga`` (cross-gradient
  aggregation) — mix parameters every minibatch.
- ``swarmsgd`` (``swarm.py``): one interacting pair at a time steps and (sometimes) averages.
- ``local`` (Π = I) and ``centralized`` (one model on all data): ``local.py``.

An algorithm object is built once per run, ``build(name, services, topology)``, and offers
``init(state) -> state`` (after pre-training), ``round(state, r, services) -> (state, diagnostics)``
(runs round r, emits its records through ``services``, returns a dict of what it did, logged on one
line), and ``extra_state() / load_extra_state(dict)`` (JSON-able state beyond the agents' pytrees,
saved in checkpoints). It never imports the runner (services.py says what it may use).
"""
from __future__ import annotations

import numpy as np

from dimat_jax.choices import (ALGORITHMS, GOSSIP_FAMILY, MERGE_FAMILY, SWARM_VARIANTS,  # noqa: F401
                               TOPOLOGY_NEEDS)


class Algorithm:
    """Base of the algorithm objects: by default no state beyond the agents' pytrees."""

    def init(self, state):
        return state

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass


def check_topology(name: str, topology) -> None:
    """Raise ``TopologyError`` when ``topology`` cannot serve algorithm ``name`` (beyond what
    ``TOPOLOGY_NEEDS`` asks of its matrices): SwarmSGD needs an edge to pick."""
    from dimat_jax.topology import TopologyError
    if name == "swarmsgd" and all(np.allclose(m, np.eye(m.shape[0])) for m in topology.matrices):
        raise TopologyError(f"swarmsgd picks an interacting pair along an edge, but topology {topology.name!r} has "
                            "no edges; choose a connected topology")


def build(name: str, services, topology):
    """The algorithm object for ``name``."""
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
    return cls(services, topology)
