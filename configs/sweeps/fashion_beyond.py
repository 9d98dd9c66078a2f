"""Beyond the paper, on real images: DIMAT in a shared basis, with adaptive re-matching and with
top-k compressed messages (docs/algorithm.md §8), in exactly the setting of
configs/sweeps/fashion_main.py (Fashion-MNIST 6k / 1k images padded to 32x32x3, ResNet-20 w=1,
5 agents, the same pre-trained agents, 3 rounds of 1 local epoch, local merge data, ring, seed 0),
so that sweep's DIMAT, WA, SGP, CGA and local cells are the baselines. It pre-trains the same
agents (same seeds) in its own cache; link runs/sweeps/fashion_beyond/pretrained to the main sweep's
to skip that. About 45 minutes on 2 CPU cores; resumable:

  python -m dimat_jax.sweep --sweep configs/sweeps/fashion_beyond.py --workdir runs/sweeps/fashion_beyond
  python experiments/beyond_table.py --workdir runs/sweeps/fashion_beyond runs/sweeps/fashion_main \
      --out experiments/results/fashion_beyond

Top-k messages run on the non-IID split only; adaptive re-matching also runs with a looser drift
threshold (0.1) on IID. SEEDS, TOPOLOGIES, BASIS and MESSAGES widen it (e.g.
the fully connected graph, bf16 / int8 messages).
"""
import pathlib

from dimat_jax.config import load_config_file

SEEDS = (0,)
TOPOLOGIES = ("ring",)
VARIANT_KEYS = ("algorithm", "merge_data", "merge.basis", "merge.rematch", "merge.compression")
BASIS = [("dimat", "local", "shared", "always", "none"), ("dimat", "local", "shared", "adaptive", "none")]
MESSAGES = [("dimat", "local", "own", "always", "topk")]


def get_config():
    return load_config_file(pathlib.Path(__file__).parent / "fashion_main.py")


def get_grid():
    grids = []
    for seed in SEEDS:
        grids.append({"seed": [seed], "partition": ["iid"], "topology": list(TOPOLOGIES), VARIANT_KEYS: BASIS})
        grids.append({"seed": [seed], "partition": ["noniid"], "topology": list(TOPOLOGIES),
                      VARIANT_KEYS: BASIS + MESSAGES})
        # a looser drift threshold: how much accuracy does skipping the re-matching cost?
        grids.append({"seed": [seed], "partition": ["iid"], "topology": list(TOPOLOGIES), VARIANT_KEYS: BASIS[1:],
                      "merge.rematch_threshold": [0.1]})
    return grids
