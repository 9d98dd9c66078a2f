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

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax.agents import resolve_strategy
from dimat_jax.costs import FlopCounter
from dimat_jax.data.partition import class_sample
from dimat_jax.data.pipeline import epoch_batches
from dimat_jax.merging import batchnorm, matching, stats
from dimat_jax.merging.mix import make_mix
from dimat_jax.merging.neighbours import ForwardPlan, Neighbourhood
from dimat_jax.merging.spec import PermutationSpec, permute_stacked
from dimat_jax.choices import MERGE_DATA  # noqa: F401  (re-exported)



def merge_batches(shards, mode: str, batch_size: int, num_batches: int = 0, seed: int = 0,
                  round_: int = 0, positions: bool = False, num_examples: int = 0, labels=None) -> np.ndarray:
    """Index batches for one merge round, int32 [T, N, B]: row a = the batch agent a uses.

    ``local``: each agent's own shard; ``global``: the union of all shards, the same batch for every
    agent. The size of a pass, per agent:

    - ``num_batches`` > 0: that many batches of the agent's endless shuffled stream;
    - else ``num_examples`` > 0: a seeded sample of that many examples (rounded up to whole batches,
      at most the agent's pool), as class-balanced as the pool allows when ``labels`` (of the whole
      training set) are given, drawn afresh every round;
    - else one full pass (⌈largest shard / B⌉ steps for ``local``).

    Streams and samples are seeded apart from training, so bounded passes see fresh examples each
    round. ``positions`` (agent-local data, ``local`` only): positions within each agent's shard
    instead of training-set indices.
    """
    if mode not in MERGE_DATA:
        raise ValueError(f"merge_data must be one of {MERGE_DATA}, got {mode!r}")
    n = len(shards)
    merge_seed = seed * 1_000_003 + 0x3E76
    if mode == "global" and positions:
        raise ValueError("merge data 'global' needs the whole training set on every device; with agent-local "
                         "data (several processes) use merge_data='local'")
    pools = list(shards) if mode == "local" else [np.sort(np.concatenate(shards))]
    if num_examples > 0 and not num_batches:
        steps = math.ceil(min(num_examples, max(len(p) for p in pools)) / batch_size)
        cols = [_sample_pass(pool, labels, steps * batch_size, (merge_seed, round_, a), positions)
                for a, pool in enumerate(pools)]
        out = np.stack(cols, axis=0).reshape(len(pools), steps, batch_size).transpose(1, 0, 2).astype(np.int32)
    else:
        steps = num_batches or math.ceil(max(len(p) for p in pools) / batch_size)
        out = epoch_batches(pools, merge_seed, round_, steps, batch_size, positions)
    return out if mode == "local" else np.repeat(out, n, axis=1)


def _sample_pass(pool: np.ndarray, labels, size: int, seed: tuple, positions: bool) -> np.ndarray:
    """``size`` indices from ``pool``: a seeded sample of min(size, |pool|) distinct examples (class-
    balanced where possible when ``labels`` are given), shuffled, repeated to fill ``size``."""
    rng = np.random.default_rng(np.random.SeedSequence(list(seed) + [0x5A3]))
    k = min(size, len(pool))
    if labels is None:
        chosen = rng.choice(len(pool), k, replace=False)
    else:
        chosen = class_sample(np.asarray(labels)[pool], k, rng, balanced=True)
    chosen = rng.permutation(chosen)
    chosen = np.resize(chosen, size)  # wrap around when the pool is smaller than a pass
    return chosen if positions else pool[chosen]


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
    examples_per_pass: int = 0   # per agent
    gflops: float = 0.0          # XLA's count for the round's passes, all agents together
    mean_matched_correlation: dict = dataclasses.field(default_factory=dict)
    perms: dict = dataclasses.field(default_factory=dict)  # the matched permutations, p -> int [N, D, C_p]
    universe: dict = dataclasses.field(default_factory=dict)  # basis='shared': p -> int [N, C_p] into the common basis

    @property
    def total_s(self) -> float:
        return self.bn_before_s + self.stats_s + self.match_s + self.mix_s + self.bn_after_s


