"""Quick start: 5 agents on the embedded digits, non-IID (2 classes each), small CNN, local training.

Runs on a 2-core CPU in about a minute: python -m dimat_jax.main --config configs/quickstart.py
"""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "digits"
    c.model = "cnn"
    c.width = 0.5
    c.num_agents = 5
    c.partition = "noniid"
    c.algorithm = "local"
    c.pretrain_epochs = 5
    c.rounds = 5
    c.local_epochs = 2
    c.batch_size = 32
    return c
