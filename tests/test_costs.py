"""Compute accounting: XLA's FLOP counts of the compiled passes against hand counts for the small CNN."""
import jax
import jax.numpy as jnp
import pytest

from dimat_jax import agents, costs, report, train
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.models import build_model
from dimat_jax.optim import make_optimizer
from tiny_config import tiny_config


def conv_macs(h, w, cin, cout):
    """Multiply-adds of a 3x3, stride-1, zero-padded convolution, counting only taps that land on
    the image (each border row / column loses one of its three taps)."""
    return (3 * h - 2) * (3 * w - 2) * cin * cout


def cnn_macs(width, h=8, classes=10):
    """(forward MACs per image, MACs of conv1) of the small CNN on h x h x 1 images."""
    c1, c2, c3 = (max(1, round(b * width)) for b in (32, 64, 128))
    f = c3
    first = conv_macs(h, h, 1, c1)
    total = first + conv_macs(h, h, c1, c2) + conv_macs(h // 2, h // 2, c2, c3) + c3 * f + f * classes
    return total, first


def cnn_elementwise(width, h=8):
    """FLOPs per image outside the matmuls of an eval forward: per conv output element a bias add,
    BatchNorm (subtract, scale, shift) and ReLU; the 2x2 max-pool's 3 comparisons per output; the
    global average; input normalisation."""
    c1, c2, c3 = (max(1, round(b * width)) for b in (32, 64, 128))
    acts = h * h * (c1 + c2) + (h // 2) ** 2 * c3
    return 5 * acts + 3 * (h // 2) ** 2 * c2 + (h // 2) ** 2 * c3 + 2 * h * h


def train_flops_per_image(width):
    """Forward, filter gradients (as many MACs), input gradients (all but the first conv's): 2 FLOPs a MAC."""
    fwd, first = cnn_macs(width)
    return 2 * (3 * fwd - first)


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_forward_and_training_step_flops_match_a_hand_count(width):
    n, b = 2, 16
    model = build_model("cnn", 10, width)
    pre = Preprocess((0.3,), (0.3,), 16.0)
    v = agents.init_variables(model, (8, 8, 1), n, 0)
    x, y, mask = jnp.zeros((b, 8, 8, 1), jnp.uint8), jnp.zeros((b,), jnp.int32), jnp.ones((b,))
    fwd = costs.lowered_gflops(agents.make_eval_step(model, pre, "unrolled"), v, x, y, mask) * 1e9 / (n * b)
    assert fwd == pytest.approx(2 * cnn_macs(width)[0] + cnn_elementwise(width), rel=0.02)
    tx = make_optimizer("sgd", 0.1)
    step = agents.make_train_step(model, tx, pre, "unrolled")
    state = agents.init_state(model, tx, (8, 8, 1), n, 0)
    x_all, y_all = jnp.zeros((64, 8, 8, 1), jnp.uint8), jnp.zeros((64,), jnp.int32)
    per_image = costs.lowered_gflops(step, state, x_all, y_all, jnp.zeros((n, b), jnp.int32),
                                     jax.random.PRNGKey(0)) * 1e9 / (n * b)
    assert per_image == pytest.approx(train_flops_per_image(width), rel=0.08)
    counter = costs.FlopCounter()
    assert counter.gflops(step, state, x_all, y_all, jnp.zeros((n, b), jnp.int32), jax.random.PRNGKey(0)) == \
        pytest.approx(per_image * n * b / 1e9)
    assert costs.lowered_gflops(lambda *a: None) == 0.0  # not lowerable: no count


def test_merge_and_training_records_carry_hand_counted_flops(tmp_path):
    """A DIMAT run of 3 agents on a ring with local merge data, one merge batch of 32 per pass:
    BN re-estimation = 3 models x 32 images; statistics = each model on its own and its two
    receivers' batches (9 x 32 images) plus the moments; BN after = 3 x 32 again."""
    width, n, mb = 0.25, 3, 32
    train.run(tiny_config(algorithm="dimat", topology="ring", width=width, merge__bn_before=True), tmp_path / "w",
              log=lambda s: None)
    recs = report.read_metrics(tmp_path / "w")
    fwd = 2 * cnn_macs(width)[0]
    c = [max(1, round(b * width)) for b in (32, 64, 128, 128)]
    samples = [64, 64, 16, 1]  # feature positions per image at P_conv1, P_conv2, P_conv3, P_fc1
    # per receiver and slot: the neighbour's sums and squares, and the cross moments (2 FLOPs per MAC)
    moments = sum(n * (2 * s * ci + 2 * 2 * s * ci + 2 * 2 * s * ci * ci) for s, ci in zip(samples, c))
    want = 2 * n * mb * fwd + 3 * n * mb * fwd + mb * moments
    merged = [r for r in recs if r["phase"] == "merged"]
    assert merged and all(r["merge_gflops"] * 1e9 == pytest.approx(want, rel=0.1) for r in merged)
    assert all(r["merge_examples"] == mb and r["merge_data_passes"] == 3 for r in merged)
    trained = [r for r in recs if r["phase"] == "trained"]
    steps, b = 2, 16  # steps per epoch x batch, one epoch per round (and of pre-training)
    for r in trained:
        assert r["train_gflops"] * 1e9 == pytest.approx(steps * n * b * train_flops_per_image(width), rel=0.1)
        assert r["train_time_s"] > 0
