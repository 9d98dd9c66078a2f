"""Flax models. Each takes normalised NHWC images and ``train`` (BatchNorm mode) and returns logits."""
from __future__ import annotations

import flax.linen as nn

from dimat_jax.models.cnn import SmallCNN
from dimat_jax.models.resnet import ResNet20
from dimat_jax.models.vgg import VGG16

from dimat_jax.choices import MODELS, VGG_MIN_INPUT_SIZE

__all__ = ["MODELS", "ModelError", "ResNet20", "SmallCNN", "VGG16", "build_model", "check_input_shape",
           "permutation_spec"]


class ModelError(ValueError):
    """A model cannot be built for these inputs; the message says why."""


def build_model(name: str, num_classes: int, width: float = 1.0, conv_filter_grad: str = "xla") -> nn.Module:
    """Model ``name`` ('cnn' | 'resnet20' | 'vgg16') with ``num_classes`` outputs and width multiplier;
    ``conv_filter_grad`` ('auto' | 'xla' | 'taps', models/conv.py) only changes how training computes
    convolution filter gradients, never the function or the parameters."""
    if width <= 0:
        raise ModelError(f"width must be > 0, got {width}")
    classes = {"cnn": SmallCNN, "resnet20": ResNet20, "vgg16": VGG16}
    if name not in classes:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    from dimat_jax.models.conv import resolve_filter_grad
    return classes[name](num_classes=num_classes, width=float(width),
                         conv_filter_grad=resolve_filter_grad(conv_filter_grad))


def check_input_shape(name: str, image_shape) -> None:
    """Raise :class:`ModelError` when model ``name`` cannot take images of ``image_shape`` (H, W, C)."""
    h, w = image_shape[:2]
    if name == "vgg16" and min(h, w) < VGG_MIN_INPUT_SIZE:
        raise ModelError(f"model 'vgg16' has 5 max-pools and needs images of at least "
                         f"{VGG_MIN_INPUT_SIZE}x{VGG_MIN_INPUT_SIZE}; this dataset's are {h}x{w}. "
                         "Use model 'cnn' or 'resnet20'.")


def permutation_spec(name: str, variables):
    """The :class:`~dimat_jax.merging.spec.PermutationSpec` of model ``name`` for ``variables``
    (one model's ``{'params', 'batch_stats'}``, arrays or shapes; not stacked)."""
    from dimat_jax.models import cnn, resnet, vgg
    builders = {"cnn": cnn.permutation_spec, "resnet20": resnet.permutation_spec, "vgg16": vgg.permutation_spec}
    if name not in builders:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return builders[name](variables)
