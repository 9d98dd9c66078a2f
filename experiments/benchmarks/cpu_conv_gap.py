"""Why JAX trails PyTorch on this CPU: one ResNet-20 training step taken apart (XLA:CPU vs oneDNN).

  python experiments/benchmarks/cpu_conv_gap.py [--flags] [--out gap.json]

1. forward vs forward+backward time of one ResNet-20 (width 1, batch 128) loss;
2. every distinct convolution of that forward (read from its jaxpr, with its count): forward,
   input gradient (dX) and filter gradient (dW) in GFLOP/s under XLA, XLA's dW against dW computed
   as 9 matmuls of shifted inputs (im2col-style), and, with PyTorch installed (``bench`` extra), the
   same three through ``aten.convolution_backward`` in channels_last (oneDNN);
3. the one-agent training step split into conv forward / dX / dW (sum over the model's
   convolutions of the isolated timings) and everything else (BatchNorm, ReLU, loss, Adam,
   augmentation: the measured step minus the convolutions), JAX next to PyTorch;
4. with ``--flags``: the whole 5-agent training step under XLA:CPU options (oneDNN, XNNPACK, fast
   math, the old runtime, ...), each in a fresh process.
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


def timed_torch(f, reps=7):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def conv_eqns(jaxpr):
    """Every conv_general_dilated equation of ``jaxpr``, sub-jaxprs included."""
    import jax
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.append(eqn)
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    out += conv_eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    out += conv_eqns(sub)
    return out


def distinct_convs(model, variables, x):
    """[(lhs shape, rhs shape, params, count)] of the training-mode forward's convolutions."""
    import jax
    jaxpr = jax.make_jaxpr(lambda a: model.apply(variables, a, train=True, mutable=["batch_stats"]))(x)
    seen = {}
    for e in conv_eqns(jaxpr.jaxpr):
        key = (tuple(e.invars[0].aval.shape), tuple(e.invars[1].aval.shape), tuple(e.params["window_strides"]),
               tuple(map(tuple, e.params["padding"])))
        if key in seen:
            seen[key][3] += 1
        else:
            seen[key] = [key[0], key[1], dict(e.params), 1]
    return list(seen.values())


def xla_conv_times(lhs, rhs, params):
    import jax
    import jax.numpy as jnp
    from jax import lax
    a = jax.random.normal(jax.random.PRNGKey(1), lhs)
    k = jax.random.normal(jax.random.PRNGKey(2), rhs)

    def conv(aa, kk):
        return lax.conv_general_dilated_p.bind(aa, kk, **params)

    g = conv(a, k)
    cin, cout, ho, wo = rhs[2], rhs[3], g.shape[1], g.shape[2]
    s0, s1 = params["window_strides"]

    def dw_matmul(aa, gg):
        ap = jnp.pad(aa, ((0, 0), tuple(params["padding"][0]), tuple(params["padding"][1]), (0, 0)))
        cols = [ap[:, i:i + s0 * (ho - 1) + 1:s0, j:j + s1 * (wo - 1) + 1:s1, :].reshape(-1, cin)
                for i in range(rhs[0]) for j in range(rhs[1])]
        return jnp.stack([jnp.dot(c.T, gg.reshape(-1, cout), precision="highest") for c in cols]).reshape(rhs)

    flops = 2 * lhs[0] * ho * wo * cout * rhs[0] * rhs[1] * cin
    return flops, {"forward": timed(jax.jit(conv), a, k),
                   "dX": timed(jax.jit(lambda aa, gg: jax.vjp(lambda z: conv(z, k), aa)[1](gg)[0]), a, g),
                   "dW": timed(jax.jit(lambda aa, gg: jax.vjp(lambda z: conv(aa, z), k)[1](gg)[0]), a, g),
                   "dW 9 matmuls": timed(jax.jit(dw_matmul), a, g)}


