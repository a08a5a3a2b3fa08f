"""CIFAR-10 ResNet-18 with the CIFAR stem at width w (64 = the usual CIFAR ResNet-18).

Command (data: TFDS `cifar10`, or an image folder such as the unzipped
../shared/data/cifar10-jpeg.zip for CIFAR-10):
    python -m thinjax.main --config=configs/thin_r18_cifar10.py --workdir=runs/thin_r18_cifar10 \
        [--config.data.name=$HOME/data/cifar10-jpeg] [--config.model.width=W]
The study's CIFAR recipe: SGD momentum 0.9, lr 0.5 at batch 1024 (0.0625 at 128), 5-epoch
warmup then cosine, weight decay 2e-5 on kernels, label smoothing 0.1, mixup 0.2 / cutmix
1.0, flip + 4-px crop + TrivialAugmentWide + random erasing 0.1, EMA; batch 128,
600 epochs.
Expected: ~96% top-1 at w=64 on the original CIFAR-10 (the study's figure for this recipe).
Cost: 600 x 390 steps; 0.56 GMACs x 3 per image at w=64: ~2 h on one H100 (bf16).
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet18_cifar", 64, "cifar10", 10)
    c.model.dtype = "bfloat16"
    return c
