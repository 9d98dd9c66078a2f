"""How a 3x3 convolution's filter gradient is computed: XLA's own, or as one matmul per tap.

XLA:CPU (JAX 0.10.2) computes the filter gradient dW of ResNet-20's convolutions at 15-60 GFLOP/s,
against 150 for the forward pass (experiments/benchmarks/cpu_conv_gap.py). ``taps`` computes
dW[i, j] = x_pad[:, i::s, j::s, :]^T @ dY (one [C_in, B*H*W] x [B*H*W, C_out] matmul per kernel
tap) under a ``jax.custom_vjp``; forward and input gradient stay XLA's. Measured on a 2-core CPU
(experiments/benchmarks/agent_strategies.py, pytorch_compare.py): +24-28 % training images/s with
tcmalloc, but much *slower* under glibc malloc (235 -> 138 images/s at 5 agents). Hence ``auto`` = ``taps`` on CPU under tcmalloc, else
``xla`` (GPU/TPU have good filter-gradient kernels).

Shapes: x [B, H, W, C_in] (NHWC), w [kh, kw, C_in, C_out] (HWIO), y [B, H', W', C_out].
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from dimat_jax.choices import FILTER_GRADS  # noqa: F401  (re-exported)

_DN = ("NHWC", "HWIO", "NHWC")


def resolve_filter_grad(name: str, backend: str | None = None, malloc: str | None = None) -> str:
    """Concrete mode for ``name``; 'auto' -> 'taps' on CPU under tcmalloc, else 'xla'."""
    if name not in FILTER_GRADS:
        raise ValueError(f"unknown conv filter-gradient mode {name!r}; choose one of {', '.join(FILTER_GRADS)}")
    if name != "auto":
        return name
    from dimat_jax.runtime import malloc_in_use
    backend = backend or jax.default_backend()
    return "taps" if backend == "cpu" and (malloc or malloc_in_use()) == "tcmalloc" else "xla"


def _xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_taps(x, w, strides: tuple, padding: tuple):
    """``lax.conv_general_dilated`` (NHWC/HWIO) whose filter gradient is a matmul per kernel tap."""
    return _xla_conv(x, w, strides, padding)


def _conv_taps_fwd(x, w, strides, padding):
    return _xla_conv(x, w, strides, padding), (x, w)


def _conv_taps_bwd(strides, padding, res, g):
    x, w = res
    dx = jax.vjp(lambda a: _xla_conv(a, w, strides, padding), x)[1](g)[0]
    kh, kw, cin, cout = w.shape
    (s0, s1), (ho, wo) = strides, g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g2 = g.reshape(-1, cout)
    taps = [xp[:, i:i + s0 * (ho - 1) + 1:s0, j:j + s1 * (wo - 1) + 1:s1, :].reshape(-1, cin).T @ g2
            for i in range(kh) for j in range(kw)]
    return dx, jnp.stack(taps).reshape(w.shape)


conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def conv_general_dilated_taps(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                              precision=None, preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated`` (the signature ``flax.linen.Conv`` calls) that uses
    :func:`conv_taps` for plain convolutions (NHWC/HWIO, explicit padding, no dilation, no groups)
    and falls back to XLA's for anything else."""
    plain_dn = dimension_numbers is None or dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
    plain = (plain_dn and feature_group_count == 1 and batch_group_count == 1 and not isinstance(padding, str)
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and precision is None and preferred_element_type is None and lhs.ndim == 4)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision, preferred_element_type)
    return conv_taps(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))


def conv_function(filter_grad: str):
    """The ``conv_general_dilated`` argument for ``flax.linen.Conv``: None (XLA's) or the taps variant.
    ``filter_grad`` must already be resolved ('xla' | 'taps')."""
    if filter_grad not in ("xla", "taps"):
        raise ValueError(f"conv filter-gradient mode must be 'xla' or 'taps' here, got {filter_grad!r}")
    return None if filter_grad == "xla" else conv_general_dilated_taps
