"""Apply the matched permutations and mix, for all agents in one jitted function (SPEC §2.4):

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
    """Jitted ``mix(variables, perms, nbr, weight, self_weight) -> variables``.

    ``variables``: stacked {'params', 'batch_stats'} [N, ...]; ``perms``: p -> int [N, D, C];
    ``nbr`` int [N, D]; ``weight`` float [N, D]; ``self_weight`` float [N].
    """

    @jax.jit
    def mix(variables, perms, nbr, weight, self_weight):
        out = jax.tree.map(lambda x: _scale(self_weight, x), variables)

        def body(acc, slot):
            j, w, p = slot                                   # [N], [N], p -> [N, C]
            theta = jax.tree.map(lambda x: x[j], variables)  # each receiver's neighbour in this slot
            theta = permute_stacked(theta, spec, p)
            return jax.tree.map(lambda a, t: a + _scale(w, t), acc, theta), None

        slots = (nbr.T, weight.T, {p: jnp.swapaxes(v, 0, 1) for p, v in perms.items()})
        out, _ = jax.lax.scan(body, out, slots)
        return out

    return mix
