"""Activation statistics for all agents and all edges in one jitted pass per batch
(docs/algorithm.md §2.2).

Every model runs in eval mode on the batches its receivers need (see ``ForwardPlan``), augmented
like training batches when asked (``merge.augment``); each feature
map [B, H, W, C] at a permutation's feature point is viewed as B·H·W samples of C units. Per
receiver i and permutation p the pass accumulates, in float32 with HIGHEST-precision matmuls:
sums and sums of squares of i's own units and of each neighbour's units on i's data, and the cross
moments Σ f_i f_jᵀ per neighbour slot — O(N · D · C²) memory (the edge list), never N·C × N·C.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax.agents import agent_keys, over_agents
from dimat_jax.merging.spec import PermutationSpec, flatten


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Moments:
    """Accumulated moments per permutation p (dicts keyed by p)."""
    count: dict        # p -> [N] samples per receiver (B·h·w summed over batches)
    own_sum: dict      # p -> [N, C]
    own_sq: dict       # p -> [N, C]
    nbr_sum: dict      # p -> [N, D, C]
    nbr_sq: dict       # p -> [N, D, C]
    cross: dict        # p -> [N, D, C, C]: Σ f_i f_jᵀ (rows: receiver's units, columns: neighbour's)


def zero_moments(spec: PermutationSpec, n: int, d: int) -> Moments:
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    return Moments(count={p: z(n) for p in spec.sizes}, own_sum={p: z(n, c) for p, c in spec.sizes.items()},
                   own_sq={p: z(n, c) for p, c in spec.sizes.items()},
                   nbr_sum={p: z(n, d, c) for p, c in spec.sizes.items()},
                   nbr_sq={p: z(n, d, c) for p, c in spec.sizes.items()},
                   cross={p: z(n, d, c, c) for p, c in spec.sizes.items()})


def feature_fn(model, spec: PermutationSpec) -> Callable:
    """``f(variables, x [B, H, W, C] normalised) -> {perm: [B·h·w, C]}`` features of one model, eval mode."""
    def f(variables, x):
        _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        feats = flatten(state["intermediates"])
        out = {}
        for p, path in spec.features.items():
            a = feats[path][0] if isinstance(feats[path], tuple) else feats[path]
            out[p] = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
        return out
    return f


def batch_inputs(preprocess, x_raw, key, augment: bool):
    """Normalised model inputs of raw batches [R, B, H, W, C]: row r augmented with
    ``fold_in(key, r)`` when ``augment`` (like a training batch), else only normalised. Every model
    that sees row r sees the same images, so the cross moments compare like with like."""
    if not augment:
        return preprocess.eval(x_raw)
    keys = agent_keys(key, x_raw.shape[0])
    return jax.vmap(preprocess.train)(keys, x_raw)


def make_stats_step(model, spec: PermutationSpec, preprocess, strategy: str = "auto", augment: bool = False
                    ) -> Callable:
    """Jitted ``step(moments, variables, x_all, idx, blocks, nbr, src_block, key, received=None) -> moments``.

    ``variables``: stacked {'params', 'batch_stats'} [N, ...]; ``x_all``: raw training images;
    ``idx`` int [R, B]: the batch of each data row (R = N, one per agent, or R = 1 for data shared
    by all); ``blocks`` int [N, L]: model m runs on rows ``blocks[m]``; ``nbr`` and ``src_block`` int
    [N, D] from the Neighbourhood and ForwardPlan; ``key`` augments the rows when ``augment``;
    ``received``: the models as the neighbours received them (compressed messages), stacked like
    ``variables`` — the receivers' own features always come from ``variables``.
    """
    features = feature_fn(model, spec)
    feats_of = over_agents(lambda agent: features(*agent), strategy)  # (variables_m, x_m) per model

    @jax.jit
    def step(m: Moments, variables, x_all, idx, blocks, nbr, src_block, key, received=None) -> Moments:
        n, l = blocks.shape
        rows = batch_inputs(preprocess, x_all[idx], key, augment)   # [R, B, H, W, C]
        x = rows[blocks].reshape((n, l * rows.shape[1]) + rows.shape[2:])  # [N, L*B, H, W, C]
        feats = feats_of((variables if received is None else received, x))  # p -> [N, L*B*h*w, C]
        own_feats = None if received is None else feats_of((variables, rows[blocks[:, 0]]))
        new = dataclasses.replace(m, count=dict(m.count), own_sum=dict(m.own_sum), own_sq=dict(m.own_sq),
                                  nbr_sum=dict(m.nbr_sum), nbr_sq=dict(m.nbr_sq), cross=dict(m.cross))
        for p, f in feats.items():
            f = f.reshape(n, l, -1, f.shape[-1])                 # [N, L, S, C]
            new.count[p] = m.count[p] + f.shape[2]  # [N] (the same for every receiver)
            own = f[:, 0] if own_feats is None else own_feats[p]  # [N, S, C]
            nb = f[nbr, src_block]                               # [N, D, S, C]
            new.own_sum[p] = m.own_sum[p] + own.sum(1)
            new.own_sq[p] = m.own_sq[p] + jnp.square(own).sum(1)
            new.nbr_sum[p] = m.nbr_sum[p] + nb.sum(2)
            new.nbr_sq[p] = m.nbr_sq[p] + jnp.square(nb).sum(2)
            new.cross[p] = m.cross[p] + jnp.einsum("nsc,ndse->ndce", own, nb,
                                                   precision=jax.lax.Precision.HIGHEST)
        return new

    return step


def make_unrolled_stats_step(model, spec: PermutationSpec, preprocess, hood, shared_data: bool,
                             augment: bool = False) -> Callable:
    """:func:`make_stats_step` for the ``unrolled`` strategy with this neighbourhood's edges built in:
    jitted ``step(moments, variables, x_all, idx, key, received=None) -> moments`` with ``idx`` int
    [1, B] (shared data) or [N, B] (each agent's own batch); neighbours' features from ``received``
    when given (see :func:`make_stats_step`).

    No feature map leaves the model that made it or is copied per edge (the generic step stacks every
    model's maps and gathers them per neighbour slot, which costs as much as a third of the pass on a
    CPU). Shared data: each model runs once on the batch; a neighbour's sums and squares are its own,
    and each edge's cross moment is one product of the two models' maps. Local data: receiver by
    receiver, its own model and each neighbour's model run on its batch (N + edges forwards, as the
    generic plan) and are reduced to moments at once.
    """
    features = feature_fn(model, spec)
    n, d = hood.nbr.shape
    slots = [[(int(hood.nbr[i, k]), k) for k in range(d) if hood.mask[i, k]] for i in range(n)]
    cross_of = lambda a, b: jnp.einsum("sc,se->ce", a, b, precision=jax.lax.Precision.HIGHEST)  # noqa: E731

    def moments_of(own, nbrs):
        """Sums of the receiver's maps and of each neighbour's (list of (slot, maps)), and cross moments."""
        out = {}
        for p, fo in own.items():
            c = fo.shape[-1]
            z = jnp.zeros((d, c), jnp.float32)
            nb_sum, nb_sq, cross = z, z, jnp.zeros((d, c, c), jnp.float32)
            for k, fj in nbrs:
                nb_sum, nb_sq = nb_sum.at[k].set(fj[p].sum(0)), nb_sq.at[k].set(jnp.square(fj[p]).sum(0))
                cross = cross.at[k].set(cross_of(fo, fj[p]))
            out[p] = (fo.shape[0], fo.sum(0), jnp.square(fo).sum(0), nb_sum, nb_sq, cross)
        return out

    @jax.jit
    def step(m: Moments, variables, x_all, idx, key, received=None) -> Moments:
        rows = batch_inputs(preprocess, x_all[idx], key, augment)   # [R, B, H, W, C]
        model_of = lambda a: jax.tree.map(lambda t: t[a], variables)  # noqa: E731
        sent = variables if received is None else received
        nbr_of = lambda a: jax.tree.map(lambda t: t[a], sent)  # noqa: E731
        per_receiver = []
        if shared_data:
            maps = [features(model_of(a), rows[0]) for a in range(n)]
            nbr_maps = maps if received is None else [features(nbr_of(a), rows[0]) for a in range(n)]
            per_receiver = [moments_of(maps[i], [(k, nbr_maps[j]) for j, k in slots[i]]) for i in range(n)]
        else:
            for i in range(n):
                x = rows[i]
                if per_receiver:  # receiver i starts after i - 1 finished: one receiver's maps live at a time
                    per_receiver[-1], x = jax.lax.optimization_barrier((per_receiver[-1], x))
                per_receiver.append(moments_of(features(model_of(i), x),
                                               [(k, features(nbr_of(j), x)) for j, k in slots[i]]))
        stack = lambda p, q: jnp.stack([r[p][q] for r in per_receiver])  # noqa: E731
        return Moments(count={p: m.count[p] + per_receiver[0][p][0] for p in m.count},
                       own_sum={p: m.own_sum[p] + stack(p, 1) for p in m.own_sum},
                       own_sq={p: m.own_sq[p] + stack(p, 2) for p in m.own_sq},
                       nbr_sum={p: m.nbr_sum[p] + stack(p, 3) for p in m.nbr_sum},
                       nbr_sq={p: m.nbr_sq[p] + stack(p, 4) for p in m.nbr_sq},
                       cross={p: m.cross[p] + stack(p, 5) for p in m.cross})

    return step


def correlations(m: Moments, eps: float = 1e-7) -> dict[str, np.ndarray]:
    """Pearson correlations per permutation, float32 [N, D, C_i, C_j] (host numpy).

    cov = E[f_i f_jᵀ] − μ_i μ_jᵀ; corr = cov / max(σ_i σ_jᵀ, eps); a dead unit (σ = 0) gives 0.
    """
    out = {}
    from dimat_jax.distributed import to_host
    m = jax.tree.map(to_host, m)  # sharded (possibly across processes) -> numpy
    for p in m.cross:
        count = np.asarray(m.count[p], np.float64)                           # [N]
        c2, c3, c4 = count[:, None], count[:, None, None], count[:, None, None, None]
        mu_i = np.asarray(m.own_sum[p], np.float64) / c2                     # [N, C]
        var_i = np.asarray(m.own_sq[p], np.float64) / c2 - mu_i ** 2
        mu_j = np.asarray(m.nbr_sum[p], np.float64) / c3                     # [N, D, C]
        var_j = np.asarray(m.nbr_sq[p], np.float64) / c3 - mu_j ** 2
        sd_i = np.sqrt(np.maximum(var_i, 0.0))
        sd_j = np.sqrt(np.maximum(var_j, 0.0))
        cov = np.asarray(m.cross[p], np.float64) / c4 - mu_i[:, None, :, None] * mu_j[:, :, None, :]
        denom = sd_i[:, None, :, None] * sd_j[:, :, None, :]
        corr = cov / np.maximum(denom, eps)
        corr = np.where(denom > 0, corr, 0.0)
        out[p] = corr.astype(np.float32)
    return out


def make_sharded_stats_step(model, spec: PermutationSpec, preprocess, mesh, plan, strategy: str = "auto",
                            per_agent_data: bool = False, augment: bool = False) -> Callable:
    """:func:`make_stats_step` for agents sharded over a mesh, receiver-major: every device fetches
    its receivers' neighbour *models* (``plan``: collective-permutes for sparse graphs, an
    all-gather for dense ones) and runs them on its own agents' batches, so no feature map crosses
    devices. Jitted ``step(moments, variables, x_all, idx [N, B], key) -> moments``; receiver i's
    batch is augmented with ``fold_in(key, i)`` when ``augment``."""
    from dimat_jax.distributed import candidates, sharded
    features = feature_fn(model, spec)
    cand_table = np.asarray(plan.cand)
    slots = cand_table.shape[1]

    def local(m, variables, idx, cand, keys, x_all):
        pool = candidates(variables, plan)
        x0 = x_all[0][idx[0]] if per_agent_data else x_all[idx[0]]
        shapes = jax.eval_shape(features, jax.tree.map(lambda v: v[0], variables), preprocess.eval(x0))
        samples = {p: a.shape[0] for p, a in shapes.items()}  # B·h·w per feature point (static)

        def receiver(args):
            own, batch_idx, c, k, x_own = args
            x = x_own[batch_idx] if per_agent_data else x_all[batch_idx]
            x = preprocess.train(k, x) if augment else preprocess.eval(x)
            f_own = features(own, x)
            f_nb = [features(jax.tree.map(lambda v: v[c[s]], pool), x) for s in range(slots)]
            out = {}
            for p, fo in f_own.items():
                nb = jnp.stack([f[p] for f in f_nb])                               # [S, samples, C]
                out[p] = (fo.sum(0), jnp.square(fo).sum(0), nb.sum(1), jnp.square(nb).sum(1),
                          jnp.einsum("sc,dse->dce", fo, nb, precision=jax.lax.Precision.HIGHEST))
            return out

        # the receiver's own data rides along when data is agent-local (else a placeholder: x_all is shared)
        sums = over_agents(receiver, strategy)((variables, idx, cand, keys, x_all if per_agent_data else cand))
        return Moments(count={p: m.count[p] + samples[p] for p in m.count},
                       own_sum={p: m.own_sum[p] + sums[p][0] for p in m.own_sum},
                       own_sq={p: m.own_sq[p] + sums[p][1] for p in m.own_sq},
                       nbr_sum={p: m.nbr_sum[p] + sums[p][2] for p in m.nbr_sum},
                       nbr_sq={p: m.nbr_sq[p] + sums[p][3] for p in m.nbr_sq},
                       cross={p: m.cross[p] + sums[p][4] for p in m.cross})

    fn = sharded(local, mesh, 6) if per_agent_data else sharded(local, mesh, 5, 1)

    @jax.jit
    def step(m: Moments, variables, x_all, idx, key):
        keys = agent_keys(key, idx.shape[0])
        return fn(m, variables, idx, jnp.asarray(cand_table), keys, x_all)

    return step