def torch_conv_times(lhs, rhs, params):
    """The same convolution in PyTorch (NCHW logical, channels_last memory), forward/dX/dW."""
    import torch
    (p0, q0), (p1, q1) = params["padding"]
    stride = list(params["window_strides"])
    b, h, w, cin = lhs
    a = torch.randn(b, cin, h + p0 + q0, w + p1 + q1).contiguous(memory_format=torch.channels_last)
    k = torch.randn(rhs[3], rhs[2], rhs[0], rhs[1]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        g = torch.nn.functional.conv2d(a, k, stride=stride).contiguous(memory_format=torch.channels_last)

    def back(mask):
        return lambda: torch.ops.aten.convolution_backward(g, a, k, None, stride, [0, 0], [1, 1], False, [0, 0], 1, mask)
    with torch.no_grad():
        return {"forward": timed_torch(lambda: torch.nn.functional.conv2d(a, k, stride=stride)),
                "dX": timed_torch(back([True, False, False])), "dW": timed_torch(back([False, True, False]))}


def one_agent_steps(batch: int):
    """Seconds of one ResNet-20 w=1 training step of one agent: JAX (default strategy) and PyTorch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dimat_jax import agents
    from dimat_jax.data.pipeline import Preprocess
    from dimat_jax.models import build_model
    from dimat_jax.optim import make_optimizer
    model, tx = build_model("resnet20", 10, 1.0), make_optimizer("adam", 1e-3)
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    x_u8 = np.random.default_rng(0).integers(0, 256, (1, batch, 32, 32, 3), dtype=np.uint8)
    y = np.zeros((1, batch), np.int64)
    step = agents.make_train_step(model, tx, pre)
    box = [agents.init_state(model, tx, (32, 32, 3), 1, 0)]
    xs, ys, idx = jnp.asarray(x_u8[0]), jnp.asarray(y[0], jnp.int32), jnp.arange(batch, dtype=jnp.int32)[None]

    def run_jax():
        box[0], m = step(box[0], xs, ys, idx, jax.random.PRNGKey(0))
        return m
    out = {"jax": timed(run_jax)}
    try:
        from pytorch_compare import torch_runner
        args = argparse.Namespace(agents=1, width=1.0)
        out["torch"] = timed_torch(torch_runner(args, x_u8, y, True))
    except ImportError:
        pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flags", action="store_true", help="also time the 5-agent step under XLA:CPU options")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default="")
    args = p.parse_args()
    import jax
    import jax.numpy as jnp
    import optax

    from dimat_jax.models import build_model
    from dimat_jax.report import table
    try:
        import torch
    except ImportError:
        torch = None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    m = build_model("resnet20", 10, 1.0)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, 32, 32, 3))
    y = jnp.zeros((args.batch,), jnp.int32)
    v = m.init(jax.random.PRNGKey(0), x[:1])

    def loss(p, bs):
        logits, _ = m.apply({"params": p, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tf = timed(jax.jit(loss), v["params"], v["batch_stats"])
    tg = timed(jax.jit(jax.grad(loss)), v["params"], v["batch_stats"])
    print(f"one ResNet-20 w=1 loss, batch {args.batch}: forward {tf:.3f} s, forward+backward {tg:.3f} s "
          f"(backward {100 * (tg - tf) / tg:.0f} % of it)\n")
    rows, totals, record = [], {}, []
    for lhs, rhs, params, count in distinct_convs(m, v, x):
        flops, tx_ = xla_conv_times(lhs, rhs, params)
        tt = torch_conv_times(lhs, rhs, params) if torch is not None else {}
        for phase in ("forward", "dX", "dW"):
            totals[("jax", phase)] = totals.get(("jax", phase), 0.0) + count * tx_[phase]
            if tt:
                totals[("torch", phase)] = totals.get(("torch", phase), 0.0) + count * tt[phase]
        gf = {k: f"{flops / t / 1e9:.0f}" for k, t in tx_.items()}
        row = [f"{rhs[2]}->{rhs[3]}, {lhs[1]}x{lhs[2]}, stride {params['window_strides'][0]}", count,
               gf["forward"], gf["dX"], gf["dW"], gf["dW 9 matmuls"]]
        if tt:
            row += [f"{flops / tt[k] / 1e9:.0f}" for k in ("forward", "dX", "dW")]
        rows.append(row)
        record.append({"lhs": lhs, "rhs": rhs, "count": count, "flops": flops, "jax_s": tx_, "torch_s": tt})
    head = ["convolution", "count", "XLA fwd", "XLA dX", "XLA dW", "dW as 9 matmuls"]
    if torch is not None:
        head += ["torch fwd", "torch dX", "torch dW"]
    from dimat_jax.runtime import malloc_in_use
    print(f"GFLOP/s of ResNet-20's convolutions (batch {args.batch}, isolated), jax {jax.__version__} "
          f"({jax.default_backend()}, malloc {malloc_in_use()})" + (f", torch {torch.__version__} channels_last" if torch else "") + ":")
    print(table(rows, head))

    steps = one_agent_steps(args.batch)
    libs = [k for k in ("jax", "torch") if k in steps]
    brk = []
    for phase in ("forward", "dX", "dW"):
        brk.append([f"convolutions, {phase}"] + [f"{totals[(k, phase)]:.3f}" for k in libs])
    other = {k: steps[k] - sum(totals[(k, ph)] for ph in ("forward", "dX", "dW")) for k in libs}
    brk.append(["everything else (BN, ReLU, loss, Adam, augmentation)"] + [f"{other[k]:.3f}" for k in libs])
    brk.append(["whole step (measured)"] + [f"{steps[k]:.3f}" for k in libs])
    if "torch" in steps:
        for row in brk:
            row.append(f"{float(row[1]) / max(float(row[2]), 1e-9):.1f}x")
    print(f"\none agent's training step (ResNet-20 w=1, batch {args.batch}, Adam), seconds:")
    print(table(brk, ["part"] + libs + (["JAX / torch"] if "torch" in steps else [])))
    result = {"malloc": malloc_in_use(), "forward_s": tf, "forward_backward_s": tg, "convolutions": record, "step_s": steps,
              "breakdown_s": {f"{k}/{ph}": t for (k, ph), t in totals.items()} | {f"{k}/other": o for k, o in other.items()}}
    if args.flags:
        rows = []
        for flag in FLAGS:
            env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
            r = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=900)
            line = [x for x in r.stdout.splitlines() if x.startswith("{")]
            if line:
                s = json.loads(line[-1])["step"]
                rows.append([flag or "(default)", f"{s:.3f}", f"{640 / s:.0f}"])
                result.setdefault("flags_step_s", {})[flag or "default"] = s
            else:
                rows.append([flag, "failed", r.stderr.strip().splitlines()[-1][:60] if r.stderr else ""])
        print("\n5 agents x batch 128 training step under XLA:CPU options:")
        print(table(rows, ["XLA_FLAGS", "s/step", "images/s"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
