"""SwarmSGD (docs/algorithm.md §3): one interacting pair at a time; only that pair trains and
(sometimes) averages. BatchNorm statistics stay each agent's own.

``baseline.swarm_variant``:

- ``reference`` (default; what the reference code runs): one interaction per synchronised
  minibatch step — every agent's data stream advances every step, the pair uses its batch of that
  step. A node is drawn uniformly, then one of its neighbours uniformly; both take a heavy-ball SGD
  step (momentum ``baseline.momentum``, buffers kept per agent) and replace their parameters by the
  pair's average only when t mod (I1 + I2) >= I1 (t counts interactions; ``baseline.swarm_i1`` = 10,
  ``baseline.swarm_i2`` = 20). Each agent steps 2 · steps_per_epoch / N times per epoch on average.
- ``uniform_edge`` (ours): N · steps_per_epoch / 2 interactions per epoch, each a uniformly random
  edge whose two ends take a plain SGD step on their own next minibatch and always average, so every
  agent steps steps_per_epoch times per epoch on average.

Both continue the agents' batch streams where pre-training left them. Communication: two model
messages (a -> b, b -> a) per averaging interaction.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dimat_jax import agents, comms
from dimat_jax.algorithms import Algorithm
from dimat_jax.algorithms.gossip import MomentumState, NoState
from dimat_jax.agents import AgentState, make_agent_grads, over_agents
from dimat_jax.data.pipeline import epoch_batches, stream_positions
from dimat_jax.guards import check_losses


def make_swarm_step(model, preprocess, *, strategy: str = "auto", bn_mode: str = "ema", momentum: float = 0.0):
    """Jitted ``step(state, x_all, y_all, pair [2], idx [2, B], key, lr, average=True) -> (state,
    metrics [2])``: agents ``pair`` take an SGD step (heavy-ball with ``momentum`` > 0, buffers in
    ``state.opt_state``, a :class:`MomentumState`) on batches ``idx``, then, when ``average``, both take the
    pair's mean parameters."""
    grads_fn = make_agent_grads(model, preprocess, bn_mode)

    def agent_grads(agent, x_all, y_all):
        params, stats, idx, key = agent
        return grads_fn(params, stats, x_all[idx], y_all[idx], key)

    lifted = over_agents(agent_grads, strategy)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: AgentState, x_all, y_all, pair, idx, key, lr, average=True):
        take = lambda tree: jax.tree.map(lambda x: x[pair], tree)  # noqa: E731
        put = lambda tree, new: jax.tree.map(lambda x, a: x.at[pair].set(a), tree, new)  # noqa: E731
        params = take(state.params)
        g, new_stats, loss, acc = lifted((params, take(state.batch_stats), idx, agents.agent_keys(key, 2)),
                                         x_all, y_all)
        opt = state.opt_state
        if momentum:
            buf = jax.tree.map(lambda m, gg: momentum * m + gg, take(opt.momentum), g)
            opt = MomentumState(put(opt.momentum, buf))
            g = buf
        stepped = jax.tree.map(lambda p, gg: p - lr * gg, params, g)
        new = jax.tree.map(lambda p: jnp.where(average, jnp.broadcast_to(p.mean(0), p.shape), p), stepped)
        return (state.replace(params=put(state.params, new), batch_stats=put(state.batch_stats, new_stats),
                              opt_state=opt), {"loss": loss, "accuracy": acc})

    return step


def undirected_edges(w: np.ndarray) -> np.ndarray:
    """[E, 2] pairs a < b with Π[a, b] > 0 or Π[b, a] > 0."""
    a = (np.asarray(w) > 0) | (np.asarray(w).T > 0)
    return np.argwhere(np.triu(a, 1)).astype(np.int32)


def neighbour_lists(w: np.ndarray) -> list[np.ndarray]:
    """Agent i's neighbours (Π[i, j] > 0 or Π[j, i] > 0, j ≠ i), one sorted array per agent."""
    a = (np.asarray(w) > 0) | (np.asarray(w).T > 0)
    np.fill_diagonal(a, False)
    return [np.flatnonzero(row) for row in a]


def node_then_neighbour(rng: np.random.Generator, nbrs: list[np.ndarray]) -> np.ndarray:
    """The reference's pair: a node uniformly among those with neighbours, then one of its
    neighbours uniformly. int32 [2]."""
    while True:
        i = int(rng.integers(len(nbrs)))
        if len(nbrs[i]):
            return np.array([i, nbrs[i][rng.integers(len(nbrs[i]))]], np.int32)


def averages_at(t: int, i1: int, i2: int) -> bool:
    """Whether interaction ``t`` (0-based) averages: the last ``i2`` of every ``i1 + i2`` interactions."""
    return t % (i1 + i2) >= i1


