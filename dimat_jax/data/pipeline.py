"""Batching (host, pure functions of the seed) and preprocessing (device, jit-able).

Batches: agent a reads an endless stream made of consecutive random permutations of its shard
(pass p is ``permutation(SeedSequence([seed, a, p]))``), cut into fixed-size batches. Because the
stream is a pure function of (seed, agent, position), the indices of any epoch can be computed
directly: resuming is exact and no iterator state needs saving. Every agent takes the same number
of steps per epoch (so all agents step in lock-step); with unequal shards the smaller ones simply
wrap around sooner.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from dimat_jax.choices import AUGMENTATIONS  # noqa: F401  (re-exported)



def steps_per_epoch(shard_sizes, batch_size: int, override: int = 0) -> int:
    """Steps per epoch: ``ceil(mean shard size / batch_size)`` unless ``override`` > 0."""
    if override > 0:
        return int(override)
    return max(1, math.ceil(float(np.mean(shard_sizes)) / batch_size))


def _pass_permutation(seed: int, agent: int, n: int, p: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence([seed, agent, p, 0xBA7C])).permutation(n)


def stream_positions(shard: np.ndarray, seed: int, agent: int, start: int, count: int,
                     positions: bool = False) -> np.ndarray:
    """Items ``start .. start+count-1`` of agent ``agent``'s endless shuffled stream over ``shard``:
    training-set indices, or with ``positions`` the positions within the shard (the same examples)."""
    n = len(shard)
    if positions:
        shard = np.arange(n)
    out = np.empty(count, np.int64)
    pos, filled = start, 0
    while filled < count:
        p, off = divmod(pos, n)
        take = min(n - off, count - filled)
        out[filled:filled + take] = shard[_pass_permutation(seed, agent, n, p)[off:off + take]]
        filled += take
        pos += take
    return out


def epoch_batches(shards, seed: int, epoch: int, steps: int, batch_size: int, positions: bool = False) -> np.ndarray:
    """Training-set indices for one epoch, int32 [steps, N, batch_size] (with ``positions``: positions
    within each agent's shard, for agent-local data)."""
    per_epoch = steps * batch_size
    cols = [stream_positions(s, seed, a, epoch * per_epoch, per_epoch, positions).reshape(steps, batch_size)
            for a, s in enumerate(shards)]
    return np.stack(cols, axis=1).astype(np.int32)


# ------------------------------------------------------------------------------- device side
def normalize(x: jnp.ndarray, mean, std, pixel_max: float) -> jnp.ndarray:
    """[..., C] raw pixels (uint8 or float) -> float32 ``(x / pixel_max - mean) / std``."""
    x = x.astype(jnp.float32) / pixel_max
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop(key: jax.Array, x: jnp.ndarray, padding: int) -> jnp.ndarray:
    """Zero-pad [B, H, W, C] by ``padding`` and crop back to H x W at a random offset per image."""
    if padding <= 0:
        return x
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(xp, offsets)


def random_flip(key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
    """Flip each image of [B, H, W, C] left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def augment(key: jax.Array, x: jnp.ndarray, kind: str, padding: int) -> jnp.ndarray:
    """Apply augmentation ``kind`` ('none' | 'crop' | 'flip' | 'crop_flip') to raw [B, H, W, C]."""
    k_crop, k_flip = jax.random.split(key)
    if kind in ("crop", "crop_flip"):
        x = random_crop(k_crop, x, padding)
    if kind in ("flip", "crop_flip"):
        x = random_flip(k_flip, x)
    return x


class Preprocess:
    """Static preprocessing recipe: normalisation constants and the training augmentation."""

    def __init__(self, mean, std, pixel_max: float, augment_kind: str = "none", crop_padding: int = 0):
        self.mean, self.std = tuple(mean), tuple(std)
        self.pixel_max, self.augment_kind, self.crop_padding = float(pixel_max), augment_kind, int(crop_padding)

    def train(self, key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
        """Raw [B, H, W, C] -> augmented, normalised float32."""
        return normalize(augment(key, x, self.augment_kind, self.crop_padding), self.mean, self.std, self.pixel_max)

    def eval(self, x: jnp.ndarray) -> jnp.ndarray:
        return normalize(x, self.mean, self.std, self.pixel_max)

    def __repr__(self):
        return (f"Preprocess(mean={self.mean}, std={self.std}, pixel_max={self.pixel_max}, "
                f"augment={self.augment_kind!r}, crop_padding={self.crop_padding})")
