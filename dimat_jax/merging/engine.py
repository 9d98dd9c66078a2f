"""One merge round for all agents: BN re-estimation → activation statistics → host LSA →
apply + mix → BN re-estimation (docs/algorithm.md §2): about 3 data passes for all agents together.

Which data the passes use (docs/algorithm.md §2.6):
- ``merge_data='local'`` (default): agent i uses only its own shard; for a neighbour's statistics
  it runs the neighbour's (received) model on its own data.
- ``merge_data='global'``: every agent uses the whole training set (the reference code's
  behaviour, which leaks every agent's data into every merge).
``num_batches`` bounds the passes (0 = one full pass over the data).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax.data.pipeline import epoch_batches
from dimat_jax.merging import batchnorm, matching, stats
from dimat_jax.merging.mix import make_mix
from dimat_jax.merging.neighbours import ForwardPlan, Neighbourhood
from dimat_jax.merging.spec import PermutationSpec

MERGE_DATA = ("local", "global")


def merge_batches(shards, mode: str, batch_size: int, num_batches: int = 0, seed: int = 0,
                  round_: int = 0, positions: bool = False) -> np.ndarray:
    """Index batches for one merge round, int32 [T, N, B]: row a = the batch agent a uses.

    ``local``: each agent's own shard; ``global``: the union of all shards, the same batch for every
    agent. ``num_batches`` = 0 → one full pass (⌈largest shard / B⌉ steps for ``local``). Batches
    come from the same kind of seeded stream as training, under a separate seed, so bounded passes
    see fresh examples each round. ``positions`` (agent-local data, ``local`` only): positions within
    each agent's shard instead of training-set indices.
    """
    if mode not in MERGE_DATA:
        raise ValueError(f"merge_data must be one of {MERGE_DATA}, got {mode!r}")
    n = len(shards)
    merge_seed = seed * 1_000_003 + 0x3E76
    if mode == "local":
        steps = num_batches or math.ceil(max(len(s) for s in shards) / batch_size)
        return epoch_batches(shards, merge_seed, round_, steps, batch_size, positions)
    if positions:
        raise ValueError("merge data 'global' needs the whole training set on every device; with agent-local "
                         "data (several processes) use merge_data='local'")
    union = np.sort(np.concatenate(shards))
    steps = num_batches or math.ceil(len(union) / batch_size)
    shared = epoch_batches([union], merge_seed, round_, steps, batch_size)  # [T, 1, B]
    return np.repeat(shared, n, axis=1)


@dataclasses.dataclass
class MergeInfo:
    """Timings (s) per stage, data passes, and matching diagnostics of one round."""
    bn_before_s: float = 0.0
    stats_s: float = 0.0
    match_s: float = 0.0
    mix_s: float = 0.0
    bn_after_s: float = 0.0
    data_passes: int = 0
    batches_per_pass: int = 0
    mean_matched_correlation: dict = dataclasses.field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.bn_before_s + self.stats_s + self.match_s + self.mix_s + self.bn_after_s


class Merger:
    """Compiled merge passes for one (model, spec, preprocessing, strategy).

    ``matcher``: a name in :data:`matching.MATCHERS` or a callable ``f(MatchContext) -> perms``
    with a ``needs_activations`` attribute.
    """

    def __init__(self, model, spec: PermutationSpec, preprocess, *, strategy: str = "auto",
                 matcher: str | Callable = "activation", augment: bool = False, seed: int = 0, mesh=None,
                 per_agent_data: bool = False):
        self.model, self.spec, self.seed, self.mesh = model, spec, seed, mesh
        self.per_agent_data = per_agent_data
        self.preprocess, self.strategy = preprocess, strategy
        self.matcher = matching.MATCHERS[matcher] if isinstance(matcher, str) else matcher
        self.augment = augment
        self._stats_step = stats.make_stats_step(model, spec, preprocess, strategy, augment=augment)
        self._bn_step = batchnorm.make_bn_moments_step(model, preprocess, strategy, augment=augment, mesh=mesh,
                                                       per_agent_data=per_agent_data)
        self._mix = make_mix(spec)
        self._sharded = {}  # neighbour lists -> (plan, stats step, mix) on the mesh

    def _on_mesh(self, hood: Neighbourhood):
        """Exchange plan and compiled sharded passes for these neighbour lists (cached)."""
        from dimat_jax.distributed import ExchangePlan, num_devices
        from dimat_jax.merging.mix import make_sharded_mix
        key = hood.nbr.tobytes()
        if key not in self._sharded:
            plan = ExchangePlan.build(hood.nbr, num_devices(self.mesh))
            self._sharded[key] = (plan, stats.make_sharded_stats_step(self.model, self.spec, self.preprocess,
                                                                      self.mesh, plan, self.strategy,
                                                                      self.per_agent_data, self.augment),
                                  make_sharded_mix(self.spec, self.mesh, plan))
        return self._sharded[key]

    # ------------------------------------------------------------------ the stages
    def reestimate_bn(self, variables: dict, x_all, batches, key=None) -> dict:
        """Stacked variables with every BN's statistics recomputed over ``batches`` ([T, N, B])."""
        return batchnorm.reestimate(self._bn_step, variables, x_all, batches, key)

    def moments(self, variables: dict, x_all, hood: Neighbourhood, batches, shared_data: bool, key=None
                ) -> stats.Moments:
        """Accumulated activation moments over ``batches`` ([T, N, B]); batch t is augmented with
        ``fold_in(key, t)`` when the merger augments."""
        key = jax.random.PRNGKey(self.seed) if key is None else key
        if self.mesh is not None:  # receiver-major on the mesh (no feature maps cross devices)
            from dimat_jax.distributed import shard_agents
            _, step, _ = self._on_mesh(hood)
            m = shard_agents(stats.zero_moments(self.spec, hood.num_agents, hood.num_slots), self.mesh)
            for t, idx in enumerate(batches):
                m = step(m, variables, x_all, shard_agents(jnp.asarray(idx), self.mesh), jax.random.fold_in(key, t))
            return m
        plan = ForwardPlan.build(hood, shared_data)
        nbr, src = jnp.asarray(hood.nbr), jnp.asarray(plan.src_block)
        # shared data: one row (every agent's batch is the same), every model reads it
        blocks = jnp.zeros((hood.num_agents, 1), jnp.int32) if shared_data else jnp.asarray(plan.blocks)
        m = stats.zero_moments(self.spec, hood.num_agents, hood.num_slots)
        for t, idx in enumerate(batches):
            idx = jnp.asarray(np.asarray(idx)[:1] if shared_data else idx)
            m = self._stats_step(m, variables, x_all, idx, blocks, nbr, src, jax.random.fold_in(key, t))
        return m

    def correlations(self, variables: dict, x_all, hood: Neighbourhood, batches, shared_data: bool = False,
                     key=None) -> dict[str, np.ndarray]:
        """p -> float32 [N, D, C, C]: receiver i's units (rows) vs neighbour slot k's units (columns)."""
        return stats.correlations(self.moments(variables, x_all, hood, batches, shared_data, key))

    def match(self, variables: dict, hood: Neighbourhood, correlations=None) -> dict[str, np.ndarray]:
        ctx = matching.MatchContext(spec=self.spec, hood=hood, variables=variables, correlations=correlations,
                                    seed=self.seed)
        return self.matcher(ctx)

    def mix(self, variables: dict, hood: Neighbourhood, perms) -> dict:
        """θ_i ← Π[i, i] θ_i + Σ_k weight[i, k] P_ik(θ_nbr[i, k]) (identity permutations = Π @ θ)."""
        if hood.num_slots == 0:
            return jax.tree.map(lambda x: x, variables)
        perms = {p: jnp.asarray(v, jnp.int32) for p, v in perms.items()}
        if self.mesh is not None:
            from dimat_jax.distributed import shard_agents
            _, _, mix = self._on_mesh(hood)
            return mix(variables, shard_agents(perms, self.mesh), shard_agents(jnp.asarray(hood.weight), self.mesh),
                       shard_agents(jnp.asarray(hood.self_weight), self.mesh))
        return self._mix(variables, perms, jnp.asarray(hood.nbr), jnp.asarray(hood.weight),
                         jnp.asarray(hood.self_weight))

    # ------------------------------------------------------------------ a round
    def merge(self, variables: dict, hood: Neighbourhood, x_all, batches, *, shared_data: bool = False,
              reestimate_before: bool = True, reestimate_after: bool = True, key=None) -> tuple[dict, MergeInfo]:
        """One merge of all agents with their neighbours. ``batches``: int [T, N, B] (see
        :func:`merge_batches`); ``shared_data`` when every row of a batch is the same (global data).
        Returns the merged stacked variables and a :class:`MergeInfo`."""
        info = MergeInfo(batches_per_pass=len(batches))
        key = jax.random.PRNGKey(self.seed) if key is None else key
        sync = lambda tree: jax.block_until_ready(tree)  # noqa: E731  (honest stage timings)

        t = time.perf_counter()
        if reestimate_before and self.matcher.needs_activations:
            variables = sync(self.reestimate_bn(variables, x_all, batches, jax.random.fold_in(key, 1)))
            info.data_passes += 1
        info.bn_before_s = time.perf_counter() - t

        corr = None
        t = time.perf_counter()
        if self.matcher.needs_activations and hood.num_slots:
            corr = self.correlations(variables, x_all, hood, batches, shared_data, jax.random.fold_in(key, 3))
            info.data_passes += 1
        info.stats_s = time.perf_counter() - t

        t = time.perf_counter()
        perms = self.match(variables, hood, corr)
        info.match_s = time.perf_counter() - t
        if corr is not None:
            info.mean_matched_correlation = {
                p: float(np.mean([corr[p][i, k][np.arange(len(perms[p][i, k])), perms[p][i, k]].mean()
                                  for i, _, k in hood.edges()])) for p in corr}

        t = time.perf_counter()
        merged = sync(self.mix(variables, hood, perms))
        info.mix_s = time.perf_counter() - t

        t = time.perf_counter()
        if reestimate_after:
            merged = sync(self.reestimate_bn(merged, x_all, batches, jax.random.fold_in(key, 2)))
            info.data_passes += 1
        info.bn_after_s = time.perf_counter() - t
        return merged, info
