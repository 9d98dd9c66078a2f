"""The merge family: ``dimat`` (activation matching), ``wa`` (plain weighted averaging) and ``wm``
(weight matching) share one loop (docs/algorithm.md §1):

    for k = 1..T:  merge with neighbours (all agents at once, from the same pre-merge models)
                   → BatchNorm re-estimation → evaluate (phase 'merged')
                   → unless k = T: E local epochs with a fresh optimizer → evaluate (phase 'trained')

Communication: every agent receives one model (parameters and BatchNorm statistics) from each
neighbour per merge. With ``merge.fc_shortcut`` (the reference, fully connected graph only) agent 0
merges alone and its model is copied to all: N−1 models in, N−1 out.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents, comms
from dimat_jax.algorithms import MERGE_FAMILY, Algorithm
from dimat_jax.distributed import shard_agents
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.matching import MATCHERS
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import permutation_spec


def shortcut_matrix(n: int) -> np.ndarray:
    """Agent 0 averages everyone (1/N); the others keep their model (they receive agent 0's after)."""
    w = np.eye(n)
    w[0] = 1.0 / n
    return w


def make_merger(services, variables) -> Merger:
    c = services.config
    matcher = MATCHERS[MERGE_FAMILY[c.algorithm]]
    if matcher.name == "weight":
        matcher = matcher._replace(match=functools.partial(matcher.match, max_sweeps=c.merge.wm_max_sweeps))
    spec = permutation_spec(c.model, jax.tree.map(lambda x: x[0], variables))
    return Merger(services.model, spec, services.data.preprocess, strategy=services.strategy, matcher=matcher,
                  augment=c.merge.augment, seed=c.seed, mesh=services.mesh, per_agent_data=services.per_agent_data)


class MergeFamily(Algorithm):
    """dimat / wa / wm: round r = merge → evaluate → (unless r = T) local epochs → evaluate."""

    def __init__(self, services, topology):
        c = services.config
        self.topology = topology
        self.shared = c.merge_data == "global"
        self.tx, self.step = services.train_step("local", bn_mode="cumulative" if c.merge.bn_cumulative else "ema")
        self.merger = None
        self.hoods = {}
        if self.shared:
            services.log("merge data: global — every agent's merge uses the whole training set (the reference "
                         "code's behaviour; it leaks every agent's data into every merge)")

    def init(self, state):
        return state.replace(opt_state=agents.init_opt_state(self.tx, state.params))

    def round(self, state, r: int, services):
        c, data = services.config, services.data
        n = data.num_agents
        if self.merger is None:
            self.merger = make_merger(services, state.variables)
        w = shortcut_matrix(n) if c.merge.fc_shortcut else self.topology.matrix(r - 1)
        if w.tobytes() not in self.hoods:
            self.hoods[w.tobytes()] = Neighbourhood.from_matrix(w)
        hood = self.hoods[w.tobytes()]
        batches = merge_batches(data.shards, c.merge_data, c.merge.batch_size, c.merge.num_batches, c.seed, r,
                                positions=services.per_agent_data, num_examples=c.merge.num_examples,
                                labels=data.dataset.y_train)
        merged, info = self.merger.merge(state.variables, hood, services.x_train, batches, shared_data=self.shared,
                                         reestimate_before=c.merge.bn_before, reestimate_after=c.merge.bn_after,
                                         key=jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x3E + r))
        if c.merge.fc_shortcut:
            merged = shard_agents(jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), merged), services.mesh)
            sent = np.ones(n, np.int64)
            sent[0] = n - 1  # everyone sends to agent 0; agent 0 sends the result to everyone
        else:
            sent = comms.senders(w)
        services.count(sent, comms.payload_bytes(state.variables))
        state = state.replace(params=merged["params"], batch_stats=merged["batch_stats"])
        extra = {"merge_time_s": info.total_s, "merge_stage_s": {
            "bn_before": info.bn_before_s, "statistics": info.stats_s, "matching": info.match_s,
            "mix": info.mix_s, "bn_after": info.bn_after_s}, "merge_data_passes": info.data_passes,
            "merge_examples": info.examples_per_pass, "merge_gflops": info.gflops}
        if info.mean_matched_correlation:
            extra["mean_matched_correlation"] = float(np.mean(list(info.mean_matched_correlation.values())))
        services.emit(state.variables, round_=r, phase="merged", extra=extra)
        if r < c.rounds:
            state = state.replace(opt_state=agents.init_opt_state(self.tx, state.params))  # fresh optimizer
            # cumulative BN (reference): the re-estimation's batches are the first in the average
            bn_count = (info.batches_per_pass if c.merge.bn_after else 0) if c.merge.bn_cumulative else None
            extra_args = None if bn_count is None else (lambda e, s, t, b0=bn_count: (jnp.float32(b0 + t),))
            state, stats = services.train(state, self.step, c.local_epochs, f"round {r}/{c.rounds}",
                                          extra_args=extra_args)
            services.emit(state.variables, round_=r, phase="trained", train=stats)
        diagnostics = {"merge": f"{info.data_passes} passes x {info.examples_per_pass} examples",
                       "merge_gflops": info.gflops, "merge_s": info.total_s}
        if "mean_matched_correlation" in extra:
            diagnostics["matched_correlation"] = extra["mean_matched_correlation"]
        return state, diagnostics
