"""DIMAT on the embedded digits, CPU-sized: 5 agents, ring, IID, CNN (width 1), each agent
pre-trained alone from its own initialisation, then 10 rounds of merge + 2 local epochs.

The same file runs every algorithm on the same pre-trained agents (the cache under
runs/pretrained is shared): --config.algorithm=wa|wm|cdsgd|cdmsgd|sgp|sgp_pushsum|cga|swarmsgd|local|centralized
Baselines use the reference's hyper-parameters (baseline.*: SGD lr 0.01, momentum 0.9, x0.981/epoch).
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
    c.pretrain_epochs = 20
    c.rounds = 10
    c.local_epochs = 2
    c.batch_size = 32
    c.optimizer = "adam"
    c.lr = 1e-3
    c.pretrain.cache_dir = "runs/pretrained"
    c.merge.batch_size = 100
    return c
