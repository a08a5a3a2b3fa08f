"""CIFAR-100 ThinResNet-56 at width w.

Command (data: TFDS `cifar100`, or an image folder such as the unzipped
../shared/data/cifar10-jpeg.zip for CIFAR-10):
    python -m thinjax.main --config=configs/thin_r56_cifar100.py --workdir=runs/thin_r56_cifar100 \
        [--config.data.name=$HOME/data/cifar10-jpeg] [--config.model.width=W]
The study's CIFAR recipe: SGD momentum 0.9, lr 0.5 at batch 1024 (0.0625 at 128), 5-epoch
warmup then cosine, weight decay 2e-5 on kernels, label smoothing 0.1, mixup 0.2 / cutmix
1.0, flip + 4-px crop + TrivialAugmentWide + random erasing 0.1, EMA; batch 128,
600 epochs.
Expected: roughly 75% top-1 at w=16. Cost: as thin_r56_cifar10.
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet56", 16, "cifar100", 100)
    return c
