"""5 agents on the embedded digits, IID, ResNet-20 (width 0.5), local training only (no communication)."""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "digits"
    c.model = "resnet20"
    c.width = 0.5
    c.num_agents = 5
    c.partition = "iid"
    c.algorithm = "local"
    c.pretrain_epochs = 10
    c.rounds = 5
    c.local_epochs = 2
    return c
