"""VGG16 with BatchNorm (docs/algorithm.md §2.1): 13 x [conv3x3 (bias) -> BN -> ReLU], 5 max-pools, Dense head.

Channels 64w, 64w | 128w, 128w | 256w x3 | 512w x3 | 512w x3 (| = 2x2 max-pool). The head reads the
flattened final map (H*W*C inputs; 1x1 on 32x32 inputs, 2x2 on 64x64). Needs inputs >= 32x32.
Module names: ``conv1..conv13``, ``bn1..bn13``, ``head``; sown features ``relu1..relu13``.
Width 1 on CIFAR-100: 14.8 M parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dimat_jax.models.cnn import channels
from dimat_jax.models.layers import BatchNorm, conv3x3, dense, sow_feature

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    num_classes: int
    width: float = 1.0
    conv_filter_grad: str = "xla"  # 'xla' | 'taps' (models/conv.py)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """x: [B, H, W, C] with H, W >= 32 -> logits [B, num_classes]."""
        i = 0
        for item in VGG16_LAYOUT:
            if item == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
                continue
            i += 1
            x = conv3x3(channels(item, self.width), f"conv{i}", use_bias=True, filter_grad=self.conv_filter_grad)(x)
            x = sow_feature(self, f"relu{i}", nn.relu(BatchNorm(name=f"bn{i}")(x, train)))
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, "head")(x)


def permutation_spec(variables):
    """13 permutations ``P_conv{k}``: conv_k's output axis and bias, bn_k, and conv_{k+1}'s input
    axis (the head's for k = 13); observed at ``relu{k}``. When the final map is H x W > 1 x 1
    (64x64 inputs) the head reads H*W*C flattened inputs: its input axis is permuted per channel
    inside each of the H*W groups."""
    from dimat_jax.merging.spec import PermAxis, PermutationSpec, bn, conv, dense
    axes, features, prev = {}, {}, None
    for k in range(1, 14):
        p = f"P_conv{k}"
        axes.update({**conv(f"conv{k}", prev, p, bias=True), **bn(f"bn{k}", p)})
        features[p] = f"relu{k}"
        prev = p
    c13 = variables["params"]["conv13"]["kernel"].shape[-1]
    outer = variables["params"]["head"]["kernel"].shape[0] // c13
    axes.update(dense("head", PermAxis(prev, outer), None))
    return PermutationSpec.build(axes, features, variables)
