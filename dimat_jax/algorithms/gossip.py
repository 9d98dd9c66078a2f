"""Consensus baselines that mix parameters every minibatch (SPEC §3), one jitted step for all agents.

X: stacked parameters, G(X): stacked minibatch gradients at X, W: mixing matrix, η: lr, μ: momentum.

- ``cdsgd`` (D-PSGD, combine-then-adapt): X ← W X − η G(X)
- ``cdmsgd``: m ← μ m + g;  x_i ← Σ_j W_ij x_j − η (g + μ m)
- ``sgp`` (as the reference ran it, adapt-then-combine, no momentum): X ← W (X − η G(X))
- ``sgp_pushsum`` (Stochastic Gradient Push, Assran et al. 2019), W column-stochastic (W[i, j]: the
  share agent j pushes to i): numerators x = w·z, weights w; x ← W (x − η G(z)); w ← W w; z = x / w.
  The stored parameters are the de-biased z (used for gradients and evaluation).
- ``cga`` (cross-gradient aggregation): agent i computes g_ij, the gradient of its own model on
  neighbour j's minibatch; per parameter tensor it solves
  min_v ½ vᵀ(M Mᵀ + εI) v + (M g)ᵀ v  s.t. v ≥ 0.5, with M's rows W_ij g_ij (j ≠ i), g = W_ii g_ii,
  ε = 1e-12, and uses g̃ = g + Mᵀ v* in the CDMSGD update.

BatchNorm statistics are never mixed: each agent keeps its own.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax import agents, comms
from dimat_jax.algorithms import Algorithm
from dimat_jax.agents import AgentState, make_agent_grads, over_agents
from dimat_jax.merging.neighbours import Neighbourhood

HIGHEST = jax.lax.Precision.HIGHEST
CGA_EPS = 1e-12
CGA_LOWER = 0.5


def mix(w: jnp.ndarray, tree):
    """x_i ← Σ_j W_ij x_j for every leaf [N, ...]."""
    return jax.tree.map(lambda x: jnp.einsum("ij,j...->i...", w.astype(x.dtype), x, precision=HIGHEST), tree)


def solve_box_qp(q: jnp.ndarray, c: jnp.ndarray, lower: float = CGA_LOWER, sweeps: int = 200) -> jnp.ndarray:
    """min_v ½ vᵀ q v + cᵀ v  s.t. v ≥ lower, for q [D, D] symmetric positive definite, c [D].

    Projected (Gauss–Seidel) coordinate descent, ``sweeps`` passes over the coordinates; each
    coordinate step is the exact minimiser along that coordinate, so the objective never increases.
    """
    d = c.shape[0]
    if d == 0:
        return c

    def sweep(_, v):
        for k in range(d):
            v = v.at[k].set(jnp.maximum(lower, v[k] - (q[k] @ v + c[k]) / q[k, k]))
        return v

    return jax.lax.fori_loop(0, sweeps, sweep, jnp.full((d,), lower, c.dtype))


def cga_direction(g_slots, self_weight, nbr_weight, sweeps: int):
    """g̃ = g + Mᵀ v* per parameter tensor. ``g_slots``: tree of [D+1, ...] gradients of one agent's
    model on its own batch (slot 0) and its D neighbours' batches; weights: scalar and [D]."""
    leaves, treedef = jax.tree.flatten(g_slots)
    d = nbr_weight.shape[0]
    if d == 0:  # no neighbours (Π = I): plain own gradient
        return jax.tree.unflatten(treedef, [self_weight * x[0] for x in leaves])
    ms = [nbr_weight[:, None] * x[1:].reshape(d, -1) for x in leaves]          # [D, size]
    gs = [self_weight * x[0].reshape(-1) for x in leaves]                        # [size]
    q = jnp.stack([jnp.dot(m, m.T, precision=HIGHEST) for m in ms]) + CGA_EPS * jnp.eye(d)
    c = jnp.stack([jnp.dot(m, g, precision=HIGHEST) for m, g in zip(ms, gs)])
    v = jax.vmap(lambda qq, cc: solve_box_qp(qq, cc, CGA_LOWER, sweeps))(q, c)  # [L, D]
    out = [(g + jnp.dot(v_l, m, precision=HIGHEST)).reshape(x.shape[1:])
           for g, m, v_l, x in zip(gs, ms, v, leaves)]
    return jax.tree.unflatten(treedef, out)


