"""The same local training step in JAX (dimat_jax's default agent strategy) and in PyTorch eager,
timed in one run with alternating repetitions (needs the ``bench`` extra: ``pip install -e '.[bench]'``).

  python experiments/benchmarks/pytorch_compare.py [--agents 5 --batch 128 --width 1 --reps 5 --out file.json]

One step = every agent takes one Adam step on its own minibatch of CIFAR-shaped synthetic images
(random crop with 4-pixel padding + flip, normalisation). PyTorch runs the N models one after the
other in eager mode (NCHW, and channels_last); JAX runs all agents in one jitted step. The model is
the same CIFAR ResNet-20 (3x3 stem, 3 stages of 3 BasicBlocks, 3x3 conv + BN projections, no conv
biases). Prints a table of median seconds per step, images/s and the JAX / PyTorch ratio.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np


def torch_resnet20(width: float, classes: int = 10):
    import torch
    from torch import nn

    def ch(c):
        return max(1, int(round(c * width)))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.short is None else self.short(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, ch(16), 3, 1, 1, bias=False), nn.BatchNorm2d(ch(16)), nn.ReLU())
            layers, cin = [], ch(16)
            for s, c in enumerate((16, 32, 64)):
                for b in range(3):
                    layers.append(Block(cin, ch(c), 2 if (s > 0 and b == 0) else 1))
                    cin = ch(c)
            self.blocks = nn.Sequential(*layers)
            self.head = nn.Linear(cin, classes)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    return Net()


def torch_runner(args, x_u8, y, channels_last: bool):
    import torch
    torch.manual_seed(0)
    models = [torch_resnet20(args.width) for _ in range(args.agents)]
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    opts = [torch.optim.Adam(m.parameters(), 1e-3) for m in models]
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)
    xs = torch.from_numpy(x_u8).permute(0, 1, 4, 2, 3).contiguous()  # [N, B, C, H, W]
    ys = torch.from_numpy(y.astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss()

    def augment(xb):
        b = xb.shape[0]
        padded = torch.nn.functional.pad(xb, (4, 4, 4, 4))
        i, j = np.random.randint(0, 9, 2)
        out = padded[:, :, i:i + 32, j:j + 32]
        flip = torch.rand(b) < 0.5
        out = torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)
        return (out.float() / 255 - mean) / std

    def run():
        for a in range(args.agents):
            xb = augment(xs[a])
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            opts[a].zero_grad(set_to_none=True)
            loss = loss_fn(models[a](xb), ys[a])
            loss.backward()
            opts[a].step()
    return run


def jax_runner(args, x_u8, y):
    import jax
    import jax.numpy as jnp

    from dimat_jax import agents
    from dimat_jax.data.pipeline import Preprocess
    from dimat_jax.models import build_model
    from dimat_jax.optim import make_optimizer
    model = build_model("resnet20", 10, args.width, args.conv_filter_grad)
    tx = make_optimizer("adam", 1e-3)
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    n, b = args.agents, args.batch
    x_all = jnp.asarray(x_u8.reshape((n * b,) + x_u8.shape[2:]))
    y_all = jnp.asarray(y.reshape(-1).astype(np.int32))
    idx = jnp.arange(n * b, dtype=jnp.int32).reshape(n, b)
    step = agents.make_train_step(model, tx, pre, args.strategy)
    box = [agents.init_state(model, tx, (32, 32, 3), n, 0)]

    def run():
        box[0], m = step(box[0], x_all, y_all, idx, jax.random.PRNGKey(0))
        jax.block_until_ready(m)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--conv-filter-grad", default="auto", help="auto | xla | taps (dimat_jax/models/conv.py)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--strategy", default="auto", help="JAX agent strategy")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import jax
    import torch
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.agents, args.batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, (args.agents, args.batch))
    runners = {"jax": jax_runner(args, x, y), "torch": torch_runner(args, x, y, False),
               "torch channels_last": torch_runner(args, x, y, True)}
    for r in runners.values():  # warm-up (JAX: compile)
        r()
    times = {k: [] for k in runners}
    for _ in range(args.reps):
        for k, r in runners.items():
            t = time.perf_counter()
            r()
            times[k].append(time.perf_counter() - t)
    images = args.agents * args.batch
    med = {k: statistics.median(v) for k, v in times.items()}
    from dimat_jax.agents import resolve_strategy
    from dimat_jax.report import table
    from dimat_jax.models.conv import resolve_filter_grad
    from dimat_jax.runtime import malloc_in_use
    rows = [[k, f"{med[k]:.3f}", f"{images / med[k]:.0f}", f"{med[k] / med['jax']:.2f}"] for k in runners]
    print(f"ResNet-20 w={args.width:g}, {args.agents} agents x batch {args.batch}, Adam; JAX {jax.__version__} "
          f"({jax.default_backend()}, strategy {resolve_strategy(args.strategy)}, conv filter grad "
          f"{resolve_filter_grad(args.conv_filter_grad)}), PyTorch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.machine()}, malloc {malloc_in_use()}; "
          f"median of {args.reps} alternating reps")
    print(table(rows, ["implementation", "s/step", "images/s", "time vs JAX"]))
    print(f"JAX / PyTorch eager throughput: {med['torch'] / med['jax']:.2f}x (NCHW), "
          f"{med['torch channels_last'] / med['jax']:.2f}x (channels_last)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": vars(args), "malloc": malloc_in_use(),
                       "conv_filter_grad": resolve_filter_grad(args.conv_filter_grad), "median_s": med, "all_s": times}, f, indent=2)


if __name__ == "__main__":
    main()
