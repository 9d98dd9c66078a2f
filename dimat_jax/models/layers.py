"""Shared layers: PyTorch-style Kaiming-normal init and a BatchNorm that exposes its batch moments."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dimat_jax.models.conv import conv_function

# torch.nn.init.kaiming_normal_ defaults (fan_in, gain sqrt(2), untruncated normal), as the reference.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv3x3(features: int, name: str, stride: int = 1, use_bias: bool = False, filter_grad: str = "xla") -> nn.Conv:
    """3x3 convolution with PyTorch's symmetric padding of 1 (also for stride 2); ``filter_grad``
    ('xla' | 'taps') picks how its filter gradient is computed (see models/conv.py)."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, kernel_init=kaiming_normal, name=name,
                   conv_general_dilated=conv_function(filter_grad))


def dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=kaiming_normal, name=name)


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last (channels), like ``flax.linen.BatchNorm``.

    Variables: params ``scale``/``bias`` [C]; batch_stats ``mean``/``var`` [C]. In train mode the
    running statistics follow ``stat = momentum * stat + (1 - momentum) * batch_stat`` (momentum 0.9
    equals PyTorch's 0.1) and, when the ``bn_moments`` collection is mutable, the batch's first and
    second moments E[x], E[x^2] are sown there, which lets BatchNorm re-estimation compute exact
    dataset statistics.
    """
    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            mean_sq = jnp.square(xf).mean(axes)
            var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
            if self.is_mutable_collection("bn_moments"):
                self.sow("bn_moments", "moments", jnp.stack([mean, mean_sq]))
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x - mean) * (scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon)))
        return (y + bias).astype(x.dtype)


def sow_feature(module: nn.Module, name: str, x: jnp.ndarray) -> jnp.ndarray:
    """Record a post-ReLU feature map under ``intermediates/<name>`` (used by activation matching)."""
    module.sow("intermediates", name, x)
    return x