def make_gossip_step(model, preprocess, kind: str, *, strategy: str = "auto", momentum: float = 0.9,
                     bn_mode: str = "ema", qp_sweeps: int = 200, mesh=None, plan=None, per_agent_data: bool = False):
    """Jitted ``step(state, x_all, y_all, idx, key, mixing, lr[, nbr, nbr_weight]) -> (state, metrics)``.

    ``idx`` int [N, B]; ``mixing``: this step's mixing matrix W [N, N] (dense mixing), or, with a
    ``mesh`` and a sparse ExchangePlan ``plan``, its neighbour weights ([N, S], [N]) mixed by
    collective-permutes; ``lr`` scalar; for ``cga`` also the padded neighbour lists ``nbr`` int
    [N, D] and ``nbr_weight`` [N, D] (see Neighbourhood). ``state.opt_state``: {'momentum': tree}
    (cdmsgd, cga), {'push_weight': [N]} (sgp_pushsum), {}.
    """
    grads_fn = make_agent_grads(model, preprocess, bn_mode)
    if mesh is not None and plan is not None and not plan.dense:
        from dimat_jax.distributed import make_sparse_mix
        sparse = make_sparse_mix(mesh, plan)

        def mixer(mixing, tree):
            return sparse(tree, *mixing)

        def self_weights(mixing):
            return mixing[1]
    else:
        mixer = mix

        def self_weights(mixing):
            return jnp.diagonal(mixing)

    if kind == "cga":
        def agent_grads(agent, x_all, y_all):
            params, stats, idx_slots, key, self_w, nbr_w = agent           # idx_slots [D+1, B]
            per_slot = jax.vmap(lambda i, k: grads_fn(params, stats, x_all[i], y_all[i], k))
            keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(idx_slots.shape[0]))
            g, new_stats, loss, acc = per_slot(idx_slots, keys)
            own_stats = jax.tree.map(lambda x: x[0], new_stats)
            return cga_direction(g, self_w, nbr_w, qp_sweeps), own_stats, loss[0], acc[0]
    elif per_agent_data:  # several processes: each agent's data lives with the agent
        def agent_grads(agent):
            params, stats, idx, key, x_own, y_own = agent
            return grads_fn(params, stats, x_own[idx], y_own[idx], key)
    else:
        def agent_grads(agent, x_all, y_all):
            params, stats, idx, key = agent
            return grads_fn(params, stats, x_all[idx], y_all[idx], key)

    lifted = over_agents(agent_grads, strategy, mesh)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: AgentState, x_all, y_all, idx, key, w, lr, nbr=None, nbr_weight=None):
        n = idx.shape[0]
        keys = agents.agent_keys(key, n)
        x = state.params  # for sgp_pushsum: the de-biased z, where gradients are taken
        if kind == "cga":
            idx_slots = jnp.concatenate([idx[:, None], idx[nbr]], axis=1)  # [N, D+1, B]
            g, stats, loss, acc = lifted((x, state.batch_stats, idx_slots, keys, self_weights(w), nbr_weight),
                                         x_all, y_all)
        elif per_agent_data:
            g, stats, loss, acc = lifted((x, state.batch_stats, idx, keys, x_all, y_all))
        else:
            g, stats, loss, acc = lifted((x, state.batch_stats, idx, keys), x_all, y_all)
        opt = dict(state.opt_state)
        if kind == "cdsgd":
            new = jax.tree.map(lambda a, b: a - lr * b, mixer(w, x), g)
        elif kind in ("cdmsgd", "cga"):
            m = jax.tree.map(lambda mm, gg: momentum * mm + gg, opt["momentum"], g)
            new = jax.tree.map(lambda a, gg, mm: a - lr * (gg + momentum * mm), mixer(w, x), g, m)
            opt["momentum"] = m
        elif kind == "sgp":
            new = mixer(w, jax.tree.map(lambda a, b: a - lr * b, x, g))
        elif kind == "sgp_pushsum":
            pw = opt["push_weight"]
            scale = lambda v, a: v.reshape(v.shape + (1,) * (a.ndim - 1)).astype(a.dtype)  # noqa: E731
            numer = jax.tree.map(lambda z, b: scale(pw, z) * z - lr * b, x, g)
            numer = mixer(w, numer)
            pw = mixer(w, pw)
            new = jax.tree.map(lambda a: a / scale(pw, a), numer)
            opt["push_weight"] = pw
        else:
            raise ValueError(f"unknown gossip algorithm {kind!r}")
        return AgentState(params=new, batch_stats=stats, opt_state=opt), {"loss": loss, "accuracy": acc}

    return step


