"""Stacked agents: N models as one pytree with a leading agent axis, advanced by one jitted step.

Every leaf of ``params``, ``batch_stats`` and ``opt_state`` has shape [N, ...]. How the per-agent
computation is laid out inside the jitted step is the *agent strategy*:

- ``vmap``: ``jax.vmap`` over the agent axis. Convolutions with per-agent kernels become grouped
  convolutions: fast on GPU/TPU, ~5x slower than a loop on XLA:CPU.
- ``unrolled``: a Python loop over agents inside the one jitted function (N copies of the step in
  one XLA program; compile time grows with N). An optimization barrier between consecutive agents
  keeps XLA from interleaving them, so one agent's activations are live at a time. Fastest on CPU.
- ``map``: ``jax.lax.map`` (a compiled loop; small programs, slow on CPU).
- ``chunked``: for many agents on a CPU, compile time independent of N. The training and evaluation
  steps are a Python loop over compiled programs of :data:`CHUNK` unrolled agents, each updating its
  slice of the stacked state in place (:class:`ChunkedProgram`: one or two programs, whatever N, at
  ``unrolled`` speed); CGA's step is a loop over one compiled agent; the passes inside other jitted
  functions (merge statistics, the other gossip steps) ``lax.scan`` over chunks of unrolled agents
  (compile time bounded, but XLA:CPU runs loops slowly).
- ``auto``: on CPU ``unrolled`` up to :data:`MAX_UNROLLED` agents and ``chunked`` above; ``vmap``
  elsewhere (see experiments/benchmarks/agent_strategies.py).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from dimat_jax.choices import STRATEGIES  # noqa: F401  (re-exported)

MAX_UNROLLED = 8  # auto on CPU: unrolled up to this many agents, chunked above
CHUNK = 4         # agents per chunk of the chunked strategy


class AgentState(flax.struct.PyTreeNode):
    """Stacked training state; every leaf has a leading agent axis [N, ...]."""
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def num_agents(self) -> int:
        return int(jax.tree.leaves(self.params)[0].shape[0])

    @property
    def variables(self) -> dict:
        """Flax variables ``{'params', 'batch_stats'}`` (stacked)."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def resolve_strategy(name: str, backend: str | None = None, num_agents: int | None = None,
                     algorithm: str | None = None) -> str:
    """Concrete strategy for ``name``; 'auto' picks by backend, agent count and algorithm ('cpu' ->
    'unrolled' up to :data:`MAX_UNROLLED` agents, 'chunked' above; else 'vmap'). CGA takes
    'chunked' on a CPU whatever N: its step computes D+1 gradients per agent, unrolled copies of
    that step are too big to compile (5 ResNet-20 agents on a ring: over 20 GB and 5 minutes) and
    'vmap' runs grouped convolutions; its chunked step is a loop over one compiled agent."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown agent strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if (backend or jax.default_backend()) != "cpu":
        return "vmap"
    if algorithm == "cga":
        return "chunked"
    return "chunked" if num_agents is not None and num_agents > MAX_UNROLLED else "unrolled"


def _unrolled(fn: Callable, stacked, shared):
    """``fn`` over the leading axis of ``stacked`` as a Python loop, one agent's activations live at a time."""
    n = jax.tree.leaves(stacked)[0].shape[0]
    outs = []
    for i in range(n):
        inp = jax.tree.map(lambda x: x[i], stacked)
        if outs:  # agent i starts after agent i-1 finished: one agent's activations live at a time
            outs[-1], inp = jax.lax.optimization_barrier((outs[-1], inp))
        outs.append(fn(inp, *shared))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def _chunked(fn: Callable, stacked, shared, chunk: int):
    """``lax.scan`` over chunks of ``chunk`` agents (each chunk unrolled), then the remainder unrolled."""
    n = jax.tree.leaves(stacked)[0].shape[0]
    full = n // chunk * chunk
    parts = []
    if full:
        body = jax.tree.map(lambda x: x[:full].reshape((full // chunk, chunk) + x.shape[1:]), stacked)
        _, out = jax.lax.scan(lambda carry, xs: (carry, _unrolled(fn, xs, shared)), None, body)
        parts.append(jax.tree.map(lambda x: x.reshape((full,) + x.shape[2:]), out))
    if full < n:
        parts.append(_unrolled(fn, jax.tree.map(lambda x: x[full:], stacked), shared))
    return parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def over_agents(fn: Callable, strategy: str, mesh=None) -> Callable:
    """Lift ``fn(agent_tree, *shared)`` to ``g(stacked_tree, *shared)`` with the given strategy.

    ``stacked_tree`` leaves carry a leading agent axis; ``shared`` arguments are the same for all
    agents. The result's leaves carry the agent axis too. With a ``mesh`` (see distributed.py) the
    agent axis is sharded: ``jax.shard_map`` gives every device its own agents, which it runs with
    ``strategy``; shared arguments are replicated.
    """
    if mesh is not None:
        from dimat_jax.distributed import sharded
        inner = over_agents(fn, strategy)

        def g_sharded(stacked, *shared):
            return sharded(lambda st, *sh: inner(st, *sh), mesh, 1, len(shared))(stacked, *shared)
        return g_sharded
    def g(stacked, *shared):
        concrete = resolve_strategy(strategy, num_agents=jax.tree.leaves(stacked)[0].shape[0])
        if concrete == "vmap":
            return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(stacked, *shared)
        if concrete == "map":
            return jax.lax.map(lambda a: fn(a, *shared), stacked)
        if concrete == "chunked":
            return _chunked(fn, stacked, shared, CHUNK)
        return _unrolled(fn, stacked, shared)
    return g


# ------------------------------------------------------------------------------ initialisation
def agent_key(seed: int, agent: int) -> jax.Array:
    """Initialisation key of agent ``agent``: every agent has its own seed."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), agent)


def init_variables(model, image_shape, num_agents: int, seed: int) -> dict:
    """Stacked Flax variables of ``num_agents`` models, agent i initialised from ``agent_key(seed, i)``."""
    dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    keys = jnp.stack([agent_key(seed, i) for i in range(num_agents)])
    variables = jax.jit(jax.vmap(lambda k: model.init(k, dummy, train=False)))(keys)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def init_state(model, tx: optax.GradientTransformation, image_shape, num_agents: int, seed: int) -> AgentState:
    variables = init_variables(model, image_shape, num_agents, seed)
    return AgentState(params=variables["params"], batch_stats=variables["batch_stats"],
                      opt_state=init_opt_state(tx, variables["params"]))


def init_opt_state(tx: optax.GradientTransformation, params) -> Any:
    """Fresh stacked optimizer state for stacked ``params``, placed like them (sharded over the agents
    mesh when they are: leaves created from nothing, like Adam's step count, must not land on one
    device)."""
    from dimat_jax.distributed import like_agents
    return like_agents(jax.jit(jax.vmap(tx.init))(params), params)


def num_params(params, per_agent: bool = True) -> int:
    """Parameter count of one agent (``per_agent``) or of the whole stack."""
    leaves = jax.tree.leaves(params)
    total = sum(int(np.prod(x.shape)) for x in leaves)
    return total // leaves[0].shape[0] if per_agent else total


# ------------------------------------------------------------------------------ steps
def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-example softmax cross-entropy, [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


BN_MODES = ("ema", "cumulative", "frozen")


def make_agent_grads(model, preprocess, bn_mode: str = "ema") -> Callable:
    """``grads(params, batch_stats, x_raw, y, key, bn_count) -> (grads, batch_stats, loss, accuracy)``
    for one agent on one batch (the building block of every training step).

    ``bn_mode``: ``ema`` — BatchNorm in train mode, running statistics as an exponential moving
    average (momentum 0.9); ``cumulative`` — train mode, but the running statistics become the
    plain average of all batches since the last re-estimation (``bn_count`` of them so far), the
    reference code's behaviour after a merge; ``frozen`` — BatchNorm in inference mode (running
    statistics used and left unchanged), the reference baselines' quirk.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {BN_MODES}")
    from dimat_jax.models.layers import BatchNorm
    momentum = BatchNorm.momentum  # the running-average momentum every model's BatchNorm uses

    def grads_fn(params, batch_stats, x, y, key, bn_count=None):
        x = preprocess.train(key, x)

        def loss_fn(p):
            if bn_mode == "frozen":
                logits = model.apply({"params": p, "batch_stats": batch_stats}, x, train=False)
                return cross_entropy(logits, y).mean(), (logits, batch_stats)
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
            return cross_entropy(logits, y).mean(), (logits, updates.get("batch_stats", batch_stats))

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if bn_mode == "cumulative":  # recover the batch statistic from the EMA update, then average
            def cumulative(old, ema):
                batch = (ema - momentum * old) / (1 - momentum)
                return old + (batch - old) / (bn_count + 1.0)
            new_stats = jax.tree.map(cumulative, batch_stats, new_stats)
        acc = (jnp.argmax(logits, -1) == y).mean()
        return grads, new_stats, loss, acc

    return grads_fn


def make_train_step(model, tx: optax.GradientTransformation, preprocess, strategy: str = "auto",
                    bn_mode: str = "ema", mesh=None, per_agent_data: bool = False):
    """Jitted ``step(state, x_train, y_train, idx, key[, bn_count]) -> (state, metrics)`` for all agents.

    ``x_train``/``y_train``: the whole (raw) training set on device, [n, H, W, C] / [n];
    ``idx``: int32 [N, B] batch indices per agent; ``key``: this step's key (agent a augments with
    ``fold_in(key, a)``); ``bn_count`` (only with ``bn_mode='cumulative'``): batches already in the
    BatchNorm statistics. ``metrics``: per-agent batch ``loss`` and ``accuracy``, each [N].
    ``state`` is donated. With ``per_agent_data`` (several processes) ``x_train``/``y_train`` are
    agent-local [N, n_max, ...] arrays and ``idx`` positions within each agent's shard.
    """
    grads_fn = make_agent_grads(model, preprocess, bn_mode)

    def agent_step(agent, *shared):
        if per_agent_data:
            (params, batch_stats, opt_state, idx, key, x_all, y_all), (bn_count,) = agent, shared
        else:
            (params, batch_stats, opt_state, idx, key), (x_all, y_all, bn_count) = agent, shared
        grads, new_stats, loss, acc = grads_fn(params, batch_stats, x_all[idx], y_all[idx], key, bn_count)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, new_stats, opt_state), {"loss": loss, "accuracy": acc}

    if mesh is None and resolve_strategy(strategy) == "chunked":
        unrolled = over_agents(agent_step, "unrolled")

        def make_chunk(size):
            @functools.partial(jax.jit, donate_argnums=(0,))
            def chunk(state: AgentState, part: AgentState, start, x_all, y_all, idx, key, bn_count=None):
                idx_c = jax.lax.dynamic_slice_in_dim(idx, start, size)
                keys = jax.vmap(lambda a: jax.random.fold_in(key, a))(start + jnp.arange(size))
                agent = (part.params, part.batch_stats, part.opt_state, idx_c, keys)
                if per_agent_data:
                    raise NotImplementedError("the chunked strategy runs on one device (mesh.devices = 1)")
                (params, stats, opt), metrics = unrolled(agent, x_all, y_all, bn_count)
                new = AgentState(params=params, batch_stats=stats, opt_state=opt)
                put = lambda full, p: jax.lax.dynamic_update_slice_in_dim(full, p, start, 0)  # noqa: E731
                return jax.tree.map(put, state, new), metrics
            return chunk

        return ChunkedProgram(make_chunk, carry_state=True)

    lifted = over_agents(agent_step, strategy, mesh)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: AgentState, x_all, y_all, idx, key, bn_count=None):
        keys = agent_keys(key, idx.shape[0])
        agent = (state.params, state.batch_stats, state.opt_state, idx, keys)
        shared = (bn_count,) if per_agent_data else (x_all, y_all, bn_count)
        (params, stats, opt), metrics = lifted(agent + ((x_all, y_all) if per_agent_data else ()), *shared)
        return AgentState(params=params, batch_stats=stats, opt_state=opt), metrics

    return step


