"""The reference pre-training at full size: 5 agents, CIFAR-100 (TFDS, prepared offline), IID,
ResNet-20x8, Adam 1e-3, batch 100, 100 epochs, then 10 more local rounds of 2 epochs. GPU/TPU-sized."""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "cifar100"
    c.model = "resnet20"
    c.width = 8.0
    c.num_agents = 5
    c.partition = "iid"
    c.algorithm = "local"
    c.batch_size = 100
    c.pretrain_epochs = 100
    c.rounds = 10
    c.local_epochs = 2
    c.optimizer = "adam"
    c.lr = 1e-3
    c.data.eval_batch_size = 1000
    return c
