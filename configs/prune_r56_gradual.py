"""Gradual pruning while training a CIFAR-10 ResNet-56 (w=16) from scratch: the
polynomial ramp of Zhu & Gupta (2017), one event per epoch from epoch 10 to 60, to 25% of
the MACs with round_to=8 (fast kernels), then training goes on to 200 epochs on the
materialised network.

Command:
    python -m thinjax.main --config=configs/prune_r56_gradual.py --workdir=runs/prune_r56_gr \
        --config.data.name=$HOME/data/cifar10-jpeg
Expected: compare with configs/thin_cifar.py:resnet56,8,cifar10 trained for
the same 200 epochs (the study's claim: the thin network is at least as good).
Cost: 200 x 390 steps, most at 25% MACs: ~25 min on one H100.
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet56", 16, "cifar10", 10)
    c.train.epochs = 200
    c.prune.schedule = "gradual"
    c.prune.start_epoch, c.prune.end_epoch, c.prune.every_epochs = 10.0, 60.0, 1.0
    c.prune.criterion, c.prune.allocation = "l2", "global"
    c.prune.target_kind, c.prune.target = "macs_fraction", 0.25
    c.prune.round_to = 8
    return c