class ChunkedProgram:
    """A computation over N stacked agents as a Python loop over compiled chunks of :data:`CHUNK`
    agents (plus one program for a smaller last chunk): compile time does not grow with N.

    ``make(size)`` returns a jitted function for ``size`` agents from agent ``start`` on. With
    ``carry_state``, ``f(state, part, start, *args)``: ``part`` is the chunk's slice of the stacked
    ``state`` (cut by a separate program, so that ``f`` only writes ``state``, in place — donated)
    and ``f`` returns the updated state and the chunk's per-agent metrics; otherwise
    ``f(tree, start, *args)`` reads its agents from the stacked tree and returns per-agent outputs.
    Either way the per-agent outputs are concatenated to [N, ...]. ``lower(...)`` sums XLA's cost of
    the chunks (costs.py)."""

    def __init__(self, make, carry_state: bool):
        self._make, self._programs, self.carry_state = make, {}, carry_state

    def _chunks(self, n):
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            if size not in self._programs:
                take = jax.jit(lambda tree, s, size=size: jax.tree.map(
                    lambda v: jax.lax.dynamic_slice_in_dim(v, s, size), tree))
                self._programs[size] = (self._make(size), take)
            yield start, self._programs[size]

    def _args(self, tree, start, take, args):
        start = jnp.int32(start)
        return (tree, take(tree, start), start, *args) if self.carry_state else (tree, start, *args)

    def __call__(self, tree, *args):
        n = jax.tree.leaves(tree)[0].shape[0]
        outs = []
        for start, (program, take) in self._chunks(n):
            out = program(*self._args(tree, start, take, args))
            if self.carry_state:
                tree, out = out
            outs.append(out)
        joined = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
        return (tree, joined) if self.carry_state else joined

    def lower(self, tree, *args):
        n = jax.tree.leaves(tree)[0].shape[0]
        costs = [program.lower(*self._args(tree, start, take, args)).cost_analysis()
                 for start, (program, take) in self._chunks(n)]
        return SummedCosts(costs)


