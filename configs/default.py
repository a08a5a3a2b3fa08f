"""Offline default (the README quick start): a short training run on the bundled sample.

Command:
    python -m thinjax.main --config=configs/default.py --workdir=runs/default
Expected: ThinResNet-20 w=8 (68,786 params, 10.31 M MACs) trained on the 2,500-image
CIFAR-10 sample for 10 epochs (190 steps) reaches roughly 40% top-1 on the sample's 1,000
test images: a check of the whole system, not a result. Cost: about 1-2 minutes on a
2-core CPU, no network. Rerunning the command resumes (here: finds the run finished).
"""

from thinjax.config import base_config


def get_config():
    c = base_config()
    c.model.name, c.model.width = "resnet20", 8
    c.data.name = "sample:cifar10"
    c.data.trivial_augment = False
    c.data.random_erasing = 0.0
    c.data.eval_batch_size = 250
    c.train.batch_size = 128
    c.train.epochs = 10
    c.train.mixup_alpha = c.train.cutmix_alpha = 0.0
    c.train.eval_every_epochs = 5
    c.train.log_every = 19
    c.train.checkpoint_every = 95
    c.optim.lr, c.optim.lr_batch = 0.2, 128
    c.optim.nesterov = True
    c.optim.warmup_epochs = 1
    c.optim.weight_decay = 5e-4
    c.ema.decay, c.ema.every, c.ema.adjust = 0.95, 1, False
    return c
