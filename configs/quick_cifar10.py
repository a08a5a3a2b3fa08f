"""Quick CPU recipe: ThinResNet-20 w=8 on CIFAR-10 in about 30 minutes on 2 CPU cores.

Command (data: the unzipped ../shared/data/cifar10-jpeg.zip, or TFDS `cifar10`):
    python -m thinjax.main --config=configs/quick_cifar10.py --workdir=runs/quick \
        --config.data.name=$HOME/data/cifar10-jpeg
Expected: >= 78% top-1 (EMA) on the JPEG test split after 13 epochs.
Cost: 13 epochs x 390 steps at batch 128, about 30 min at ~370 img/s on a 2-core CPU.
A short schedule wants little regularisation: flip + 4-px crop, label smoothing 0.1, no
mixup/cutmix, no TrivialAugment, no random erasing; SGD (Nesterov) with a higher weight
decay; one warmup epoch then cosine to 0.
"""

from thinjax.config import base_config


def get_config():
    c = base_config()
    c.model.name, c.model.width = "resnet20", 8
    c.data.name = "cifar10"
    c.data.trivial_augment = False
    c.data.random_erasing = 0.0
    c.train.batch_size = 128
    c.train.epochs = 13
    c.train.mixup_alpha = c.train.cutmix_alpha = 0.0
    c.train.label_smoothing = 0.1
    c.train.eval_every_epochs = 1
    c.train.log_every = 50
    c.train.checkpoint_every = 390
    c.optim.lr, c.optim.lr_batch = 0.2, 128
    c.optim.nesterov = True
    c.optim.warmup_epochs = 1
    c.optim.weight_decay = 5e-4
    c.ema.decay, c.ema.every, c.ema.adjust = 0.999, 1, False
    c.ema.warmup_copy = True
    return c
