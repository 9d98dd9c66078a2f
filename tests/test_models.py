"""Models: shapes, parameter counts from the architecture description, init, BatchNorm maths."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dimat_jax.models import ModelError, build_model, check_input_shape
from dimat_jax.models.layers import BatchNorm


def conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def bn(c):
    return 2 * c


def resnet20_count(w, classes, cin=3):
    c = [16 * w, 32 * w, 64 * w]
    n = conv(3, cin, c[0]) + bn(c[0])
    prev = c[0]
    for s in range(3):
        for b in range(3):
            n += conv(3, prev, c[s]) + bn(c[s]) + conv(3, c[s], c[s]) + bn(c[s])
            if s > 0 and b == 0:
                n += conv(3, prev, c[s]) + bn(c[s])  # projection shortcut
            prev = c[s]
    return n + prev * classes + classes


def vgg16_count(classes, spatial_out=1, w=1):
    layout = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    n, prev = 0, 3
    for c in layout:
        c = c * w
        n += conv(3, prev, c, bias=True) + bn(c)
        prev = c
    return n + prev * spatial_out * classes + classes


def count(model, shape):
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def test_parameter_counts_match_architecture():
    assert count(build_model("resnet20", 10, 1), (32, 32, 3)) == resnet20_count(1, 10) == 292_954  # 3x3 projection shortcuts
    assert count(build_model("resnet20", 100, 8), (32, 32, 3)) == resnet20_count(8, 100)  # ~18.6 M (the reference's ResNet-20x8)
    assert abs(resnet20_count(8, 100) - 18.6e6) < 0.1e6
    assert count(build_model("vgg16", 100, 1), (32, 32, 3)) == vgg16_count(100)
    assert count(build_model("vgg16", 200, 1), (64, 64, 3)) == vgg16_count(200, spatial_out=4)


@pytest.mark.parametrize("name,shape", [("cnn", (8, 8, 1)), ("cnn", (28, 28, 1)), ("resnet20", (8, 8, 1)),
                                        ("resnet20", (32, 32, 3)), ("vgg16", (32, 32, 3)), ("vgg16", (64, 64, 3))])
def test_forward_shapes_and_modes(name, shape):
    m = build_model(name, 7, 0.25)
    x = jax.random.normal(jax.random.PRNGKey(1), (3,) + shape)
    v = m.init(jax.random.PRNGKey(0), x, train=False)
    assert set(v) == {"params", "batch_stats"}
    out = m.apply(v, x, train=False)
    assert out.shape == (3, 7)
    out_t, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    assert out_t.shape == (3, 7)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), v["batch_stats"], upd["batch_stats"])
    assert all(jax.tree.leaves(changed))  # every BN's running statistics moved


def test_module_names_are_stable():
    v = jax.eval_shape(lambda: build_model("resnet20", 10, 1).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    p = v["params"]
    assert {"stem_conv", "stem_bn", "head"} <= set(p)
    assert set(p["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2", "shortcut_conv", "shortcut_bn"}
    assert set(p["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert "bias" not in p["stage1_block2"]["conv1"]
    v = jax.eval_shape(lambda: build_model("vgg16", 10, 1).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    assert set(v["params"]) == {f"conv{i}" for i in range(1, 14)} | {f"bn{i}" for i in range(1, 14)} | {"head"}
    v = jax.eval_shape(lambda: build_model("cnn", 10, 1).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    assert set(v["params"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "fc1", "head"}


def test_kaiming_normal_init_like_pytorch():
    v = build_model("resnet20", 10, 4).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    k = np.asarray(v["params"]["stage3_block2"]["conv1"]["kernel"])  # 3x3x256x256
    fan_in = 3 * 3 * k.shape[2]
    assert k.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.02)
    assert np.abs(k).max() > 3.5 * np.sqrt(2.0 / fan_in)  # untruncated normal (torch), not truncated


def test_batchnorm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 5, 5, 6)).astype(np.float32)
    layer = BatchNorm()
    v = layer.init(jax.random.PRNGKey(0), x, train=False)
    y, upd = layer.apply(v, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), 0.9 + 0.1 * var, rtol=1e-5)
    y_eval = layer.apply({"params": v["params"], "batch_stats": upd["batch_stats"]}, x, train=False)
    stats = upd["batch_stats"]
    np.testing.assert_allclose(np.asarray(y_eval), (x - np.asarray(stats["mean"])) /
                               np.sqrt(np.asarray(stats["var"]) + 1e-5), atol=1e-4)
    _, moments = layer.apply(v, x, train=True, mutable=["batch_stats", "bn_moments"])
    m = np.asarray(moments["bn_moments"]["moments"][0])
    np.testing.assert_allclose(m, np.stack([mean, (x ** 2).mean((0, 1, 2))]), rtol=1e-5)


def test_input_checks():
    with pytest.raises(ModelError, match="32x32"):
        check_input_shape("vgg16", (28, 28, 1))
    check_input_shape("resnet20", (8, 8, 1))
    with pytest.raises(ModelError, match="unknown model"):
        build_model("resnet18", 10)
    with pytest.raises(ModelError, match="width"):
        build_model("cnn", 10, 0)
