"""Why JAX trails PyTorch on this CPU: one ResNet-20 training step taken apart (XLA:CPU).

  python experiments/benchmarks/cpu_conv_gap.py [--flags]

1. forward vs forward+backward time of one ResNet-20 (width 1, batch 128) step;
2. per 3x3 convolution of ResNet-20: forward, input gradient (dX) and filter gradient (dW) in
   GFLOP/s, XLA's dW against dW computed as 9 matmuls of shifted inputs (im2col-style);
3. with ``--flags``: the whole 5-agent training step under XLA:CPU options (oneDNN, XNNPACK, fast
   math, the old runtime, …), each in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FLAGS = ["", "--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true",
         "--xla_cpu_use_xnnpack=true", "--xla_cpu_enable_fast_math=true", "--xla_cpu_multi_thread_eigen=false",
         "--xla_cpu_use_thunk_runtime=false", "--xla_cpu_enable_concurrency_optimized_scheduler=true"]

STEP = r"""
import json, statistics, time
import jax, jax.numpy as jnp, numpy as np
from dimat_jax import agents
from dimat_jax.data.pipeline import Preprocess
from dimat_jax.models import build_model
from dimat_jax.optim import make_optimizer
n, b = 5, 128
model, tx = build_model("resnet20", 10, 1.0), make_optimizer("adam", 1e-3)
pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (n * b, 32, 32, 3), dtype=np.uint8))
y, idx = jnp.zeros((n * b,), jnp.int32), jnp.arange(n * b, dtype=jnp.int32).reshape(n, b)
step, st = agents.make_train_step(model, tx, pre), agents.init_state(model, tx, (32, 32, 3), n, 0)
st, m = step(st, x, y, idx, jax.random.PRNGKey(0)); jax.block_until_ready(m)
ts = []
for _ in range(3):
    t = time.perf_counter(); st, m = step(st, x, y, idx, jax.random.PRNGKey(0)); jax.block_until_ready(m)
    ts.append(time.perf_counter() - t)
print(json.dumps({"step": statistics.median(ts)}))
"""


def timed(f, *args, reps=7):
    import jax
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flags", action="store_true", help="also time the 5-agent step under XLA:CPU options")
    args = p.parse_args()
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    from dimat_jax.models import build_model
    from dimat_jax.report import table

    m = build_model("resnet20", 10, 1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 32, 32, 3))
    y = jnp.zeros((128,), jnp.int32)
    v = m.init(jax.random.PRNGKey(0), x[:1])

    def loss(p, bs):
        logits, _ = m.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tf = timed(jax.jit(loss), v["params"], v["batch_stats"])
    tg = timed(jax.jit(jax.grad(loss)), v["params"], v["batch_stats"])
    print(f"one ResNet-20 w=1 step, batch 128: forward {tf:.3f} s, forward+backward {tg:.3f} s "
          f"(backward {100 * (tg - tf) / tg:.0f} % of the step)")
    dn = ("NHWC", "HWIO", "NHWC")
    rows = []
    for cin, cout, hw, stride in [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]:
        xc = jax.random.normal(jax.random.PRNGKey(1), (128, hw, hw, cin))
        k = jax.random.normal(jax.random.PRNGKey(2), (3, 3, cin, cout))

        def conv(a, w, s=stride):
            return lax.conv_general_dilated(a, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=dn)

        g = conv(xc, k)
        ho = g.shape[1]

        def dw_matmul(a, gg):
            ap = jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
            cols = [ap[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (ho - 1) + 1:stride, :].reshape(-1, cin)
                    for i in range(3) for j in range(3)]
            return jnp.stack([jnp.dot(c.T, gg.reshape(-1, cout), precision="highest") for c in cols]).reshape(k.shape)

        flops = 2 * 128 * ho * ho * cout * 9 * cin
        t_f = timed(jax.jit(conv), xc, k)
        t_dx = timed(jax.jit(lambda a, gg: jax.vjp(lambda aa: conv(aa, k), a)[1](gg)[0]), xc, g)
        t_dw = timed(jax.jit(lambda a, gg: jax.vjp(lambda kk: conv(a, kk), k)[1](gg)[0]), xc, g)
        t_mm = timed(jax.jit(dw_matmul), xc, g)
        rows.append([f"{cin}->{cout}, {hw}x{hw}, stride {stride}", f"{flops / t_f / 1e9:.0f}",
                     f"{flops / t_dx / 1e9:.0f}", f"{flops / t_dw / 1e9:.0f}", f"{flops / t_mm / 1e9:.0f}"])
    print(f"GFLOP/s of ResNet-20's 3x3 convolutions (batch 128), {jax.default_backend()}, jax {jax.__version__}:")
    print(table(rows, ["convolution", "forward", "dX", "dW (XLA)", "dW (9 matmuls)"]))
    if args.flags:
        rows = []
        for flag in FLAGS:
            env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
            r = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=900)
            line = [x for x in r.stdout.splitlines() if x.startswith("{")]
            if line:
                s = json.loads(line[-1])["step"]
                rows.append([flag or "(default)", f"{s:.3f}", f"{640 / s:.0f}"])
            else:
                rows.append([flag, "failed", r.stderr.strip().splitlines()[-1][:60] if r.stderr else ""])
        print("5 agents x batch 128 training step under XLA:CPU options:")
        print(table(rows, ["XLA_FLAGS", "s/step", "images/s"]))


if __name__ == "__main__":
    main()
