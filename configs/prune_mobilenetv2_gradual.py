"""Gradual pruning of an example network while it trains: MobileNetV2 width 1.0 on CIFAR-10
(the recipe of configs/quick_cifar10.py), pruned on the channel groups its trace finds
(thinjax.trace) to the MACs of MobileNetV2 width 0.5, so that it can be set against
configs/quick_mobilenetv2.py (the thin network of the same cost): the ThinResNet question
asked of MobileNetV2.

Command:
    python -m thinjax.main --config=configs/prune_mobilenetv2_gradual.py \
        --workdir=runs/prune_mnv2_gr --config.data.name=$HOME/data/cifar10-jpeg
Expected: top-1 not measured yet; the run logs one pruning event per epoch from epoch 1 to
6 (l1, global, round_to 8), then continues on the materialised network at 27,969,024 MACs
(within 1%), the cost of width 0.5 (700,490 params at width 0.5; the pruned network's own
count is in results.json).
Cost: 13 epochs x 390 steps at batch 128; the first 6 epochs at up to 87,976,448 MACs
(width 1.0, 2,236,682 params), the rest at a third of that.
"""

from thinjax.config import short_cpu_recipe

WIDTH_05_MACS = 27_969_024   # MobileNetV2(width=0.5) at 32x32, CIFAR strides


def get_config():
    c = short_cpu_recipe("cifar10", epochs=13)
    c.model.example, c.model.width_mult = "mobilenetv2", 1.0
    c.train.eval_every_epochs = 1
    c.train.log_every = 50
    c.train.checkpoint_every = 390
    c.prune.schedule = "gradual"
    c.prune.start_epoch, c.prune.end_epoch, c.prune.every_epochs = 1.0, 6.0, 1.0
    c.prune.criterion, c.prune.allocation = "l1", "global"
    c.prune.target_kind, c.prune.target = "macs", float(WIDTH_05_MACS)
    c.prune.round_to = 8
    return c
