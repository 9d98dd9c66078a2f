"""Accelerator benchmark, sized for under 5 minutes on one H100: ResNet-20x8, 5 agents, CIFAR shapes.

  python experiments/benchmarks/gpu.py [--agents 5 --width 8 --batch 100 --steps 30 --out gpu.json]
  python experiments/benchmarks/gpu.py --smoke      # a seconds-long CPU run of the same code path

Times the jitted training step of all agents (Adam, crop + flip augmentation, synthetic uint8
pixels; agent strategy 'auto' = vmap on GPU/TPU) after compilation and 3 warm-up steps, and one
DIMAT merge round (ring) broken down by stage. Model FLOP utilisation = (XLA's cost-analysis FLOPs
of one step) / (step time) / (the device's peak); the peak is looked up by device kind (dense
FP32 and TF32/bf16 tensor-core peaks; float32 convolutions may run on TF32 tensor cores under XLA's
default precision) or given with --peak-tflops.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

# dense peak TFLOP/s: (FP32 vector, TF32 tensor core)
PEAKS = {"H100": (67.0, 494.7), "H200": (67.0, 494.7), "A100": (19.5, 156.0), "L4": (30.3, 120.0),
         "V100": (15.7, 15.7)}


def peak_for(kind: str):
    for name, peak in PEAKS.items():
        if name in kind:
            return peak
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--width", type=float, default=8.0)
    p.add_argument("--conv-filter-grad", default="auto", help="auto | xla | taps (dimat_jax/models/conv.py)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--strategy", default="auto")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (width 0.25, 2 steps) to test the script")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.smoke:
        args.width, args.steps, args.batch = 0.25, 2, 16
    import jax
    import jax.numpy as jnp

    from dimat_jax import agents
    from dimat_jax.data.pipeline import Preprocess
    from dimat_jax.merging.engine import Merger, merge_batches
    from dimat_jax.merging.neighbours import Neighbourhood
    from dimat_jax.models import build_model, permutation_spec
    from dimat_jax.optim import make_optimizer
    from dimat_jax.topology import build as build_topology

    n, b = args.agents, args.batch
    model = build_model("resnet20", 10, args.width, args.conv_filter_grad)
    tx = make_optimizer("adam", 1e-3)
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (n * b * 2, 32, 32, 3), dtype=np.uint8))
    y = jnp.asarray(rng.integers(0, 10, n * b * 2).astype(np.int32))
    idx = jnp.arange(n * b, dtype=jnp.int32).reshape(n, b)
    state = agents.init_state(model, tx, (32, 32, 3), n, 0)
    step = agents.make_train_step(model, tx, pre, args.strategy)
    key = jax.random.PRNGKey(0)

    t = time.perf_counter()
    compiled = step.lower(state, x, y, idx, key).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    for _ in range(3):
        state, m = step(state, x, y, idx, key)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, x, y, idx, key)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t) / args.steps
    kind = jax.devices()[0].device_kind
    peak = (args.peak_tflops, args.peak_tflops) if args.peak_tflops else peak_for(kind)
    result = {"device": kind, "backend": jax.default_backend(), "jax": jax.__version__,
              "strategy": agents.resolve_strategy(args.strategy), "conv_filter_grad": model.conv_filter_grad, "agents": n, "width": args.width, "batch": b,
              "params_per_agent": agents.num_params(state.params), "compile_s": compile_s, "step_s": step_s,
              "images_per_s": n * b / step_s, "flops_per_step": flops,
              "achieved_tflops": flops / step_s / 1e12 if flops else None}
    if peak and flops:
        result["mfu_vs_fp32_peak"] = flops / step_s / (peak[0] * 1e12)
        result["mfu_vs_tensor_core_peak"] = flops / step_s / (peak[1] * 1e12)

    # one DIMAT merge round (ring), by stage
    one = jax.tree.map(lambda v: v[0], state.variables)
    merger = Merger(model, permutation_spec("resnet20", one), pre)
    hood = Neighbourhood.from_matrix(build_topology("ring", n).matrix())
    shards = [np.arange(a * b, (a + 1) * b) for a in range(n)]
    batches = merge_batches(shards, "local", b, 1)
    merger.merge(state.variables, hood, x, batches)  # compile
    _, info = merger.merge(state.variables, hood, x, batches)
    result["merge_round_s"] = {"bn_before": info.bn_before_s, "statistics": info.stats_s, "lsa": info.match_s,
                               "mix": info.mix_s, "bn_after": info.bn_after_s, "total": info.total_s,
                               "data_passes": info.data_passes}
    from dimat_jax.report import table
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result.items() if k != "merge_round_s"]
    rows += [[f"merge round: {k}", f"{v:.4g}" if isinstance(v, float) else v] for k, v in result["merge_round_s"].items()]
    print(table(rows, ["quantity", "value"]))
    print(f"\n{kind}: {result['images_per_s']:.0f} images/s ({n} agents x {b}, ResNet-20 w={args.width:g}, "
          f"{result['params_per_agent'] / 1e6:.1f} M params/agent), {step_s * 1e3:.1f} ms/step, compile {compile_s:.0f} s"
          + (f", {result['achieved_tflops']:.1f} TFLOP/s" if flops else "")
          + (f", MFU {100 * result['mfu_vs_fp32_peak']:.0f} % of FP32 / {100 * result['mfu_vs_tensor_core_peak']:.0f} % "
             "of TF32 peak" if "mfu_vs_fp32_peak" in result else "")
          + f"; merge round {info.total_s:.2f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
