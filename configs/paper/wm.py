"""Reference setting for 'wm' (see dimat_jax/presets.py). GPU/TPU-sized.

  python -m dimat_jax.main --config configs/paper/wm.py:cifar100-resnet20x8-ring-iid-5
  (setting: <cifar100|cifar10|tiny_imagenet>-<resnet20x8|vgg16>-<ring|fc>-<iid|noniid>-<5|10|20>)
"""
from dimat_jax.presets import paper


def get_config(setting: str = "cifar100-resnet20x8-ring-iid-5"):
    return paper("wm", setting)
