"""Tap-matmul filter gradients (models/conv.py) against XLA's own autodiff of the convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from dimat_jax.models import build_model
from dimat_jax.models.conv import conv_general_dilated_taps, conv_taps, resolve_filter_grad

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 7, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
    ((3, 8, 8, 2), (3, 3, 2, 3), (2, 1), ((0, 1), (2, 0))),
    ((2, 5, 5, 3), (1, 1, 3, 6), (1, 1), ((0, 0), (0, 0))),
])
def test_taps_gradients_equal_xla_autodiff(shape, kernel, stride, padding):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = jax.random.normal(kx, shape), jax.random.normal(kw, kernel)
    ref = lambda a, b: lax.conv_general_dilated(a, b, stride, padding, dimension_numbers=DN)
    y = ref(x, w)
    np.testing.assert_allclose(conv_taps(x, w, stride, padding), y, rtol=1e-6)
    g = jax.random.normal(kg, y.shape)
    want = jax.vjp(ref, x, w)[1](g)
    got = jax.vjp(lambda a, b: conv_taps(a, b, stride, padding), x, w)[1](g)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_filter_gradient_against_numpy_loop():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)
    g = np.random.default_rng(1).normal(size=(2, 2, 2, 3)).astype(np.float32)  # stride 2, padding 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 2, 3), np.float32)
    for i in range(3):
        for j in range(3):
            for h in range(2):
                for v in range(2):
                    want[i, j] += xp[:, 2 * h + i, 2 * v + j, :].T @ g[:, h, v, :]
    _, vjp = jax.vjp(lambda w: conv_taps(jnp.asarray(x), w, (2, 2), ((1, 1), (1, 1))), jnp.zeros((3, 3, 2, 3)))
    np.testing.assert_allclose(vjp(jnp.asarray(g))[0], want, rtol=1e-5, atol=1e-5)


def test_non_plain_convolutions_fall_back_to_xla():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    want = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=2)
    got = conv_general_dilated_taps(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("name", [pytest.param("resnet20", marks=pytest.mark.slow), "cnn"])
def test_model_gradients_do_not_depend_on_filter_grad_mode(name):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    y = jnp.array([0, 1, 2, 3])
    xla, taps = (build_model(name, 10, 0.25, mode) for mode in ("xla", "taps"))
    v = xla.init(jax.random.PRNGKey(1), x[:1])

    def grads(model):
        def loss(p):
            logits, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                    mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return jax.grad(loss)(v["params"])

    for a, b in zip(jax.tree.leaves(grads(xla)), jax.tree.leaves(grads(taps))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_auto_mode_picks_taps_only_on_cpu_under_tcmalloc():
    assert resolve_filter_grad("auto", "cpu", "tcmalloc") == "taps"
    assert resolve_filter_grad("auto", "cpu", "glibc") == "xla"
    assert resolve_filter_grad("auto", "gpu", "tcmalloc") == "xla"
    assert resolve_filter_grad("taps", "gpu", "glibc") == "taps"
    with pytest.raises(ValueError, match="choose one of auto, xla, taps"):
        resolve_filter_grad("im2col")


def test_taps_under_vmap_equals_per_agent_gradients():
    """The vmap agent strategy batches the custom VJP: per-agent kernels, per-agent inputs."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 6, 6, 2))   # [agents, B, H, W, C]
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 2, 4))   # [agents, kh, kw, Cin, Cout]

    def loss(wi, xi):
        return (conv_taps(xi, wi, (2, 2), ((1, 1), (1, 1))) ** 2).sum()

    got = jax.vmap(jax.grad(loss))(w, x)
    want = [jax.grad(lambda wi, xi: (lax.conv_general_dilated(xi, wi, (2, 2), ((1, 1), (1, 1)),
                                                              dimension_numbers=DN) ** 2).sum())(w[a], x[a])
            for a in range(3)]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-4)
