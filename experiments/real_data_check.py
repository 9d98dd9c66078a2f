"""The first-merge signature of activation matching, on real images: a check anyone can run.

  python experiments/real_data_check.py --data_path /usr/share/datasets/fashion-mnist

Five ResNet-20 agents (width 1) on Fashion-MNIST (--train / --test images, class-stratified, padded to
32x32x3), each pre-trained alone from its own initialisation, are merged once over a ring by DIMAT
(activation matching) and by WA (plain averaging, BatchNorm re-estimated), from the same pre-trained
agents, IID and non-IID (class c to agent c mod 5). It passes when

- IID: DIMAT keeps >= 50 % of the pre-merge accuracy, while WA falls to <= chance + 5 points;
- non-IID: DIMAT >= WA right after the merge,

and exits 1 otherwise (2 on bad arguments or data). Prints a table; --out writes it as JSON.
About 15 minutes at the defaults on 2 CPU cores (pre-training dominates; --train 6000 halves it).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHANCE = 0.10
IID_KEEP, WA_MARGIN = 0.50, 0.05


def first_merge(algorithm: str, partition: str, args, cache: str) -> dict:
    """Pre-merge and post-merge mean test accuracy of one run (pre-trained agents cached in ``cache``)."""
    from dimat_jax import report, train
    from dimat_jax.config import load_config_file
    config = load_config_file(ROOT / "configs" / "real" / "fashion_mnist.py", {
        "data_path": args.data_path, "data.train_subset": args.train, "data.test_subset": args.test,
        "pretrain_epochs": args.epochs, "algorithm": algorithm, "partition": partition, "topology": "ring",
        "merge_data": args.merge_data, "rounds": 1, "seed": args.seed, "pretrain.cache_dir": cache,
        "log.progress": False, "log.plot": False, "checkpoint.every_rounds": 0})
    with tempfile.TemporaryDirectory() as work:
        train.run(config, pathlib.Path(work) / "run", log=lambda s: None)
        recs = report.read_metrics(pathlib.Path(work) / "run")
    return {"pre": recs[0]["mean_test_accuracy"], "merged": recs[-1]["mean_test_accuracy"]}


def verdicts(results: dict) -> list[tuple[str, bool]]:
    """(description, passed) of every criterion, from {partition: {algorithm: {'pre', 'merged'}}}."""
    iid, non = results["iid"], results["noniid"]
    return [
        (f"IID: DIMAT keeps >= {IID_KEEP:.0%} of the pre-merge accuracy "
         f"({100 * iid['dimat']['merged']:.1f} vs {100 * iid['dimat']['pre']:.1f} %)",
         iid["dimat"]["merged"] >= IID_KEEP * iid["dimat"]["pre"]),
        (f"IID: WA falls to <= chance + {100 * WA_MARGIN:.0f} points ({100 * iid['wa']['merged']:.1f} %)",
         iid["wa"]["merged"] <= CHANCE + WA_MARGIN),
        (f"non-IID: DIMAT >= WA after the merge ({100 * non['dimat']['merged']:.1f} vs "
         f"{100 * non['wa']['merged']:.1f} %)", non["dimat"]["merged"] >= non["wa"]["merged"]),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default="/usr/share/datasets/fashion-mnist",
                   help="folder with the four Fashion-MNIST IDX files (default: where Debian's package puts them)")
    p.add_argument("--train", type=int, default=12000, help="training images (class-stratified subset)")
    p.add_argument("--test", type=int, default=2000, help="test images")
    p.add_argument("--epochs", type=int, default=3, help="pre-training epochs")
    p.add_argument("--merge_data", default="global", choices=("global", "local"),
                   help="data of the merge passes (global: the reference's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results and verdicts as JSON here")
    args = p.parse_args(argv)
    from dimat_jax.config import ConfigError
    from dimat_jax.data import DataError
    results = {}
    try:
        with tempfile.TemporaryDirectory() as cache:
            for partition in ("iid", "noniid"):
                results[partition] = {a: first_merge(a, partition, args, cache) for a in ("dimat", "wa")}
                for a, r in results[partition].items():
                    print(f"{partition:>7} {a:>6}: pre-merge {100 * r['pre']:5.1f} %, after the first merge "
                          f"{100 * r['merged']:5.1f} %", flush=True)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checks = verdicts(results)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"settings": vars(args), "results": results,
                                                      "checks": [{"check": t, "passed": ok} for t, ok in checks]},
                                                     indent=2) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
