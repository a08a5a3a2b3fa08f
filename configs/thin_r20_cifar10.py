"""CIFAR-10 ThinResNet-20 at width w (16 = the classic ResNet-20).

Command (data: TFDS `cifar10`, or an image folder such as the unzipped
../shared/data/cifar10-jpeg.zip for CIFAR-10):
    python -m thinjax.main --config=configs/thin_r20_cifar10.py --workdir=runs/thin_r20_cifar10 \
        [--config.data.name=$HOME/data/cifar10-jpeg] [--config.model.width=W]
The study's CIFAR recipe: SGD momentum 0.9, lr 0.5 at batch 1024 (0.0625 at 128), 5-epoch
warmup then cosine, weight decay 2e-5 on kernels, label smoothing 0.1, mixup 0.2 / cutmix
1.0, flip + 4-px crop + TrivialAugmentWide + random erasing 0.1, EMA; batch 128,
600 epochs.
Expected (release, EMA, original CIFAR-10): w=16 94.65%; on the JPEG test split the release
scores 75.76% / 81.67% / 87.20% at w=4 / 8 / 16. Cost: 600 x 390 steps; ~40.8 M MACs x 3
per image at w=16: about 20 min on one H100, ~13 h on a 2-core CPU.
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet20", 16, "cifar10", 10)
    return c
