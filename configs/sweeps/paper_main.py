"""Full-size paper sweep (main): the reference settings of every algorithm (dimat_jax/presets.py) on
CIFAR-100 with ResNet-20x8. GPU/TPU-sized: 100 pre-training epochs (shared by all cells of a seed
and setting) plus 100 rounds of 2 epochs per cell.

  python -m dimat_jax.sweep --sweep configs/sweeps/paper_main.py --workdir runs/sweeps/paper_main
  python experiments/figures.py --workdir runs/sweeps/paper_main --out experiments/results/paper_main
"""
from dimat_jax.presets import paper


def get_config():
    return paper("dimat")


def get_grid():
    return {"dataset": ["cifar100"], "topology": ["ring", "fc"], "partition": ["iid", "noniid"],
            "algorithm": ["dimat", "wa", "wm", "cdsgd", "cdmsgd", "sgp", "cga", "swarmsgd", "local"],
            "seed": [0, 1, 2]}


def configure(config, cell):
    """Each algorithm with its own reference preset for this cell's setting."""
    c = paper(cell["algorithm"], f"{cell['dataset']}-resnet20x8-{cell['topology']}-{cell['partition']}-5")
    c.seed = cell["seed"]
    return c
