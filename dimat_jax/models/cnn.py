"""Small CNN for the embedded digits (and MNIST-sized data).

conv1(32w) -> bn1 -> relu -> conv2(64w) -> bn2 -> relu -> maxpool 2 -> conv3(128w) -> bn3 -> relu
-> global average pool -> fc1(128w) -> relu -> head(num_classes). 3x3 convolutions with bias.
Width 1, 1 input channel, 10 classes: 111 k parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dimat_jax.models.layers import BatchNorm, conv3x3, dense, sow_feature


def channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


class SmallCNN(nn.Module):
    num_classes: int
    width: float = 1.0
    conv_filter_grad: str = "xla"  # 'xla' | 'taps' (models/conv.py)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """x: [B, H, W, C] normalised images -> logits [B, num_classes]."""
        for i, base in enumerate((32, 64, 128), start=1):
            x = conv3x3(channels(base, self.width), f"conv{i}", use_bias=True, filter_grad=self.conv_filter_grad)(x)
            x = nn.relu(BatchNorm(name=f"bn{i}")(x, train))
            sow_feature(self, f"relu{i}", x)
            if i == 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.mean(axis=(1, 2))
        x = nn.relu(dense(channels(128, self.width), "fc1")(x))
        sow_feature(self, "relu_fc1", x)
        return dense(self.num_classes, "head")(x)


def permutation_spec(variables):
    """4 permutations: the units of conv1, conv2, conv3 and fc1 (the worked example in merging/spec.py)."""
    from dimat_jax.merging.spec import PermutationSpec, bn, conv, dense
    axes = {**conv("conv1", None, "P_conv1", bias=True), **bn("bn1", "P_conv1"),
            **conv("conv2", "P_conv1", "P_conv2", bias=True), **bn("bn2", "P_conv2"),
            **conv("conv3", "P_conv2", "P_conv3", bias=True), **bn("bn3", "P_conv3"),
            **dense("fc1", "P_conv3", "P_fc1"), **dense("head", "P_fc1", None)}
    features = {"P_conv1": "relu1", "P_conv2": "relu2", "P_conv3": "relu3", "P_fc1": "relu_fc1"}
    return PermutationSpec.build(axes, features, variables)
