"""Upper bound: one ResNet-20 (width 0.5) on all of the embedded digits, same epoch budget as local_iid."""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "digits"
    c.model = "resnet20"
    c.width = 0.5
    c.algorithm = "centralized"
    c.pretrain_epochs = 10
    c.rounds = 5
    c.local_epochs = 2
    return c
