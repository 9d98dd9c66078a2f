"""Consensus baselines that mix parameters every minibatch (docs/algorithm.md §3), one jitted step
for all agents. Each update is a :class:`GossipRule` — ``(init, update)`` with a NamedTuple state,
chosen once per run, in the style of an optax transformation.

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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

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


# ------------------------------------------------------------------------------- update rules
class NoState(NamedTuple):
    """cdsgd, sgp: nothing beyond the parameters."""


class MomentumState(NamedTuple):
    """cdmsgd, cga: each agent's momentum buffer (a tree like the stacked parameters)."""
    momentum: Any


class PushSumState(NamedTuple):
    """sgp_pushsum: each agent's push-sum weight w, float32 [N]."""
    push_weight: jax.Array


class GossipRule(NamedTuple):
    """A consensus update in the style of an optax transformation, chosen once per run:
    ``init(params) -> state`` and ``update(x, g, state, mix, lr) -> (new params, state)`` with ``mix``
    applying this step's mixing matrix (x_i <- Σ_j W_ij x_j) to any stacked tree."""
    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def _scale(v, a):
    """Per-agent scalars ``v`` [N] broadcast against a stacked leaf ``a`` [N, ...]."""
    return v.reshape(v.shape + (1,) * (a.ndim - 1)).astype(a.dtype)


def cdsgd() -> GossipRule:
    """Combine then adapt: X <- W X - lr G(X)."""
    return GossipRule(lambda params: NoState(),
                      lambda x, g, st, mix, lr: (jax.tree.map(lambda a, b: a - lr * b, mix(x), g), st))


def cdmsgd(momentum: float) -> GossipRule:
    """m <- mu m + g;  x_i <- Σ_j W_ij x_j - lr (g + mu m) (cga: the same with its QP direction as g)."""
    def update(x, g, st, mix, lr):
        m = jax.tree.map(lambda mm, gg: momentum * mm + gg, st.momentum, g)
        return jax.tree.map(lambda a, gg, mm: a - lr * (gg + momentum * mm), mix(x), g, m), MomentumState(m)
    return GossipRule(lambda params: MomentumState(jax.tree.map(jnp.zeros_like, params)), update)


def sgp() -> GossipRule:
    """Adapt then combine (the reference's "SGP"): X <- W (X - lr G(X))."""
    return GossipRule(lambda params: NoState(),
                      lambda x, g, st, mix, lr: (mix(jax.tree.map(lambda a, b: a - lr * b, x, g)), st))


def sgp_pushsum() -> GossipRule:
    """Stochastic Gradient Push: numerators w z - lr g and weights w both mixed by a column-stochastic
    W; the new parameters are the de-biased z = numerator / w."""
    def init(params):
        from dimat_jax.distributed import like_agents
        n = jax.tree.leaves(params)[0].shape[0]
        return PushSumState(like_agents(jnp.ones((n,), jnp.float32), params))

    def update(z, g, st, mix, lr):
        numer = mix(jax.tree.map(lambda a, b: _scale(st.push_weight, a) * a - lr * b, z, g))
        pw = mix(st.push_weight)
        return jax.tree.map(lambda a: a / _scale(pw, a), numer), PushSumState(pw)
    return GossipRule(init, update)


def gossip_rule(kind: str, momentum: float = 0.9) -> GossipRule:
    """The update rule of gossip algorithm ``kind``."""
    rules = {"cdsgd": cdsgd, "cdmsgd": lambda: cdmsgd(momentum), "cga": lambda: cdmsgd(momentum),
             "sgp": sgp, "sgp_pushsum": sgp_pushsum}
    if kind not in rules:
        raise ValueError(f"unknown gossip algorithm {kind!r}; choose one of {', '.join(rules)}")
    return rules[kind]()


def init_opt_state(kind: str, params, momentum: float = 0.9):
    """Fresh state of ``kind``'s rule for stacked ``params``."""
    return gossip_rule(kind, momentum).init(params)


