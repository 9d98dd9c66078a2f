"""Full-size paper sweep (scale): the reference settings of every algorithm (dimat_jax/presets.py) on
CIFAR-100 with ResNet-20x8. GPU/TPU-sized: 100 pre-training epochs (shared by all cells of a seed
and setting) plus 100 rounds of 2 epochs per cell.

  python -m dimat_jax.sweep --sweep configs/sweeps/paper_scale.py --workdir runs/sweeps/paper_scale
  python experiments/figures.py --workdir runs/sweeps/paper_scale --out experiments/results/paper_scale
"""
from dimat_jax.presets import paper


def get_config():
    return paper("dimat")


def get_grid():
    return {"num_agents": [5, 10, 20], "topology": ["ring", "fc"], "algorithm": ["dimat", "sgp", "cdsgd"],
            "seed": [0, 1, 2]}


def configure(config, cell):
    """Each algorithm with its own reference preset for this cell's setting (CIFAR-100, IID)."""
    c = paper(cell["algorithm"], f"cifar100-resnet20x8-{cell['topology']}-iid-{cell['num_agents']}")
    c.seed = cell["seed"]
    return c
