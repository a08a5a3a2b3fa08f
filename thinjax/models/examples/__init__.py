"""Example networks written as a user would write them in Flax linen, to prove pruning
beyond thinjax's ResNets: MobileNetV2, a ConvNeXt, a U-Net and a small ViT, each with a
width multiplier ``width`` and CIFAR-sized defaults (10 classes, 32x32 inputs).

Each is ``module.init(key, x)`` / ``module.apply(variables, x, train=False)`` on NHWC
images and returns logits (the U-Net: per pixel). Parameter paths are readable and stable
(each module's docstring lists them). `thinjax.models.examples.torch_twins` holds PyTorch
twins of the three CNNs (``to_torch``) and `thinjax.models.examples.torch_pruning_oracle`
Torch-Pruning's channel groups in Flax terms; both need the ``torch`` extra (and
torch-pruning) and are imported by the tests alone.
"""
from thinjax.models.examples import convnext, vit
from thinjax.models.examples.common import (
    make_divisible,
    param_count,
    random_variables,
    scaled,
)
from thinjax.models.examples.convnext import ConvNeXt
from thinjax.models.examples.mobilenet_v2 import MobileNetV2
from thinjax.models.examples.unet import UNet
from thinjax.models.examples.vit import ViT

# modules with parameters of their own, every one sized from the module's input (ConvNeXt's
# layer scale ``gamma``; ViT's ``cls`` and ``pos``), so a narrower input rebuilds them with
# no field to change: thinjax.trace registers these classes (as ``register_layer(cls)``
# would) so that it prunes the channels they hold. They are listed here rather than
# registered here because thinjax.trace imports thinjax.models, not the other way round.
TRACED_LAYERS = (convnext.Block, vit.ViT)

__all__ = ["TRACED_LAYERS", "ConvNeXt", "MobileNetV2", "UNet", "ViT", "make_divisible",
           "param_count", "random_variables", "scaled"]
