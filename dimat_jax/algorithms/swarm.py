"""SwarmSGD (SPEC §3): per interaction a uniformly random edge (a, b) of the graph; only a and b
take an SGD step on their own minibatch, then both set their parameters to the pair's average
(BatchNorm statistics stay each agent's own). An epoch is N·steps_per_epoch/2 interactions, so an
agent steps steps_per_epoch times per epoch on average; each agent reads its own data stream only
when it steps. Communication: two model messages per interaction (a→b, b→a).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dimat_jax import agents, comms
from dimat_jax.algorithms import Algorithm
from dimat_jax.agents import AgentState, make_agent_grads, over_agents
from dimat_jax.data.pipeline import stream_positions
from dimat_jax.train import check_finite


def make_swarm_step(model, preprocess, *, strategy: str = "auto", bn_mode: str = "ema"):
    """Jitted ``step(state, x_all, y_all, pair [2], idx [2, B], key, lr) -> (state, metrics [2])``."""
    grads_fn = make_agent_grads(model, preprocess, bn_mode)

    def agent_grads(agent, x_all, y_all):
        params, stats, idx, key = agent
        return grads_fn(params, stats, x_all[idx], y_all[idx], key)

    lifted = over_agents(agent_grads, strategy)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: AgentState, x_all, y_all, pair, idx, key, lr):
        params = jax.tree.map(lambda x: x[pair], state.params)
        stats = jax.tree.map(lambda x: x[pair], state.batch_stats)
        g, new_stats, loss, acc = lifted((params, stats, idx, agents.agent_keys(key, 2)), x_all, y_all)
        avg = jax.tree.map(lambda p, gg: jnp.broadcast_to((p - lr * gg).mean(0), p.shape), params, g)
        new_params = jax.tree.map(lambda x, a: x.at[pair].set(a), state.params, avg)
        new_bs = jax.tree.map(lambda x, a: x.at[pair].set(a), state.batch_stats, new_stats)
        return state.replace(params=new_params, batch_stats=new_bs), {"loss": loss, "accuracy": acc}

    return step


def undirected_edges(w: np.ndarray) -> np.ndarray:
    """[E, 2] pairs a < b with Π[a, b] > 0 or Π[b, a] > 0."""
    a = (np.asarray(w) > 0) | (np.asarray(w).T > 0)
    return np.argwhere(np.triu(a, 1)).astype(np.int32)


class Swarm(Algorithm):
    """Round r = ``local_epochs`` epochs of N·steps_per_epoch/2 pair interactions, then evaluate."""

    def __init__(self, ctx, topology):
        c, b = ctx.config, ctx.config.baseline
        self.ctx, self.topology = ctx, topology
        self.n = ctx.data.num_agents
        # the pair's step runs on whichever devices hold a and b (XLA moves the two models)
        self.step = make_swarm_step(ctx.model, ctx.data.preprocess, strategy=ctx.strategy,
                                    bn_mode="frozen" if b.bn_frozen else "ema")
        self.edges = [undirected_edges(m) for m in topology.matrices]
        if any(len(e) == 0 for e in self.edges):
            raise ValueError(f"swarmsgd needs a graph with edges; topology {topology.name!r} has none")
        self.per_epoch = max(1, self.n * ctx.steps_per_epoch // 2)
        self.positions = np.zeros(self.n, np.int64)  # items consumed from each agent's data stream
        self.first_epoch = c.pretrain_epochs
        ctx.log(f"swarmsgd: SGD lr {b.lr} (baseline.lr), lr x {b.lr_decay}/epoch, one random edge steps and "
                f"averages per interaction, {self.per_epoch} interactions/epoch")

    def setup(self, state):
        return state.replace(opt_state={})

    def round(self, state, r: int):
        ctx, c, b, n = self.ctx, self.ctx.config, self.ctx.config.baseline, self.n
        key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x5A4)
        message_bytes = comms.payload_bytes(state.params)
        loss_sum, acc_sum, count = np.zeros(n), np.zeros(n), np.zeros(n)
        bar = tqdm(total=c.local_epochs * self.per_epoch, desc=f"round {r}/{c.rounds}", leave=False,
                   disable=None if ctx.progress else True, unit="step")
        for e in range(ctx.epoch, ctx.epoch + c.local_epochs):
            rng = np.random.default_rng(np.random.SeedSequence([c.seed, e, 0x5A4]))
            lr = jnp.float32(b.lr * b.lr_decay ** (e - self.first_epoch))
            pending = []
            for i in range(self.per_epoch):
                t = (e - self.first_epoch) * self.per_epoch + i
                es = self.edges[t % self.topology.period]
                pair = es[rng.integers(len(es))]
                idx = np.stack([stream_positions(ctx.data.shards[a], c.seed, int(a), int(self.positions[a]),
                                                 c.batch_size) for a in pair])
                self.positions[pair] += c.batch_size
                state, m = self.step(state, ctx.x_train, ctx.y_train, jnp.asarray(pair), jnp.asarray(idx, jnp.int32),
                                     jax.random.fold_in(key, t), lr)
                pending.append((pair, m))
                ctx.counter.add(np.bincount(pair, minlength=n), message_bytes)
                bar.update(1)
            for pair, m in pending:
                loss_sum[pair] += np.asarray(m["loss"])
                acc_sum[pair] += np.asarray(m["accuracy"])
                count[pair] += 1
            check_finite(loss_sum, f"epoch {e}, round {r} (swarmsgd)", bar)
        bar.close()
        ctx.epoch += c.local_epochs
        ctx.local_steps += c.local_epochs * ctx.steps_per_epoch
        count = np.maximum(count, 1)
        ctx.emit(state.variables, round_=r, phase="trained", train={"loss": loss_sum / count, "accuracy": acc_sum / count})
        return state

    def extra_state(self) -> dict:
        return {"positions": self.positions.tolist()}

    def load_extra_state(self, extra: dict) -> None:
        self.positions = np.asarray(extra["positions"], np.int64)