class Swarm(Algorithm):
    """Round r = ``local_epochs`` epochs of interactions, then evaluate (phase 'trained')."""

    def __init__(self, services, topology):
        c, b = services.config, services.config.baseline
        self.topology, self.variant = topology, b.swarm_variant
        self.data, self.n = services.data, services.data.num_agents
        self.reference = self.variant == "reference"
        # the pair's step runs on whichever devices hold a and b (XLA moves the two models)
        self.step = make_swarm_step(services.model, services.data.preprocess, strategy=services.strategy,
                                    bn_mode="frozen" if b.bn_frozen else "ema",
                                    momentum=b.momentum if self.reference else 0.0)
        self.edges = [undirected_edges(m) for m in topology.matrices]
        self.nbrs = [neighbour_lists(m) for m in topology.matrices]
        if any(len(e) == 0 for e in self.edges):
            raise ValueError(f"swarmsgd needs a graph with edges; topology {topology.name!r} has none")
        self.per_epoch = (services.steps_per_epoch if self.reference
                          else max(1, self.n * services.steps_per_epoch // 2))
        self.first_epoch = c.pretrain_epochs
        # uniform_edge: items consumed from each agent's data stream (pre-training consumed the first ones)
        self.positions = np.full(self.n, c.pretrain_epochs * services.steps_per_epoch * c.batch_size, np.int64)
        self.seed, self.batch_size = c.seed, c.batch_size
        services.log(f"swarmsgd ({self.variant}): SGD lr {b.lr} (baseline.lr), lr x {b.lr_decay}/epoch, "
                     + (f"momentum {b.momentum}, one node-then-neighbour pair per minibatch step, averaging in the "
                        f"last {b.swarm_i2} of every {b.swarm_i1 + b.swarm_i2} interactions" if self.reference else
                        f"one uniformly random edge steps and averages per interaction, {self.per_epoch} "
                        "interactions/epoch"))

    def init(self, state):
        if self.reference:
            return state.replace(opt_state=MomentumState(jax.tree.map(jnp.zeros_like, state.params)))
        return state.replace(opt_state=NoState())

    def _pair_and_batches(self, rng, e: int, s: int, t: int, epoch_idx):
        k = t % self.topology.period
        if self.reference:
            pair = node_then_neighbour(rng, self.nbrs[k])
            return pair, epoch_idx[s][pair]
        es = self.edges[k]
        pair = es[rng.integers(len(es))]
        idx = np.stack([stream_positions(self.data.shards[a], self.seed, int(a), int(self.positions[a]),
                                         self.batch_size) for a in pair])
        self.positions[pair] += self.batch_size
        return pair, idx

    def round(self, state, r: int, services):
        c, b, n = services.config, services.config.baseline, self.n
        key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x5A4)
        message_bytes = comms.payload_bytes(state.params)
        averaged = 0
        loss_sum, acc_sum, count = np.zeros(n), np.zeros(n), np.zeros(n)
        t_start, step_gflops, interactions = time.perf_counter(), None, 0
        bar = tqdm(total=c.local_epochs * self.per_epoch, desc=f"round {r}/{c.rounds}", leave=False,
                   disable=None if c.log.progress else True, unit="step")
        first = services.counters.epoch
        for e in range(first, first + c.local_epochs):
            rng = np.random.default_rng(np.random.SeedSequence([c.seed, e, 0x5A4]))
            lr = jnp.float32(b.lr * b.lr_decay ** (e - self.first_epoch))
            epoch_idx = (epoch_batches(self.data.shards, c.seed, e, services.steps_per_epoch, c.batch_size)
                         if self.reference else None)  # [steps, N, B]: the synchronised streams
            pending = []
            for s in range(self.per_epoch):
                t = (e - self.first_epoch) * self.per_epoch + s
                pair, idx = self._pair_and_batches(rng, e, s, t, epoch_idx)
                average = averages_at(t, b.swarm_i1, b.swarm_i2) if self.reference else True
                args = (services.x_train, services.y_train, jnp.asarray(pair), jnp.asarray(idx, jnp.int32),
                        jax.random.fold_in(key, t), lr, jnp.bool_(average))
                state, m = self.step(state, *args)
                if step_gflops is None:
                    step_gflops = services.flops.gflops(self.step, state, *args)
                interactions += 1
                pending.append((pair, m))
                if average:
                    services.count(np.bincount(pair, minlength=n), message_bytes)
                    averaged += 1
                bar.update(1)
            for pair, m in pending:
                loss_sum[pair] += np.asarray(m["loss"])
                acc_sum[pair] += np.asarray(m["accuracy"])
                count[pair] += 1
            check_losses(loss_sum / np.maximum(count, 1), f"epoch {e}, round {r} (swarmsgd)", services.loss_limit, bar)
        bar.close()
        services.advance(c.local_epochs)
        count = np.maximum(count, 1)
        services.emit(state.variables, round_=r, phase="trained", train={
            "loss": loss_sum / count, "accuracy": acc_sum / count, "gflops": (step_gflops or 0.0) * interactions,
            "time_s": time.perf_counter() - t_start})
        return state, {"interactions": interactions, "averaging": averaged}

    def extra_state(self) -> dict:
        return {"positions": self.positions.tolist()}

    def load_extra_state(self, extra: dict) -> None:
        self.positions = np.asarray(extra["positions"], np.int64)