class Merger:
    """Compiled merge passes for one (model, spec, preprocessing, strategy).

    ``matcher``: a name in :data:`matching.MATCHERS` or a :class:`matching.Matcher`.
    """

    def __init__(self, model, spec: PermutationSpec, preprocess, *, strategy: str = "auto",
                 matcher: str | matching.Matcher = "activation", augment: bool = False, seed: int = 0, mesh=None,
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
        self._compiled = {}  # per neighbourhood: (plan, stats step, mix) on a mesh, or the unrolled stats step
        self.flops = FlopCounter()

    def _on_mesh(self, hood: Neighbourhood):
        """Exchange plan and compiled sharded passes for these neighbour lists (cached)."""
        from dimat_jax.distributed import ExchangePlan, num_devices
        from dimat_jax.merging.mix import make_sharded_mix
        key = hood.nbr.tobytes()
        if key not in self._compiled:
            plan = ExchangePlan.build(hood.nbr, num_devices(self.mesh))
            self._compiled[key] = (plan, stats.make_sharded_stats_step(self.model, self.spec, self.preprocess,
                                                                      self.mesh, plan, self.strategy,
                                                                      self.per_agent_data, self.augment),
                                  make_sharded_mix(self.spec, self.mesh, plan))
        return self._compiled[key]

    def _unrolled_stats_step(self, hood: Neighbourhood, shared_data: bool):
        """The unrolled strategy's statistics step for these edges (compiled once per neighbourhood)."""
        key = ("unrolled", hood.nbr.tobytes(), hood.mask.tobytes(), shared_data)
        if key not in self._compiled:
            self._compiled[key] = stats.make_unrolled_stats_step(self.model, self.spec, self.preprocess, hood,
                                                                shared_data, self.augment)
        return self._compiled[key]

    # ------------------------------------------------------------------ the stages
    def reestimate_bn(self, variables: dict, x_all, batches, key=None) -> dict:
        """Stacked variables with every BN's statistics recomputed over ``batches`` ([T, N, B])."""
        return self._reestimate(variables, x_all, batches, key)[0]

    def _reestimate(self, variables, x_all, batches, key=None) -> tuple[dict, float]:
        """(re-estimated variables, GFLOPs of the pass)."""
        key = jax.random.PRNGKey(0) if key is None else key
        out = batchnorm.reestimate(self._bn_step, variables, x_all, batches, key)
        return out, len(batches) * self.flops.gflops(self._bn_step, None, variables, x_all,
                                                     jnp.asarray(batches[0]), key)

    def moments(self, variables: dict, x_all, hood: Neighbourhood, batches, shared_data: bool, key=None
                ) -> stats.Moments:
        """Accumulated activation moments over ``batches`` ([T, N, B]); batch t is augmented with
        ``fold_in(key, t)`` when the merger augments."""
        return self._moments(variables, x_all, hood, batches, shared_data, key)[0]

    def _moments(self, variables, x_all, hood: Neighbourhood, batches, shared_data: bool, key=None,
                 received=None) -> tuple[stats.Moments, float]:
        """(moments, GFLOPs of the pass); neighbours' features from ``received`` when given."""
        key = jax.random.PRNGKey(self.seed) if key is None else key
        if self.mesh is not None and received is not None:
            raise NotImplementedError("compressed merge messages are not supported with agents sharded over a mesh")
        if self.mesh is not None:  # receiver-major on the mesh (no feature maps cross devices)
            from dimat_jax.distributed import shard_agents
            _, step, _ = self._on_mesh(hood)
            m = shard_agents(stats.zero_moments(self.spec, hood.num_agents, hood.num_slots), self.mesh)
            args = lambda idx, t: (m, variables, x_all, shard_agents(jnp.asarray(idx), self.mesh),  # noqa: E731
                                   jax.random.fold_in(key, t))
        elif resolve_strategy(self.strategy, num_agents=hood.num_agents) == "unrolled":
            step, m = self._unrolled_stats_step(hood, shared_data), stats.zero_moments(self.spec, hood.num_agents,
                                                                                      hood.num_slots)
            args = lambda idx, t: (m, variables, x_all, jnp.asarray(np.asarray(idx)[:1] if shared_data else idx),  # noqa: E731
                                   jax.random.fold_in(key, t), received)
        else:
            plan = ForwardPlan.build(hood, shared_data)
            nbr, src = jnp.asarray(hood.nbr), jnp.asarray(plan.src_block)
            # shared data: one row (every agent's batch is the same), every model reads it
            blocks = jnp.zeros((hood.num_agents, 1), jnp.int32) if shared_data else jnp.asarray(plan.blocks)
            step, m = self._stats_step, stats.zero_moments(self.spec, hood.num_agents, hood.num_slots)
            args = lambda idx, t: (m, variables, x_all, jnp.asarray(np.asarray(idx)[:1] if shared_data else idx),  # noqa: E731
                                   blocks, nbr, src, jax.random.fold_in(key, t), received)
        gflops = len(batches) * self.flops.gflops(step, *args(batches[0], 0))
        for t, idx in enumerate(batches):
            m = step(*args(idx, t))
        return m, gflops

    def correlations(self, variables: dict, x_all, hood: Neighbourhood, batches, shared_data: bool = False,
                     key=None) -> dict[str, np.ndarray]:
        """p -> float32 [N, D, C, C]: receiver i's units (rows) vs neighbour slot k's units (columns)."""
        return stats.correlations(self.moments(variables, x_all, hood, batches, shared_data, key))

    def match(self, variables: dict, hood: Neighbourhood, correlations=None) -> dict[str, np.ndarray]:
        ctx = matching.MatchContext(spec=self.spec, hood=hood, variables=variables, correlations=correlations,
                                    seed=self.seed)
        return self.matcher.match(ctx)

    def mix(self, variables: dict, hood: Neighbourhood, perms) -> dict:
        """θ_i ← Π[i, i] θ_i + Σ_k weight[i, k] P_ik(θ_nbr[i, k]) (identity permutations = Π @ θ)."""
        return self._mix_and_count(variables, hood, perms)[0]

    def _mix_and_count(self, variables, hood: Neighbourhood, perms, received=None) -> tuple[dict, float]:
        if hood.num_slots == 0:
            return jax.tree.map(lambda x: x, variables), 0.0
        perms = {p: jnp.asarray(v, jnp.int32) for p, v in perms.items()}
        if self.mesh is not None and received is not None:
            raise NotImplementedError("compressed merge messages are not supported with agents sharded over a mesh")
        if self.mesh is not None:
            from dimat_jax.distributed import shard_agents
            _, _, mix = self._on_mesh(hood)
            args = (variables, shard_agents(perms, self.mesh), shard_agents(jnp.asarray(hood.weight), self.mesh),
                    shard_agents(jnp.asarray(hood.self_weight), self.mesh))
        else:
            mix = self._mix
            args = (variables, perms, jnp.asarray(hood.nbr), jnp.asarray(hood.weight), jnp.asarray(hood.self_weight),
                    received)
        gflops = self.flops.gflops(mix, *args)
        return mix(*args), gflops

    # ------------------------------------------------------------------ a round
    def alignment_gain(self, variables: dict, hood: Neighbourhood, x_all, batches, shared_data: bool = False,
                       key=None, received=None) -> tuple[float, float]:
        """(gain, GFLOPs): how much better the best matching of every edge correlates than leaving the
        units where they are, averaged over edges and permutations — mean over units of the matched
        correlation minus the correlation of unit k with unit k. About 0 when neighbours already
        share a basis; the cheap drift signal of adaptive re-matching (on a small sample)."""
        if not hood.num_slots:
            return 0.0, 0.0
        m, gflops = self._moments(variables, x_all, hood, batches, shared_data, key, received)
        corr = stats.correlations(m)
        gains = []
        for p, c in corr.items():
            for i, _, k in hood.edges():
                perm = matching.lsa(c[i, k])
                gains.append(c[i, k][np.arange(len(perm)), perm].mean() - np.diagonal(c[i, k]).mean())
        return float(np.mean(gains)), gflops

    def merge(self, variables: dict, hood: Neighbourhood, x_all, batches, *, shared_data: bool = False,
              reestimate_before: bool = True, reestimate_after: bool = True, key=None, received=None,
              basis: str = "own", match: bool = True) -> tuple[dict, MergeInfo]:
        """One merge of all agents with their neighbours. ``batches``: int [T, N, B] (see
        :func:`merge_batches`); ``shared_data`` when every row of a batch is the same (global data).

        ``received``: each agent's model as its neighbours received it (compressed messages, stacked
        like ``variables``; default: the exact models; BatchNorm re-estimation before matching
        applies to the agents' own models). ``basis``: 'own' — every agent merges its
        neighbours into its own units (the paper); 'shared' — every agent, itself included, is first
        permuted into one basis common to its connected component (matching.universe_permutations)
        and the mix is a plain average there. ``match=False``: no statistics pass and identity
        permutations (models already share a basis). Returns the merged stacked variables and a
        :class:`MergeInfo`."""
        info = MergeInfo(batches_per_pass=len(batches), examples_per_pass=int(np.prod(np.shape(batches)[::2])))
        key = jax.random.PRNGKey(self.seed) if key is None else key
        sync = lambda tree: jax.block_until_ready(tree)  # noqa: E731  (honest stage timings)

        t = time.perf_counter()
        if reestimate_before and self.matcher.needs_activations:
            variables, gflops = self._reestimate(variables, x_all, batches, jax.random.fold_in(key, 1))
            variables = sync(variables)
            info.data_passes += 1
            info.gflops += gflops
        info.bn_before_s = time.perf_counter() - t

        corr = None
        t = time.perf_counter()
        if match and self.matcher.needs_activations and hood.num_slots:
            m, gflops = self._moments(variables, x_all, hood, batches, shared_data, jax.random.fold_in(key, 3),
                                      received)
            corr = stats.correlations(m)
            info.data_passes += 1
            info.gflops += gflops
        info.stats_s = time.perf_counter() - t

        t = time.perf_counter()
        identity = {p: np.tile(np.arange(c, dtype=np.int32), hood.nbr.shape + (1,)) for p, c in self.spec.sizes.items()}
        perms = self.match(variables if received is None else received, hood, corr) if match else identity
        info.match_s = time.perf_counter() - t
        info.perms = perms
        if corr is not None:
            info.mean_matched_correlation = {
                p: float(np.mean([corr[p][i, k][np.arange(len(perms[p][i, k])), perms[p][i, k]].mean()
                                  for i, _, k in hood.edges()])) for p in corr}

        t = time.perf_counter()
        if basis == "shared":  # everyone into the component's common basis, then a plain average there
            info.universe = matching.universe_permutations(hood, perms, self.spec.sizes)
            u = {p: jnp.asarray(v) for p, v in info.universe.items()}
            variables = permute_stacked(variables, self.spec, u)
            received = None if received is None else permute_stacked(received, self.spec, u)
            perms = identity
        merged, gflops = self._mix_and_count(variables, hood, perms, received)
        merged = sync(merged)
        info.gflops += gflops
        info.mix_s = time.perf_counter() - t

        t = time.perf_counter()
        if reestimate_after:
            merged, gflops = self._reestimate(merged, x_all, batches, jax.random.fold_in(key, 2))
            merged = sync(merged)
            info.data_passes += 1
            info.gflops += gflops
        info.bn_after_s = time.perf_counter() - t
        return merged, info
