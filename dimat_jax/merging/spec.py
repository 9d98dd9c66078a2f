"""Permutation specs as plain data (in the spirit of git-re-basin), and permuting models by them.

A :class:`PermutationSpec` says, for every leaf of a model's variables (``params`` and
``batch_stats``, addressed by slash paths like ``params/stage1_block1/conv1/kernel``), which
permutation acts on each axis (or ``None``), and for every permutation where its units can be
observed (the sown post-ReLU feature used by activation matching).

Writing one for a new model takes the helpers below. The small CNN's spec, as a worked example
(``dimat_jax/models/cnn.py``)::

    axes = {**conv("conv1", None, "P1", bias=True), **bn("bn1", "P1"),     # conv1 writes units P1
            **conv("conv2", "P1", "P2", bias=True), **bn("bn2", "P2"),     # conv2 reads P1, writes P2
            **conv("conv3", "P2", "P3", bias=True), **bn("bn3", "P3"),
            **dense("fc1", "P3", "P4"), **dense("head", "P4", None)}       # the class axis: None
    spec = PermutationSpec.build(axes, features={"P1": "relu1", "P2": "relu2", "P3": "relu3",
                                                 "P4": "relu_fc1"}, variables=variables)

A permutation is an index vector ``perm`` of length C: unit k of the permuted model is unit
``perm[k]`` of the original, on every axis the permutation touches (producers' output axes and
consumers' input axes), so the permuted model computes the same function.

An axis may hold a flattened (outer, C) block, e.g. a Dense layer reading a flattened H x W x C
map: ``PermAxis("P13", outer=H * W)`` permutes C inside each of the H*W groups (C fastest, as in
a row-major NHWC flatten).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SpecError(ValueError):
    """A permutation spec does not fit the model's variables."""


class PermAxis(NamedTuple):
    """Permutation ``perm`` on an axis of size ``outer * C`` viewed as [outer, C] (C fastest)."""
    perm: str
    outer: int = 1


def _entry(p) -> PermAxis | None:
    if p is None or isinstance(p, PermAxis):
        return p
    return PermAxis(p)


def conv(name: str, p_in, p_out, bias: bool = False) -> dict:
    """Flax Conv kernel [kh, kw, in, out] (+ bias [out])."""
    d = {f"params/{name}/kernel": (None, None, _entry(p_in), _entry(p_out))}
    if bias:
        d[f"params/{name}/bias"] = (_entry(p_out),)
    return d


def dense(name: str, p_in, p_out, bias: bool = True) -> dict:
    """Flax Dense kernel [in, out] (+ bias [out]). ``p_in`` may be a PermAxis with ``outer``."""
    d = {f"params/{name}/kernel": (_entry(p_in), _entry(p_out))}
    if bias:
        d[f"params/{name}/bias"] = (_entry(p_out),)
    return d


