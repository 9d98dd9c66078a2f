"""Scaling out: the ``agents`` device mesh, sharded placement, and neighbour-only exchange.

With ``mesh.devices`` > 1 every stacked pytree (parameters, BatchNorm statistics, optimizer state)
and every per-agent batch is sharded over the ``agents`` mesh axis with ``NamedSharding``: device d
holds agents d·k … d·k + k − 1 (k = N / devices). Per-agent computation runs under
``jax.shard_map`` (each device runs its own agents; see ``agents.over_agents``), so no parameters
move during local training.

Mixing with a sparse graph fetches only the neighbours' blocks: an :class:`ExchangePlan` lists the
device offsets o at which some agent's neighbour lives; inside ``shard_map`` every device receives
the block of device d + o by ``lax.ppermute`` (an XLA collective-permute), so a ring moves two
blocks per device, never the whole stack. When a graph needs (almost) every device's block — fully
connected — dense mixing is used and XLA emits an all-gather / all-reduce instead.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "agents"


class MeshError(ValueError):
    """The device mesh cannot hold this run (device count, divisibility)."""


def make_mesh(num_devices: int = 1, num_agents: int | None = None):
    """A 1-D ``agents`` mesh over the first ``num_devices`` devices (0 = all), or None for one device."""
    devices = jax.devices()
    d = len(devices) if num_devices == 0 else num_devices
    if d > len(devices):
        raise MeshError(f"mesh.devices = {num_devices} but only {len(devices)} {jax.default_backend()} device(s) "
                        "are visible (CPU: set XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts)")
    if num_agents is not None and num_agents % d:
        raise MeshError(f"num_agents = {num_agents} is not divisible by the {d} devices of the mesh; use a "
                        f"multiple of {d} agents or set mesh.devices to a divisor of {num_agents}")
    if d == 1:
        return None
    return jax.make_mesh((d,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:d])


def shard_agents(tree, mesh):
    """Place every leaf [N, ...] of ``tree`` with its agent axis sharded over the mesh."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P(AXIS)))


def like_agents(tree, reference):
    """Place ``tree`` (leaves [N, ...]) on the agents mesh of ``reference``'s first leaf, if it has one."""
    sharding = jax.tree.leaves(reference)[0].sharding
    if isinstance(sharding, NamedSharding) and AXIS in sharding.mesh.axis_names:
        return jax.device_put(tree, NamedSharding(sharding.mesh, P(AXIS)))
    return tree


def replicate(tree, mesh):
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P()))


def num_devices(mesh) -> int:
    return 1 if mesh is None else mesh.devices.size


@dataclasses.dataclass(frozen=True)
class ExchangePlan:
    """Where each receiver finds each neighbour slot after a neighbour-only exchange.

    ``offsets``: device offsets o whose blocks every device fetches (device d receives the block of
    device (d + o) mod D); ``cand`` int32 [N, S]: for receiver i and slot s, the row in its device's
    candidate buffer [own block, block of offset 0, block of offset 1, …] (k rows each) holding the
    neighbour. ``dense``: the graph touches every other device, so dense mixing is used instead.
    """
    offsets: tuple[int, ...]
    devices: int
    per_device: int
    cand: np.ndarray
    dense: bool

    @classmethod
    def build(cls, nbr: np.ndarray, num_devices: int) -> "ExchangePlan":
        """From padded neighbour lists ``nbr`` [N, S] (see merging.neighbours.Neighbourhood)."""
        n = nbr.shape[0]
        k = n // num_devices
        owner = np.arange(n) // k
        offs = sorted({int((owner[j] - owner[i]) % num_devices) for i in range(n) for j in nbr[i]} - {0})
        dense = num_devices > 2 and len(offs) >= num_devices - 1
        if dense:  # every block is needed: one all-gather, candidates are global agent indices
            return cls(offsets=(), devices=num_devices, per_device=k, cand=nbr.astype(np.int32), dense=True)
        cand = np.zeros(nbr.shape, np.int32)
        for i in range(n):
            for s, j in enumerate(nbr[i]):
                o = int((owner[j] - owner[i]) % num_devices)
                block = 0 if o == 0 else 1 + offs.index(o)
                cand[i, s] = block * k + j % k
        return cls(offsets=tuple(offs), devices=num_devices, per_device=k, cand=cand, dense=False)


