"""Soft filter pruning (He et al., IJCAI 2018) of a trained CIFAR-10 ResNet-56 (w=16) to
the MACs of w=8.

Command (the release's w=16 weights; any thinjax or PyTorch checkpoint of the plan works):
    python -m thinjax.main --config=configs/prune_r56_sfp.py --workdir=runs/sfp_r56 \\
        --config.init_from=../shared/checkpoints/thinresnet-release/resnet56_width16_cifar10_ema.pt \\
        --config.data.name=$HOME/data/cifar10-jpeg
Schedule ``soft``: at steps 0, 1, ..., 9 epochs the L2 filter norms (the paper's criterion,
ranked globally) pick the channels that the w=8 MAC target removes and their filters are
zeroed but stay trainable (they may grow back and be kept at the next event); at epoch 10
the last, hard, event keeps the masks and the network is materialised; fine-tuning goes on to
epoch 30. Recipe: thinjax.conversion.FINETUNE (SGD Nesterov, lr 0.04 at batch 128, cosine,
wd 5e-5, flip + crop, EMA 0.999).
Expected: the 30 epochs are not measured yet. Only a short version has been measured:
benchmarks/prune_methods_r56.py, 100 soft steps + 200 steps of batch 64, 2-core Intel Xeon,
2026-11-29. It collapsed (11.87% top-1; one-shot L1 with the same steps got 46.88%); see
docs/pruning.md, "Every method on the release's ResNet-56". Why it collapses on a trained
BatchNorm network (zeroed filters regrow to several times the kept norm and win the next L2
ranking) is measured by benchmarks/sfp_regrowth.py; see docs/pruning.md, "Why soft filter
pruning fails on a trained BatchNorm network".
Cost: 10 epochs on the 125.75 M-MAC dense network, then 20 on the 31.5 M-MAC one (about
2 x the MACs of a 30-epoch fine-tune of the pruned network); one scoring per event.
"""

from thinjax.config import base_config
from thinjax.conversion import FINETUNE
from thinjax.cost import count
from thinjax.plan import plan_from_width


def get_config():
    c = base_config()
    for k, v in FINETUNE.items():
        sec, key = k.split(".")
        c[sec][key] = v
    c.model.name, c.model.width, c.data.name = "resnet56", 16, "cifar10"
    c.train.epochs, c.train.eval_every_epochs = 30.0, 2.0
    c.prune.schedule = "soft"
    c.prune.start_epoch, c.prune.end_epoch, c.prune.every_epochs = 0.0, 10.0, 1.0
    c.prune.criterion, c.prune.allocation = "l2", "global"
    c.prune.target_kind = "macs"
    c.prune.target = float(count(plan_from_width("resnet56", 8), 32).macs)
    return c
