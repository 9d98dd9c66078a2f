"""Apply the matched permutations and mix, for all agents in one jitted function (docs/algorithm.md §2.4):

    θ_i ← Π[i, i] θ_i + Σ_k weight[i, k] · P_ik(θ_{nbr[i, k]})

over params and BatchNorm statistics. A scan over the D neighbour slots keeps memory at about
twice the stacked model; neighbour indices, weights and permutations are data, so the function
compiles once per (model, D) and is reused every round.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dimat_jax.merging.spec import PermutationSpec, permute_stacked


def _scale(w, x):
    return w.reshape(w.shape + (1,) * (x.ndim - 1)).astype(x.dtype) * x


def make_mix(spec: PermutationSpec) -> Callable:
    """Jitted ``mix(variables, perms, nbr, weight, self_weight, received=None) -> variables``.

    ``variables``: stacked {'params', 'batch_stats'} [N, ...]; ``perms``: p -> int [N, D, C];
    ``nbr`` int [N, D]; ``weight`` float [N, D]; ``self_weight`` float [N]; ``received``: the
    neighbours' models as received (compressed messages), default ``variables``.
    """

    @jax.jit
    def mix(variables, perms, nbr, weight, self_weight, received=None):
        out = jax.tree.map(lambda x: _scale(self_weight, x), variables)
        sent = variables if received is None else received

        def body(acc, slot):
            j, w, p = slot                                   # [N], [N], p -> [N, C]
            theta = jax.tree.map(lambda x: x[j], sent)       # each receiver's neighbour in this slot
            theta = permute_stacked(theta, spec, p)
            return jax.tree.map(lambda a, t: a + _scale(w, t), acc, theta), None

        slots = (nbr.T, weight.T, {p: jnp.swapaxes(v, 0, 1) for p, v in perms.items()})
        out, _ = jax.lax.scan(body, out, slots)
        return out

    return mix


def make_sharded_mix(spec: PermutationSpec, mesh, plan) -> Callable:
    """:func:`make_mix` for agents sharded over a mesh: each device fetches only its receivers'
    neighbour models (``plan``: collective-permutes, or an all-gather for dense graphs), permutes
    them locally and mixes. Jitted ``mix(variables, perms, weight, self_weight) -> variables``."""
    import numpy as np

    from dimat_jax.distributed import candidates, sharded
    cand_table = np.asarray(plan.cand)

    def local(variables, perms, cand, weight, self_weight):
        pool = candidates(variables, plan)
        out = jax.tree.map(lambda x: _scale(self_weight, x), variables)
        for s in range(cand.shape[1]):
            theta = jax.tree.map(lambda v: v[cand[:, s]], pool)
            theta = permute_stacked(theta, spec, {p: v[:, s] for p, v in perms.items()})
            out = jax.tree.map(lambda a, t: a + _scale(weight[:, s], t), out, theta)
        return out

    fn = sharded(local, mesh, 5)

    @jax.jit
    def mix(variables, perms, weight, self_weight):
        return fn(variables, perms, jnp.asarray(cand_table), weight, self_weight)

    return mix