# ------------------------------------------------------------------------------- the step
def make_gossip_step(model, preprocess, kind: str, *, strategy: str = "auto", momentum: float = 0.9,
                     bn_mode: str = "ema", qp_sweeps: int = 200, mesh=None, plan=None, per_agent_data: bool = False):
    """Jitted ``step(state, x_all, y_all, idx, key, mixing, lr[, nbr, nbr_weight]) -> (state, metrics)``.

    ``idx`` int [N, B]; ``mixing``: this step's mixing matrix W [N, N] (dense mixing), or, with a
    ``mesh`` and a sparse ExchangePlan ``plan``, its neighbour weights ([N, S], [N]) mixed by
    collective-permutes; ``lr`` scalar; for ``cga`` also the padded neighbour lists ``nbr`` int
    [N, D] and ``nbr_weight`` [N, D] (see Neighbourhood). ``state.opt_state``: the rule's state
    (:func:`init_opt_state`).
    """
    grads_fn = make_agent_grads(model, preprocess, bn_mode)
    rule = gossip_rule(kind, momentum)
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

    if kind == "cga" and strategy == "chunked":
        if mesh is None:
            return _LoopedCGAStep(grads_fn, rule, qp_sweeps)
        strategy = "vmap"  # within a device's shard: unrolled copies of CGA's step are too big to compile
    if kind == "cga":
        agent_grads = cga_agent_grads(grads_fn, qp_sweeps, "vmap")
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
        keys = agents.agent_keys(key, idx.shape[0])
        x = state.params  # for sgp_pushsum: the de-biased z, where gradients are taken
        if kind == "cga":
            idx_slots = jnp.concatenate([idx[:, None], idx[nbr]], axis=1)  # [N, D+1, B]
            g, stats, loss, acc = lifted((x, state.batch_stats, idx_slots, keys, self_weights(w), nbr_weight),
                                         x_all, y_all)
        elif per_agent_data:
            g, stats, loss, acc = lifted((x, state.batch_stats, idx, keys, x_all, y_all))
        else:
            g, stats, loss, acc = lifted((x, state.batch_stats, idx, keys), x_all, y_all)
        new, opt = rule.update(x, g, state.opt_state, lambda tree: mixer(w, tree), lr)
        return AgentState(params=new, batch_stats=stats, opt_state=opt), {"loss": loss, "accuracy": acc}

    return step


def cga_agent_grads(grads_fn, qp_sweeps: int, slots: str):
    """``f((params, stats, idx_slots [D+1, B], key, self_w, nbr_w), x_all, y_all)`` -> one agent's CGA
    direction, BatchNorm statistics (of its own batch), loss and accuracy; the D+1 gradients laid out
    by agent strategy ``slots`` ('vmap', or 'unrolled' to keep XLA:CPU's convolutions ungrouped)."""
    def agent_grads(agent, x_all, y_all):
        params, stats, idx_slots, key, self_w, nbr_w = agent
        per_slot = agents.over_agents(lambda sl: grads_fn(params, stats, x_all[sl[0]], y_all[sl[0]], sl[1]), slots)
        g, new_stats, loss, acc = per_slot((idx_slots, agents.agent_keys(key, idx_slots.shape[0])))
        own_stats = jax.tree.map(lambda x: x[0], new_stats)
        return cga_direction(g, self_w, nbr_w, qp_sweeps), own_stats, loss[0], acc[0]
    return agent_grads


