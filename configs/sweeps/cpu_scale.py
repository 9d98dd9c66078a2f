"""CPU scalability and communication sweep (~5 min): 2, 4 and 8 CNN agents on the embedded digits,
IID, ring and fully connected, DIMAT vs SGP vs local, 5 rounds, 1 seed.

  python -m dimat_jax.sweep --sweep configs/sweeps/cpu_scale.py --workdir runs/sweeps/cpu_scale
  python experiments/figures.py --workdir runs/sweeps/cpu_scale --out experiments/results/cpu_scale
"""
import pathlib

from dimat_jax.config import load_config_file


def get_config():
    c = load_config_file(pathlib.Path(__file__).parents[1] / "cpu" / "dimat.py")
    c.rounds = 5
    c.log.progress = False
    c.log.plot = False
    c.pretrain.cache_dir = ""
    return c


def get_grid():
    return {"num_agents": [2, 4, 8], "topology": ["ring", "fc"], "algorithm": ["dimat", "sgp", "local"],
            "seed": [0]}
