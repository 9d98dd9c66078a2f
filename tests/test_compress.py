"""Compressed merge messages: round-trip error bounds and byte counts against numpy, by hand."""
import jax.numpy as jnp
import numpy as np

from dimat_jax.merging import compress


def tree(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return {"kernel": jnp.asarray(rng.normal(size=(n, 3, 3, 4, 6)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(n, 6)) * 5, jnp.float32)}


def test_bf16_relative_error_and_bytes():
    t = tree()
    got, nbytes = compress.bf16(t)
    for k in t:
        x, y = np.asarray(t[k], np.float64), np.asarray(got[k], np.float64)
        assert np.all(np.abs(y - x) <= 2.0 ** -8 * np.abs(x) + 1e-30)
        assert not np.array_equal(x, y)  # it did round
    assert nbytes == 2 * (3 * 3 * 4 * 6 + 6)  # per agent: 216 + 6 values, 2 bytes each


def test_int8_half_step_per_channel_and_bytes():
    t = tree(1)
    got, nbytes = compress.int8(t)
    x, y = np.asarray(t["kernel"], np.float64), np.asarray(got["kernel"], np.float64)
    scale = np.abs(x).max(axis=(1, 2, 3), keepdims=True) / 127  # per agent and output channel
    assert np.all(np.abs(y - x) <= scale / 2 + 1e-6)
    assert len(np.unique(np.round(y / scale))) <= 255
    b, yb = np.asarray(t["bias"], np.float64), np.asarray(got["bias"], np.float64)
    assert np.all(np.abs(yb - b) <= np.abs(b).max(axis=1, keepdims=True) / 127 / 2 + 1e-6)  # vector: per tensor
    assert nbytes == (216 + 6) + 4 * (6 + 1)  # 1 byte a value, a 4-byte scale per channel (bias: one)


def test_topk_keeps_the_largest_changes_and_feeds_back_the_rest():
    t0 = tree(2)
    received, nbytes, state = compress.topk(t0, None, 0.1)
    assert nbytes == 4 * 222 and all(np.array_equal(received[k], t0[k]) for k in t0)  # first message: dense
    t1 = {k: v + jnp.asarray(np.random.default_rng(3).normal(size=v.shape), jnp.float32) for k, v in t0.items()}
    received, nbytes, state = compress.topk(t1, state, 0.1)
    k_kernel, k_bias = round(0.1 * 216), max(1, round(0.1 * 6))
    assert nbytes == 8 * (k_kernel + k_bias)
    for key, k in (("kernel", k_kernel), ("bias", k_bias)):
        delta = np.asarray(t1[key] - t0[key], np.float64).reshape(3, -1)
        moved = np.asarray(received[key] - t0[key], np.float64).reshape(3, -1)
        for a in range(3):
            sent = np.flatnonzero(moved[a])
            assert len(sent) == k  # exactly k entries per tensor and agent
            assert np.abs(delta[a][sent]).min() >= np.abs(np.delete(delta[a], sent)).max()  # the largest
            np.testing.assert_allclose(moved[a][sent], delta[a][sent], rtol=1e-6)
    # error feedback: an unchanged model keeps sending what is left until the neighbours hold it all
    for _ in range(12):
        received, _, state = compress.topk(t1, state, 0.1)
    for key in t1:
        np.testing.assert_allclose(np.asarray(received[key]), np.asarray(t1[key]), atol=1e-6)
