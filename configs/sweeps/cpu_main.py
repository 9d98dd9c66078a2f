"""CPU version of the paper's main comparison (~8 min on 2 cores): DIMAT vs WA and the consensus
baselines on the embedded digits, 5 CNN agents, ring, IID and non-IID, 2 seeds, 5 rounds.

  python -m dimat_jax.sweep --sweep configs/sweeps/cpu_main.py --workdir runs/sweeps/cpu_main
  python experiments/figures.py --workdir runs/sweeps/cpu_main --out experiments/results/cpu_main
"""
import pathlib

from dimat_jax.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).parents[1] / "cpu" / "dimat.py")
    c.rounds = 5
    c.log.progress = False
    c.log.plot = False
    c.pretrain.cache_dir = ""  # the sweep shares <workdir>/pretrained
    return c


def get_grid():
    return {"partition": ["iid", "noniid"],
            "algorithm": ["dimat", "wa", "cdsgd", "sgp", "cga", "local"],
            "seed": [0, 1]}