class _LoopedCGAStep:
    """The CGA step as a Python loop over the agents (its 'chunked' strategy, 'auto' on a CPU): one
    compiled program computes one agent's D+1 gradients and QP direction, a second mixes and
    updates. On XLA:CPU 'vmap' turns the per-agent convolutions into grouped ones (~5x slower) and
    unrolled copies of the step are too big to compile (5 ResNet-20 agents: over 20 GB); the one-agent
    program is small and keeps plain convolutions. Same arguments and results as the jitted step."""

    def __init__(self, grads_fn, rule: GossipRule, qp_sweeps: int):
        agent_grads = cga_agent_grads(grads_fn, qp_sweeps, "unrolled")

        def one_agent(a, params, batch_stats, idx, nbr, key, w, nbr_weight, x_all, y_all):
            p, st = jax.tree.map(lambda x: x[a], (params, batch_stats))
            idx_slots = jnp.concatenate([idx[a][None], idx[nbr[a]]])                 # [D+1, B]
            return agent_grads((p, st, idx_slots, jax.random.fold_in(key, a), w[a, a], nbr_weight[a]), x_all, y_all)

        def apply(state: AgentState, outs, w, lr):
            g, stats, loss, acc = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
            new, opt = rule.update(state.params, g, state.opt_state, lambda tree: mix(w, tree), lr)
            return AgentState(params=new, batch_stats=stats, opt_state=opt), {"loss": loss, "accuracy": acc}

        self._one, self._apply = jax.jit(one_agent), jax.jit(apply, donate_argnums=(0,))

    def __call__(self, state, x_all, y_all, idx, key, w, lr, nbr, nbr_weight):
        args = (state.params, state.batch_stats, idx, nbr, key, w, nbr_weight, x_all, y_all)
        return self._apply(state, [self._one(jnp.int32(a), *args) for a in range(state.num_agents)], w, lr)

    def lower(self, state, x_all, y_all, idx, key, w, lr, nbr, nbr_weight):
        """XLA's cost of one step: N one-agent programs and the update (costs.py)."""
        args = (jnp.int32(0), state.params, state.batch_stats, idx, nbr, key, w, nbr_weight, x_all, y_all)
        outs = [jax.eval_shape(self._one, *args)] * state.num_agents
        costs = [self._one.lower(*args).cost_analysis()] * state.num_agents
        return agents.SummedCosts(costs + [self._apply.lower(state, outs, w, lr).cost_analysis()])


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

    def __init__(self, services, topology):
        c = services.config
        b = c.baseline
        self.topology, self.kind = topology, c.algorithm
        self.rule = gossip_rule(self.kind, b.momentum)
        build = lambda plan=None: make_gossip_step(  # noqa: E731
            services.model, services.data.preprocess, self.kind, strategy=services.strategy, momentum=b.momentum,
            bn_mode="frozen" if b.bn_frozen else "ema", qp_sweeps=b.cga_qp_iters, mesh=services.mesh, plan=plan,
            per_agent_data=services.per_agent_data)
        # one compiled step per mixing matrix when it needs its own exchange plan (sparse graph on a mesh)
        self.steps, self.mixing = [], []
        dense_step = None
        for m in topology.matrices:
            plan = None
            if services.mesh is not None:
                from dimat_jax.distributed import ExchangePlan, num_devices
                hood = Neighbourhood.from_matrix(m)
                plan = ExchangePlan.build(hood.nbr, num_devices(services.mesh))
            if plan is None or plan.dense:
                dense_step = dense_step or build()
                self.steps.append(dense_step)
                self.mixing.append(jnp.asarray(m, jnp.float32))
            else:
                self.steps.append(build(plan))
                self.mixing.append((jnp.asarray(hood.weight), jnp.asarray(hood.self_weight)))
        services.log(f"{self.kind}: SGD lr {b.lr} (baseline.lr), lr x {b.lr_decay}/epoch, "
                     + (f"momentum {b.momentum}, " if self.kind in ("cdmsgd", "cga") else "")
                     + "mixing every minibatch; BatchNorm "
                     + ("frozen (reference quirk)" if b.bn_frozen else "local, train mode"))
        if self.kind == "cga":
            hoods = [Neighbourhood.from_matrix(m) for m in topology.matrices]
            self.lists = [(jnp.asarray(h.nbr), jnp.asarray(h.weight)) for h in hoods]
        else:
            self.lists = [()] * topology.period
        self.first_epoch = c.pretrain_epochs  # the lr decays from the start of gossip training

    def init(self, state):
        return state.replace(opt_state=self.rule.init(state.params))

    def round(self, state, r: int, services):
        c, b = services.config, services.config.baseline
        steps = services.steps_per_epoch
        done = (r - 1) * c.local_epochs * steps  # gossip steps before this round (time-varying graphs)

        def extra_args(e, s, t):
            k = (done + t) % self.topology.period
            return (k, jnp.float32(b.lr * b.lr_decay ** (e - self.first_epoch))) + self.lists[k]

        state, stats = services.train(state, _StepOfMatrix(self.steps, self.mixing), c.local_epochs,
                                      f"round {r}/{c.rounds}", extra_args=extra_args)
        message_bytes = comms.payload_bytes(state.params) + (4 if self.kind == "sgp_pushsum" else 0)
        sent = 0
        for t in range(done, done + c.local_epochs * steps):
            per_agent = comms.senders(self.topology.matrix(t))
            services.count(per_agent, message_bytes, 2 if self.kind == "cga" else 1)
            sent += int(per_agent.sum()) * (2 if self.kind == "cga" else 1)
        services.emit(state.variables, round_=r, phase="trained", train=stats)
        return state, {"gossip_steps": c.local_epochs * steps, "messages": sent}
