"""CIFAR ResNet-20 with a width multiplier (SPEC §2.1).

stem: conv3x3(16w) -> BN -> ReLU; stages 1..3 of three BasicBlocks of width 16w / 32w / 64w; the
first block of stages 2 and 3 has stride 2 and a 3x3 conv + BN projection shortcut; global average
pool; Dense head. Convolutions have no bias. Parameters: width 1, 10 classes: 293 k; width 8, 100 classes: 18.6 M (the 3x3 projections
add 20 k / 1.3 M over the common 1x1 variant).

Module names (stable; permutation specs key on them): ``stem_conv``, ``stem_bn``,
``stage{s}_block{b}`` (s, b in 1..3) with ``conv1, bn1, conv2, bn2`` and, where present,
``shortcut_conv, shortcut_bn``; ``head``. Sown features: ``stage{s}_block{b}/relu1`` (block-internal)
and ``stage{s}_block{b}/out`` (residual stream after the block's ReLU).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dimat_jax.models.cnn import channels
from dimat_jax.models.layers import BatchNorm, conv3x3, dense, sow_feature


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    projection: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = conv3x3(self.features, "conv1", self.stride)(x)
        y = sow_feature(self, "relu1", nn.relu(BatchNorm(name="bn1")(y, train)))
        y = BatchNorm(name="bn2")(conv3x3(self.features, "conv2")(y), train)
        if self.projection:
            x = BatchNorm(name="shortcut_bn")(conv3x3(self.features, "shortcut_conv", self.stride)(x), train)
        return sow_feature(self, "out", nn.relu(y + x))


class ResNet20(nn.Module):
    num_classes: int
    width: float = 1.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """x: [B, H, W, C] -> logits [B, num_classes]."""
        x = conv3x3(channels(16, self.width), "stem_conv")(x)
        x = sow_feature(self, "stem", nn.relu(BatchNorm(name="stem_bn")(x, train)))
        for s, base in enumerate((16, 32, 64), start=1):
            for b in range(1, 4):
                down = s > 1 and b == 1
                x = BasicBlock(channels(base, self.width), stride=2 if down else 1, projection=down,
                               name=f"stage{s}_block{b}")(x, train)
        x = x.mean(axis=(1, 2))
        return dense(self.num_classes, "head")(x)
