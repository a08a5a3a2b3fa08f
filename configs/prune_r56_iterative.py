"""Iterative pruning of a trained CIFAR-10 ResNet-56 (w=16): 4 events of equal size, one
every 5 epochs (Taylor importance, global ranking) down to half the MACs, then fine-tune.

Command:
    python -m thinjax.main --config=configs/prune_r56_iterative.py --workdir=runs/prune_r56_it \
        --config.init_from=../shared/checkpoints/thinresnet-release/resnet56_width16_cifar10_ema.pt \
        --config.data.name=$HOME/data/cifar10-jpeg
Events at epochs 0, 5, 10, 15 reach 1/4, 2/4, 3/4 and all of the way from 125.75 M to
62.9 M MACs; each is logged with its params and MACs (metrics.jsonl: prune_params,
prune_macs). After the last event the network is materialised; 40 epochs in all.
Expected: at 50% MACs the release's regular ThinResNet-56 w=11 would be the equal-cost
comparison (issue: train it with configs/thin_cifar.py:resnet56,11,cifar10).
Cost: ~15 min on one H100, ~10 h on a 2-core CPU.
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet56", 16, "cifar10", 10)
    c.train.epochs = 40
    c.train.eval_every_epochs = 5
    c.optim.lr, c.optim.warmup_epochs = 0.1, 1.0
    c.prune.schedule = "iterative"
    c.prune.num_events, c.prune.every_epochs, c.prune.start_epoch = 4, 5.0, 0.0
    c.prune.criterion, c.prune.allocation = "taylor", "global"
    c.prune.target_kind, c.prune.target = "macs_fraction", 0.5
    return c