class SummedCosts:
    """XLA cost analyses of several programs run in turn, summed (``cost_analysis()['flops']``)."""

    def __init__(self, costs):
        self.costs = [c[0] if isinstance(c, (list, tuple)) else c for c in costs]

    def cost_analysis(self):
        return {"flops": sum(float((c or {}).get("flops", 0.0)) for c in self.costs)}


def agent_keys(key: jax.Array, n: int) -> jax.Array:
    """Per-agent keys of a step: agent a uses ``fold_in(key, a)``."""
    return jax.vmap(lambda a: jax.random.fold_in(key, a))(jnp.arange(n))


def make_eval_step(model, preprocess, strategy: str = "auto", mesh=None):
    """Jitted ``eval_step(variables, x, y, mask) -> (loss_sum [N], correct [N])`` on one shared batch.

    ``x``: raw [B, H, W, C]; ``mask``: [B] 1.0 for real examples, 0.0 for padding. BatchNorm in eval
    mode (running statistics).
    """

    def agent_eval(variables, x, y, mask):
        logits = model.apply(variables, preprocess.eval(x), train=False)
        loss = (cross_entropy(logits, y) * mask).sum()
        correct = ((jnp.argmax(logits, -1) == y) * mask).sum()
        return loss, correct

    if mesh is None and resolve_strategy(strategy) == "chunked":
        unrolled = over_agents(agent_eval, "unrolled")

        def make_chunk(size):
            @jax.jit
            def chunk(variables, start, x, y, mask):
                part = jax.tree.map(lambda v: jax.lax.dynamic_slice_in_dim(v, start, size), variables)
                return unrolled(part, x, y, mask)
            return chunk

        return ChunkedProgram(make_chunk, carry_state=False)
    return jax.jit(over_agents(agent_eval, strategy, mesh))


class TestSet:
    """The test split on device, padded to whole batches: x [nb, B, H, W, C], y and mask [nb, B]."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int):
        n = len(y)
        batch_size = max(1, min(batch_size, n))
        nb = -(-n // batch_size)
        pad = nb * batch_size - n
        self.size = n
        self.x = jnp.asarray(np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
            (nb, batch_size) + x.shape[1:]))
        self.y = jnp.asarray(np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(nb, batch_size))
        self.mask = jnp.asarray((np.arange(nb * batch_size) < n).astype(np.float32).reshape(nb, batch_size))


def evaluate(eval_step, variables: dict, test: TestSet) -> dict[str, np.ndarray]:
    """Per-agent test ``accuracy`` and mean ``loss`` over the whole test set, each float64 [N]."""
    loss, correct = 0.0, 0.0
    for b in range(test.x.shape[0]):
        l, c = eval_step(variables, test.x[b], test.y[b], test.mask[b])
        loss, correct = loss + l, correct + c
    from dimat_jax.distributed import to_host
    loss, correct = to_host(loss).astype(np.float64), to_host(correct).astype(np.float64)
    return {"accuracy": correct / test.size, "loss": loss / test.size}
