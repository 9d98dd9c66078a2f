"""Beyond the paper, on real images: DIMAT in a shared basis, with adaptive re-matching, with
compressed messages and with partial merges, next to plain DIMAT, SGP and CGA (docs/algorithm.md §8).

Fashion-MNIST 6k / 1k images padded to 32x32x3, ResNet-20 w=1, 5 agents, 3 pre-training epochs
(the same agents as configs/sweeps/fashion_main.py), then 4 rounds of 1 local epoch; local merge data;
IID, non-IID (class c to agent c mod 5) and Dirichlet(0.3); ring (and fully connected for the basis
variants on IID / non-IID); 2 seeds. Resumable:

  python -m dimat_jax.sweep --sweep configs/sweeps/fashion_beyond.py --workdir runs/sweeps/fashion_beyond
  python experiments/beyond_table.py --workdir runs/sweeps/fashion_beyond --out experiments/results/fashion_beyond
"""
import pathlib

from dimat_jax.config import load_config_file

SEEDS = (0, 1)
VARIANT_KEYS = ("algorithm", "merge.basis", "merge.rematch", "merge.compression", "merge.edge_fraction")
DIMAT = ("dimat", "own", "always", "none", 1.0)
BASIS = [DIMAT, ("dimat", "shared", "always", "none", 1.0), ("dimat", "shared", "adaptive", "none", 1.0)]
MESSAGES = [("dimat", "own", "always", c, 1.0) for c in ("bf16", "int8", "topk")] + [("dimat", "own", "always", "none", 0.5)]


def get_config():
    c = load_config_file(pathlib.Path(__file__).parents[1] / "real" / "fashion_mnist.py")
    c.data.train_subset, c.data.test_subset = 6000, 1000
    c.data.alpha = 0.3
    c.rounds, c.local_epochs = 4, 1
    c.merge_data = "local"
    c.merge.num_examples, c.merge.num_batches, c.merge.bn_before = 0, 0, True  # full passes over each shard
    c.log.progress = False
    c.log.plot = False
    c.pretrain.cache_dir = ""  # the sweep shares <workdir>/pretrained
    return c


def get_grid():
    grids = []
    for seed in SEEDS:
        grids.append({"seed": [seed], "partition": ["iid", "noniid", "dirichlet"], "topology": ["ring"],
                      VARIANT_KEYS: BASIS})
        grids.append({"seed": [seed], "partition": ["iid", "noniid"], "topology": ["ring"], VARIANT_KEYS: MESSAGES})
        grids.append({"seed": [seed], "partition": ["iid", "noniid", "dirichlet"], "topology": ["ring"],
                      "algorithm": ["sgp", "cga"]})
        grids.append({"seed": [seed], "partition": ["iid", "noniid"], "topology": ["fc"], VARIANT_KEYS: BASIS})
    return grids