def init_opt_state(kind: str, params) -> dict:
    n = jax.tree.leaves(params)[0].shape[0]
    if kind in ("cdmsgd", "cga"):
        return {"momentum": jax.tree.map(jnp.zeros_like, params)}
    if kind == "sgp_pushsum":
        from dimat_jax.distributed import like_agents
        return {"push_weight": like_agents(jnp.ones((n,), jnp.float32), params)}
    return {}


class _StepOfMatrix:
    """``step(state, x_all, y_all, idx, key, k, lr, *rest)``: the compiled step of mixing matrix k with
    that matrix; ``lower`` (same arguments) for XLA's cost analysis."""

    def __init__(self, steps, mixing):
        self.steps, self.mixing = steps, mixing

    def __call__(self, state, x_all, y_all, idx, key, k, lr, *rest):
        return self.steps[k](state, x_all, y_all, idx, key, self.mixing[k], lr, *rest)

    def lower(self, state, x_all, y_all, idx, key, k, lr, *rest):
        return self.steps[k].lower(state, x_all, y_all, idx, key, self.mixing[k], lr, *rest)


class Gossip(Algorithm):
    """Train with gossip every minibatch; round r = ``local_epochs`` epochs, then evaluate."""

    def __init__(self, ctx, topology):
        c = ctx.config
        b = c.baseline
        self.ctx, self.topology, self.kind = ctx, topology, c.algorithm
        build = lambda plan=None: make_gossip_step(  # noqa: E731
            ctx.model, ctx.data.preprocess, self.kind, strategy=ctx.strategy, momentum=b.momentum,
            bn_mode="frozen" if b.bn_frozen else "ema", qp_sweeps=b.cga_qp_iters, mesh=ctx.mesh, plan=plan,
            per_agent_data=ctx.per_agent_data)
        # one compiled step per mixing matrix when it needs its own exchange plan (sparse graph on a mesh)
        self.steps, self.mixing = [], []
        dense_step = None
        for m in topology.matrices:
            plan = None
            if ctx.mesh is not None:
                from dimat_jax.distributed import ExchangePlan, num_devices
                hood = Neighbourhood.from_matrix(m)
                plan = ExchangePlan.build(hood.nbr, num_devices(ctx.mesh))
            if plan is None or plan.dense:
                dense_step = dense_step or build()
                self.steps.append(dense_step)
                self.mixing.append(jnp.asarray(m, jnp.float32))
            else:
                self.steps.append(build(plan))
                self.mixing.append((jnp.asarray(hood.weight), jnp.asarray(hood.self_weight)))
        ctx.log(f"{self.kind}: SGD lr {b.lr} (baseline.lr), lr x {b.lr_decay}/epoch, "
                + (f"momentum {b.momentum}, " if self.kind in ("cdmsgd", "cga") else "")
                + "mixing every minibatch; BatchNorm "
                + ("frozen (reference quirk)" if b.bn_frozen else "local, train mode"))
        if self.kind == "cga":
            hoods = [Neighbourhood.from_matrix(m) for m in topology.matrices]
            self.lists = [(jnp.asarray(h.nbr), jnp.asarray(h.weight)) for h in hoods]
        else:
            self.lists = [()] * topology.period
        self.first_epoch = ctx.config.pretrain_epochs  # the lr decays from the start of gossip training

    def setup(self, state):
        return state.replace(opt_state=init_opt_state(self.kind, state.params))

    def round(self, state, r: int):
        ctx, c, b = self.ctx, self.ctx.config, self.ctx.config.baseline
        steps = ctx.steps_per_epoch
        done = (r - 1) * c.local_epochs * steps  # gossip steps before this round (time-varying graphs)

        def extra_args(e, s, t):
            k = (done + t) % self.topology.period
            return (k, jnp.float32(b.lr * b.lr_decay ** (e - self.first_epoch))) + self.lists[k]

        state, stats = ctx.train(state, _StepOfMatrix(self.steps, self.mixing), c.local_epochs, f"round {r}/{c.rounds}",
                                 extra_args=extra_args)
        message_bytes = comms.payload_bytes(state.params) + (4 if self.kind == "sgp_pushsum" else 0)
        for t in range(done, done + c.local_epochs * steps):
            ctx.counter.add(comms.senders(self.topology.matrix(t)), message_bytes, 2 if self.kind == "cga" else 1)
        ctx.emit(state.variables, round_=r, phase="trained", train=stats)
        return state
