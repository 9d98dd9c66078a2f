"""CIFAR ResNet-20 with a width multiplier (docs/algorithm.md §2.1).

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
    conv_filter_grad: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = conv3x3(self.features, "conv1", self.stride, filter_grad=self.conv_filter_grad)(x)
        y = sow_feature(self, "relu1", nn.relu(BatchNorm(name="bn1")(y, train)))
        y = BatchNorm(name="bn2")(conv3x3(self.features, "conv2", filter_grad=self.conv_filter_grad)(y), train)
        if self.projection:
            x = BatchNorm(name="shortcut_bn")(conv3x3(self.features, "shortcut_conv", self.stride, filter_grad=self.conv_filter_grad)(x), train)
        return sow_feature(self, "out", nn.relu(y + x))


class ResNet20(nn.Module):
    num_classes: int
    width: float = 1.0
    conv_filter_grad: str = "xla"  # 'xla' | 'taps' (models/conv.py)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """x: [B, H, W, C] -> logits [B, num_classes]."""
        x = conv3x3(channels(16, self.width), "stem_conv", filter_grad=self.conv_filter_grad)(x)
        x = sow_feature(self, "stem", nn.relu(BatchNorm(name="stem_bn")(x, train)))
        for s, base in enumerate((16, 32, 64), start=1):
            for b in range(1, 4):
                down = s > 1 and b == 1
                x = BasicBlock(channels(base, self.width), stride=2 if down else 1, projection=down,
                               conv_filter_grad=self.conv_filter_grad, name=f"stage{s}_block{b}")(x, train)
        x = x.mean(axis=(1, 2))
        return dense(self.num_classes, "head")(x)


def permutation_spec(variables):
    """12 permutations (docs/algorithm.md §2.1).

    ``P_stage{s}_block{b}`` (9, block-internal): conv1's output, bn1, conv2's input; observed at
    ``stage{s}_block{b}/relu1``. ``P_res{s}`` (3, one residual stream per stage): everything that
    writes into the stream (stem conv/BN for stage 1, every conv2/bn2 of the stage, the projection
    conv/BN) and everything that reads it (the stage's conv1s, the next stage's first conv1 and
    projection conv, the head); observed at the stage output ``stage{s}_block3/out``.
    """
    from dimat_jax.merging.spec import PermutationSpec, bn, conv, dense
    axes = {**conv("stem_conv", None, "P_res1"), **bn("stem_bn", "P_res1")}
    features = {}
    for s in (1, 2, 3):
        res = f"P_res{s}"
        features[res] = f"stage{s}_block3/out"
        for b in (1, 2, 3):
            blk = f"stage{s}_block{b}"
            inner = f"P_{blk}"
            features[inner] = f"{blk}/relu1"
            reads = f"P_res{s - 1}" if (s > 1 and b == 1) else res
            axes.update({**conv(f"{blk}/conv1", reads, inner), **bn(f"{blk}/bn1", inner),
                         **conv(f"{blk}/conv2", inner, res), **bn(f"{blk}/bn2", res)})
            if s > 1 and b == 1:
                axes.update({**conv(f"{blk}/shortcut_conv", reads, res), **bn(f"{blk}/shortcut_bn", res)})
    axes.update(dense("head", "P_res3", None))
    return PermutationSpec.build(axes, features, variables)
