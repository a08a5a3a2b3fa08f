"""Import and evaluate: the release's CIFAR-10 ResNet-20 w=4 on the bundled CIFAR-10 sample.

Command:
    python -m thinjax.main --config=configs/eval_release.py --workdir=/tmp/thinjax-eval
Expected: ThinResNet-20 w=4, 17,534 params, 2.63 M MACs; the imported release checkpoint
scores 75.4% top-1 on the sample's 1,000 test images (75.76% on the full JPEG test split,
as in PyTorch). Cost: about 10 s on a 2-core CPU, no network.
"""

import os

from thinjax.config import base_config


def get_config():
    import thinjax.data.sources as sources
    c = base_config()
    c.mode = "evaluate"
    c.model.name, c.model.width = "resnet20", 4
    c.data.name = "sample:cifar10"
    c.data.eval_batch_size = 250
    c.init_from = os.path.join(sources.ASSETS, "resnet20_width4_cifar10_ema.safetensors")
    return c
