"""Flax linen models built from channel plans."""
from thinjax.models.resnet import ResNet, build_model

__all__ = ["ResNet", "build_model"]
