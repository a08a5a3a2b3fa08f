"""How images become network inputs, everywhere in thinjax (the tf.data pipelines, the
export checks): RGB scaled to [0, 1], then normalised per channel with these ImageNet
statistics. The release (and torchvision) normalise CIFAR with them too.

A leaf module: it imports nothing, so any layer can use it without loading TensorFlow.
"""

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
