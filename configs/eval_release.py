"""Offline default: the release's CIFAR-10 ResNet-20 w=4 on the bundled CIFAR-10 sample.

Command:
    python -m thinjax.main --config=configs/default.py --workdir=/tmp/thinjax-default
Expected: ThinResNet-20 w=4, 17,534 params, 2.63 M MACs; the imported release checkpoint
scores 75.4% top-1 on the sample's 1,000 test images (75.5% on the full JPEG test split).
Cost: about 15 s on a 2-core CPU, no network.
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    import thinjax.data.sources as sources
    c = ml_collections.ConfigDict()
    c.mode = "evaluate"  # evaluate `init_from` (imported or thinjax checkpoint) on data
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet20"          # see thinjax.plan.ARCHS
    c.model.width = 4
    c.model.base_width = ml_collections.FieldReference(None, field_type=int)
    c.model.num_classes = 10
    c.model.dtype = "float32"          # compute dtype; parameters stay float32
    c.model.zero_init_last_bn = False
    c.model.bn_momentum = 0.9
    c.model.bn_epsilon = 1e-5
    c.model.plan_file = ""             # a plan JSON overrides name/width

    c.data = ml_collections.ConfigDict()
    c.data.name = "sample:cifar10"     # TFDS name, image folder or sample:cifar10
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.eval_split = "test"
    c.data.eval_batch_size = 250
    c.data.image_size = 32
    c.data.eval_resize = 0             # >0: resize shorter side then centre-crop image_size

    c.init_from = os.path.join(sources.ASSETS, "resnet20_width4_cifar10_ema.safetensors")
    return c
