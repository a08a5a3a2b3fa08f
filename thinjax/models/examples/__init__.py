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
from thinjax.models.examples.common import make_divisible, param_count, scaled
from thinjax.models.examples.convnext import ConvNeXt
from thinjax.models.examples.mobilenet_v2 import MobileNetV2
from thinjax.models.examples.unet import UNet
from thinjax.models.examples.vit import ViT

__all__ = ["ConvNeXt", "MobileNetV2", "UNet", "ViT", "make_divisible", "param_count",
           "scaled"]
