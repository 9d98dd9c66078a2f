"""Compressed merge messages: what a neighbour receives instead of an agent's exact model.

Every function maps stacked trees (leaves [N, ...], one model per agent) to the models the
neighbours reconstruct, and counts the bytes one agent sends per message (``merge.compression``):

- ``bf16``: every value rounded to bfloat16 (8 bits of mantissa): 2 bytes a value.
- ``int8``: per channel (the last axis; per tensor for vectors), ``scale = max |x| / 127`` and
  ``round(x / scale)`` in int8: 1 byte a value plus a 4-byte scale per channel.
- ``topk``: the largest ``fraction`` of the entries of the change against what the neighbours
  already hold (the sum of the agent's earlier messages). What a message leaves out stays in that
  difference and goes out later — error feedback — so nothing is lost for good. Values as float32
  and int32 indices: 8 bytes per entry kept. The first message is the dense model.

The error bounds (tests/test_compress.py): bf16 relative error <= 2^-8; int8 absolute error <= half a
step (scale / 2) per channel; top-k: each message holds exactly k entries per tensor, the largest
changes, and the received model plus the carried difference is the model.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dimat_jax.choices import COMPRESSIONS  # noqa: E402,F401  (re-exported)


def _per_agent_elements(tree) -> int:
    return sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(tree))


def bf16(tree):
    """(received tree, bytes per message)."""
    received = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(x.dtype), tree)
    return received, 2 * _per_agent_elements(tree)


def _int8_leaf(x):
    """x [N, ...]: symmetric int8 per channel (the last axis; a [N, C] vector: per tensor)."""
    axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else tuple(range(1, x.ndim))
    scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.clip(jnp.round(x / scale), -127, 127) * scale


def _int8_scales(x) -> int:
    return int(x.shape[-1]) if x.ndim > 2 else 1


def int8(tree):
    """(received tree, bytes per message)."""
    received = jax.tree.map(_int8_leaf, tree)
    scales = sum(_int8_scales(x) for x in jax.tree.leaves(tree))
    return received, _per_agent_elements(tree) + 4 * scales


class TopkState(NamedTuple):
    """Per agent: the model its neighbours hold, the sum of all its messages so far."""
    sent: Any


def _topk_leaf(delta, k_frac: float):
    """Exactly the ``k_frac`` largest-magnitude entries of each agent's slice of ``delta`` [N, ...]
    (the rest zero), and k."""
    n = delta.shape[0]
    flat = delta.reshape(n, -1)
    k = max(1, int(round(k_frac * flat.shape[1])))
    _, idx = jax.lax.top_k(jnp.abs(flat), k)                       # [N, k]
    rows = jnp.arange(n)[:, None]
    kept = jnp.zeros_like(flat).at[rows, idx].set(flat[rows, idx])
    return kept.reshape(delta.shape), k


def topk(tree, state: TopkState | None, fraction: float):
    """(received tree, bytes per message, new state). The message is the top ``fraction`` of the
    change against what the neighbours hold; what it leaves out stays in that difference and is
    sent later (error feedback), so received + (tree - received) = tree at every step. ``state``
    None: the first message, dense."""
    if state is None:
        return tree, dense_bytes(tree), TopkState(sent=tree)
    delta = jax.tree.map(jnp.subtract, tree, state.sent)
    kept = jax.tree.map(lambda d: _topk_leaf(d, fraction)[0], delta)
    entries = sum(_topk_leaf(d, fraction)[1] for d in jax.tree.leaves(delta))
    sent = jax.tree.map(jnp.add, state.sent, kept)
    return sent, 8 * entries, TopkState(sent=sent)


def dense_bytes(tree) -> int:
    """Bytes of one agent's uncompressed slice of a stacked tree."""
    return sum(int(np.prod(x.shape[1:])) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
