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
from dimat_jax.merging import compress
from dimat_jax.merging.engine import Merger, merge_batches
from dimat_jax.merging.matching import MATCHERS
from dimat_jax.merging.neighbours import Neighbourhood
from dimat_jax.models import permutation_spec
from dimat_jax.topology import drop_edges


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
    """dimat / wa / wm: round r = merge → evaluate → (unless r = T) local epochs → evaluate.

    Beyond the paper (docs/algorithm.md §8): ``merge.basis='shared'`` merges every agent into one
    common basis; ``merge.rematch='adaptive'`` then skips the matching while a small probe finds the
    bases still aligned; ``merge.compression`` sends compressed models; ``merge.edge_fraction`` and
    ``merge.straggler_prob`` merge over a random part of the graph each round.

    Between rounds ``state.opt_state`` carries what the merges need from one round to the next (the
    top-k compression's record of what the neighbours hold; otherwise nothing): the optimizer is
    fresh after every merge anyway, so its state never crosses a round boundary.
    """

    def __init__(self, services, topology):
        c = services.config
        self.topology = topology
        self.shared = c.merge_data == "global"
        self.tx, self.step = services.train_step("local", bn_mode="cumulative" if c.merge.bn_cumulative else "ema")
        self.merger = None
        self.hoods = {}
        self.shared_basis = False  # a shared-basis merge has happened (adaptive re-matching may skip)
        self.first_sent = False    # topk: the first (dense) message has gone out
        self.matched_rounds: list[int] = []
        self.compression = c.merge.compression
        if self.shared:
            services.log("merge data: global — every agent's merge uses the whole training set (the reference "
                         "code's behaviour; it leaks every agent's data into every merge)")

    def init(self, state):
        return state.replace(opt_state=self._carry(state.variables))

    def _carry(self, variables):
        return compress.TopkState(sent=jax.tree.map(jnp.zeros_like, variables)) if self.compression == "topk" else ()

    def extra_state(self) -> dict:
        return {"shared_basis": self.shared_basis, "first_sent": self.first_sent, "matched_rounds": self.matched_rounds}

    def load_extra_state(self, extra: dict) -> None:
        self.shared_basis = extra.get("shared_basis", False)
        self.first_sent = extra.get("first_sent", False)
        self.matched_rounds = list(extra.get("matched_rounds", []))

    def _matrix(self, r: int, services) -> np.ndarray:
        c, n = services.config, services.data.num_agents
        w = shortcut_matrix(n) if c.merge.fc_shortcut else self.topology.matrix(r - 1)
        if c.merge.edge_fraction < 1 or c.merge.straggler_prob > 0:
            rng = np.random.default_rng(np.random.SeedSequence([c.seed, r, 0xED6E]))
            w = drop_edges(w, c.merge.edge_fraction, c.merge.straggler_prob, rng)
        return w

    def _transmit(self, state, services):
        """(received models or None for exact ones, bytes per message, carry for the next round)."""
        m, v = services.config.merge, state.variables
        if m.compression == "none":
            return None, comms.payload_bytes(v), state.opt_state
        if m.compression == "bf16":
            received, nbytes = compress.bf16(v)
        elif m.compression == "int8":
            received, nbytes = compress.int8(v)
        else:
            received, nbytes, carry = compress.topk(v, state.opt_state if self.first_sent else None, m.topk_fraction)
            self.first_sent = True
            return received, nbytes, carry
        return received, nbytes, state.opt_state

    def round(self, state, r: int, services):
        c, data = services.config, services.data
        m, n = c.merge, data.num_agents
        if self.merger is None:
            self.merger = make_merger(services, state.variables)
        w = self._matrix(r, services)
        if w.tobytes() not in self.hoods:
            self.hoods[w.tobytes()] = Neighbourhood.from_matrix(w)
        hood = self.hoods[w.tobytes()]
        key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x3E + r)
        batches = merge_batches(data.shards, c.merge_data, m.batch_size, m.num_batches, c.seed, r,
                                positions=services.per_agent_data, num_examples=m.num_examples, labels=data.dataset.y_train)
        received, message_bytes, carry = self._transmit(state, services)
        match, probe = True, {}
        if m.rematch == "adaptive" and self.shared_basis:  # is a plain average enough this round?
            probe_batches = merge_batches(data.shards, c.merge_data, m.batch_size, 0, c.seed + 1, r,
                                          num_examples=m.probe_examples, labels=data.dataset.y_train)
            gain, gflops = self.merger.alignment_gain(state.variables, hood, services.x_train, probe_batches,
                                                      self.shared, jax.random.fold_in(key, 7), received)
            match = gain > m.rematch_threshold
            probe = {"merge_probe_gain": gain, "merge_probe_gflops": gflops}
            if not match:
                batches = probe_batches  # BatchNorm re-estimated on the probe sample only
        merged, info = self.merger.merge(state.variables, hood, services.x_train, batches, shared_data=self.shared,
                                         reestimate_before=m.bn_before and match, reestimate_after=m.bn_after,
                                         key=key, received=received, basis=m.basis, match=match)
        info.gflops += probe.get("merge_probe_gflops", 0.0)
        match = match and self.merger.matcher.name != "identity"  # wa averages: nothing is matched
        if match:
            self.matched_rounds.append(r)
            self.shared_basis = self.shared_basis or m.basis == "shared"
        if m.fc_shortcut:
            merged = shard_agents(jax.tree.map(lambda x: jnp.broadcast_to(x[:1], x.shape), merged), services.mesh)
            sent = np.ones(n, np.int64)
            sent[0] = n - 1  # everyone sends to agent 0; agent 0 sends the result to everyone
        else:
            sent = comms.senders(w)
        services.count(sent, message_bytes)
        state = state.replace(params=merged["params"], batch_stats=merged["batch_stats"], opt_state=carry)
        extra = {"merge_time_s": info.total_s, "merge_stage_s": {
            "bn_before": info.bn_before_s, "statistics": info.stats_s, "matching": info.match_s,
            "mix": info.mix_s, "bn_after": info.bn_after_s}, "merge_data_passes": info.data_passes,
            "merge_examples": info.examples_per_pass, "merge_gflops": info.gflops, "merge_matched": match,
            "merge_edges": int(hood.num_edges), **probe}
        if info.mean_matched_correlation:
            extra["mean_matched_correlation"] = float(np.mean(list(info.mean_matched_correlation.values())))
        services.emit(state.variables, round_=r, phase="merged", extra=extra)
        if r < c.rounds:
            train_state = state.replace(opt_state=agents.init_opt_state(self.tx, state.params))  # fresh optimizer
            # cumulative BN (reference): the re-estimation's batches are the first in the average
            bn_count = (info.batches_per_pass if m.bn_after else 0) if m.bn_cumulative else None
            extra_args = None if bn_count is None else (lambda e, s, t, b0=bn_count: (jnp.float32(b0 + t),))
            train_state, stats = services.train(train_state, self.step, c.local_epochs, f"round {r}/{c.rounds}",
                                                extra_args=extra_args)
            state = train_state.replace(opt_state=carry)
            services.emit(state.variables, round_=r, phase="trained", train=stats)
        diagnostics = {"merge": f"{info.data_passes} passes x {info.examples_per_pass} examples"
                                + ("" if match else " (bases aligned: plain average)"),
                       "merge_gflops": info.gflops, "merge_s": info.total_s}
        if probe:
            diagnostics["probe_gain"] = probe["merge_probe_gain"]
        if "mean_matched_correlation" in extra:
            diagnostics["matched_correlation"] = extra["mean_matched_correlation"]
        return state, diagnostics