def candidates(tree, plan: ExchangePlan):
    """Inside ``shard_map``: this device's block followed by the blocks fetched at ``plan.offsets``
    (collective-permutes), leaves [k · (1 + len(offsets)), ...]; for a dense plan every agent
    (all-gather), leaves [N, ...]."""
    if plan.dense:
        return jax.tree.map(lambda x: jax.lax.all_gather(x, AXIS, tiled=True), tree)
    d = plan.devices
    blocks = [tree] + [jax.lax.ppermute(tree, AXIS, [(s, (s - o) % d) for s in range(d)]) for o in plan.offsets]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *blocks)


def sharded(fn, mesh, n_sharded: int, n_replicated: int = 0):
    """``jax.shard_map`` of ``fn(*sharded_args, *replicated_args)`` over the agents axis."""
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(AXIS),) * n_sharded + (P(),) * n_replicated,
                         out_specs=P(AXIS), check_vma=False)


def make_sparse_mix(mesh, plan: ExchangePlan):
    """``mix(tree, weights [N, S], self_weight [N]) -> tree``: x_i ← Π_ii x_i + Σ_s w_is x_nbr(i,s)
    with a neighbour-only exchange (use inside ``jit``; the plan's candidate table is bound here)."""
    cand = np.asarray(plan.cand)

    def local(tree, cand_l, w_l, self_l):
        pool = candidates(tree, plan)

        def one(x, c):
            scale = lambda v: v.reshape(v.shape + (1,) * (x.ndim - 1)).astype(x.dtype)  # noqa: E731
            acc = scale(self_l) * x
            for s in range(cand_l.shape[1]):
                acc = acc + scale(w_l[:, s]) * c[cand_l[:, s]]
            return acc

        return jax.tree.map(one, tree, pool)

    fn = sharded(local, mesh, 4)

    def mix(tree, weights, self_weight):
        return fn(tree, jnp.asarray(cand), weights, self_weight)

    return mix


COLLECTIVES = ("collective-permute", "all-gather", "all-reduce", "all-to-all", "reduce-scatter")


def collectives(hlo_text: str) -> dict[str, int]:
    """How many of each cross-device collective a compiled HLO module contains."""
    import re
    counts = {}
    for kind in COLLECTIVES:
        n = len(re.findall(rf"= \S+ {kind}(-start)?\(", hlo_text))
        if n:
            counts[kind] = n
    return counts


# ----------------------------------------------------------------------------- several processes
def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """``jax.distributed.initialize``: auto-detected on TPU VMs and Slurm when no argument is given;
    explicit ``coordinator`` ("host:port"), process count and id otherwise. CPU processes talk
    through gloo collectives. Must run before any other JAX call."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # noqa: BLE001 — older / newer JAX without this option: XLA's default
        pass
    jax.distributed.initialize(coordinator_address=coordinator or None, num_processes=num_processes or None,
                               process_id=None if process_id < 0 else process_id)


def multi_process() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    """Process 0 writes logs, metrics and result files."""
    return jax.process_index() == 0


def to_host(x) -> np.ndarray:
    """A (possibly sharded across processes) array as a full numpy array in every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def barrier(name: str) -> None:
    if multi_process():
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def local_agents(mesh, num_agents: int) -> list[int]:
    """Agents whose device belongs to this process (all of them with one process)."""
    if mesh is None:
        return list(range(num_agents))
    devs = list(mesh.devices.flat)
    k = num_agents // len(devs)
    mine = {d.id for d in jax.local_devices()}
    return [a for a in range(num_agents) if devs[a // k].id in mine]


def per_agent_array(mesh, shards, source: np.ndarray, agents: list[int]):
    """Global [N, n_max, ...] array (agent axis sharded) holding agent a's shard rows ``source[shards[a]]``
    (zero-padded to the largest shard), built from this process's agents only."""
    n_max = max(len(s) for s in shards)
    block = np.zeros((len(agents), n_max) + source.shape[1:], source.dtype)
    for row, a in enumerate(agents):
        block[row, :len(shards[a])] = source[shards[a]]
    global_shape = (len(shards), n_max) + source.shape[1:]
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(AXIS)), block, global_shape)
