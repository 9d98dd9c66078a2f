"""Quick start: DIMAT on the embedded digits in under a minute on a laptop CPU.

5 agents, each with its own fifth of the data (IID) and its own initialisation, pre-trained alone
for 10 epochs, then 4 rounds of merge (activation matching with the two ring neighbours) + 2 local
epochs. Pre-trained agents are cached in runs/pretrained, so the same agents can be compared:

  python -m dimat_jax.main --config configs/quickstart.py                          # DIMAT
  python -m dimat_jax.main --config configs/quickstart.py --config.algorithm=wa    # plain averaging
  python -m dimat_jax.main --config configs/quickstart.py --config.algorithm=local # no communication
"""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "digits"
    c.model = "cnn"
    c.width = 1.0
    c.num_agents = 5
    c.partition = "iid"
    c.topology = "ring"
    c.algorithm = "dimat"
    c.pretrain_epochs = 10
    c.rounds = 4
    c.local_epochs = 2
    c.batch_size = 32
    c.pretrain.cache_dir = "runs/pretrained"
    return c