def bn(name: str, p) -> dict:
    """Our BatchNorm: params scale/bias and batch_stats mean/var, all [C]."""
    e = (_entry(p),)
    return {f"params/{name}/scale": e, f"params/{name}/bias": e,
            f"batch_stats/{name}/mean": e, f"batch_stats/{name}/var": e}


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """Nested dict -> {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """``axes[leaf_path]``: one PermAxis or None per axis; ``features[perm]``: sown feature path;
    ``sizes[perm]``: number of units C."""
    axes: Mapping[str, tuple]
    features: Mapping[str, str]
    sizes: Mapping[str, int]

    @property
    def perms(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    def touched(self, perm: str) -> list[tuple[str, int, int]]:
        """(leaf path, axis, outer) of every axis that ``perm`` acts on."""
        return [(path, ax, e.outer) for path, entries in self.axes.items()
                for ax, e in enumerate(entries) if e is not None and e.perm == perm]

    @classmethod
    def build(cls, axes: Mapping[str, tuple], features: Mapping[str, str], variables) -> "PermutationSpec":
        """Validate ``axes`` against ``variables`` (arrays or ShapeDtypeStructs; unstacked) and
        infer the permutation sizes. Raises :class:`SpecError` naming the first problem."""
        axes = {k: tuple(_entry(e) for e in v) for k, v in axes.items()}
        leaves = flatten({k: variables[k] for k in ("params", "batch_stats") if k in variables})
        missing = sorted(set(leaves) - set(axes))
        if missing:
            raise SpecError(f"permutation spec misses leaves {missing}; every params/batch_stats leaf "
                            "needs an entry (use None for unpermuted axes)")
        extra = sorted(set(axes) - set(leaves))
        if extra:
            raise SpecError(f"permutation spec names leaves the model does not have: {extra}")
        sizes: dict[str, int] = {}
        for path, entries in axes.items():
            shape = tuple(leaves[path].shape)
            if len(entries) != len(shape):
                raise SpecError(f"{path}: spec has {len(entries)} axes, leaf has shape {shape}")
            for ax, e in enumerate(entries):
                if e is None:
                    continue
                if shape[ax] % e.outer:
                    raise SpecError(f"{path} axis {ax} (size {shape[ax]}) is not divisible by outer={e.outer}")
                c = shape[ax] // e.outer
                if sizes.setdefault(e.perm, c) != c:
                    raise SpecError(f"permutation {e.perm!r} has size {sizes[e.perm]} elsewhere but {path} "
                                    f"axis {ax} gives {c}")
        for p in sizes:
            if p not in features:
                raise SpecError(f"permutation {p!r} has no feature point (features[{p!r}] = sown feature path)")
        unknown = sorted(set(features) - set(sizes))
        if unknown:
            raise SpecError(f"features name permutations that act on no axis: {unknown}")
        return cls(axes=axes, features=dict(features), sizes=sizes)


# --------------------------------------------------------------------------- permuting
def permuted_leaf(x, entries: tuple, perms: Mapping, except_axis: int | None = None, xp=jnp):
    """Leaf ``x`` with every axis its spec ``entries`` name permuted by ``perms`` (unit k of an axis
    becomes unit ``perm[k]``; an axis of ``outer`` blocks is permuted inside each block), except
    ``except_axis`` — git-re-basin's ``get_permuted_param``. ``xp``: ``jax.numpy`` or ``numpy``.
    Permutations missing from ``perms`` are the identity."""
    for ax, e in enumerate(entries):
        if ax == except_axis or e is None or e.perm not in perms:
            continue
        perm = xp.asarray(perms[e.perm])
        if e.outer > 1:
            perm = (xp.arange(e.outer)[:, None] * perm.shape[-1] + perm[None, :]).reshape(-1)
        x = xp.take(x, perm, axis=ax)
    return x


def permute(variables: Mapping, spec: PermutationSpec, perms: Mapping[str, jnp.ndarray]) -> dict:
    """Permute one model's ``{'params', 'batch_stats'}`` by ``perms[p]`` (int [C_p]) per the spec.

    Permutations missing from ``perms`` are treated as the identity.
    """
    flat = flatten({k: variables[k] for k in ("params", "batch_stats") if k in variables})
    return unflatten({path: permuted_leaf(x, spec.axes[path], perms) for path, x in flat.items()})


def permute_stacked(variables: Mapping, spec: PermutationSpec, perms: Mapping[str, jnp.ndarray]) -> dict:
    """:func:`permute` for stacked agents: leaves [N, ...], ``perms[p]`` int [N, C_p]."""
    return jax.vmap(lambda v, p: permute(v, spec, p))(variables, dict(perms))


def identity_permutations(spec: PermutationSpec) -> dict[str, np.ndarray]:
    return {p: np.arange(c) for p, c in spec.sizes.items()}


def random_permutations(spec: PermutationSpec, key: jax.Array) -> dict[str, jnp.ndarray]:
    """An independent uniformly random permutation for every permutation of the spec."""
    keys = jax.random.split(key, len(spec.sizes))
    return {p: jax.random.permutation(k, c) for k, (p, c) in zip(keys, spec.sizes.items())}


def invert(perm) -> np.ndarray:
    """The inverse permutation: ``invert(p)[p] == arange``."""
    perm = np.asarray(perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    return inv
