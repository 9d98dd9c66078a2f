"""DIMAT on real images, sized for a CPU: Fashion-MNIST in the CIFAR layout of the reference's models.

12,000 training / 2,000 test images (seeded, class-stratified), zero-padded to 32x32 and repeated to 3
channels; ResNet-20 (width 1), 5 agents on a ring, IID; batch 100; every agent pre-trained alone for
3 epochs (Adam 1e-3), then 3 rounds of merge + 1 local epoch. The images come from the four standard
IDX files — on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them where data_path points:

  python -m dimat_jax.main --config configs/real/fashion_mnist.py
  python -m dimat_jax.main --config configs/real/fashion_mnist.py --config.algorithm=wa   # same agents

Any algorithm, partition or topology: --config.algorithm=... --config.partition=noniid --config.topology=fc
(pre-trained agents are cached in runs/pretrained and shared). About 5 minutes per DIMAT run on 2 cores.
"""
from dimat_jax.config import get_default_config


def get_config():
    c = get_default_config()
    c.dataset = "fashion_mnist"
    c.data_path = "/usr/share/datasets/fashion-mnist"
    c.data.train_subset = 12000
    c.data.test_subset = 2000
    c.data.pad_to = 32
    c.data.channels = 3
    c.model = "resnet20"
    c.width = 1.0
    c.num_agents = 5
    c.partition = "iid"
    c.topology = "ring"
    c.algorithm = "dimat"
    c.batch_size = 100
    c.pretrain_epochs = 3
    c.rounds = 3
    c.local_epochs = 1
    c.optimizer = "adam"
    c.lr = 1e-3
    c.merge.batch_size = 100
    c.data.eval_batch_size = 500
    c.pretrain.cache_dir = "runs/pretrained"
    return c
