"""Prune a trained CIFAR-10 ResNet-56 (w=16) to the MACs of w=8 in one shot, then fine-tune.

Command (the release's w=16 weights; any thinjax or PyTorch checkpoint of the plan works):
    python -m thinjax.main --config=configs/prune_r56_oneshot.py --workdir=runs/prune_r56 \
        --config.init_from=../shared/checkpoints/thinresnet-release/resnet56_width16_cifar10_ema.pt \
        --config.data.name=$HOME/data/cifar10-jpeg
L1 filter norms ranked globally (per-group mean-normalised) until the network has the
31.55 M MACs of the regular w=8 (within 1%); at step 0, before any update; then the
network is materialised and fine-tuned for 30 epochs with the study's CIFAR recipe at a
lower peak LR (0.1 at batch 1024), 1 warmup epoch. Evaluation runs on the small network.
Expected: right after pruning ~10% (the network collapses at 25% MACs); after the short
CPU fine-tune in docs/pruning.md (4 epochs) 80-85%; the release's regular w=8 reaches
87.39% on the JPEG test split. Cost: 30 x 390 steps of a 31.5 M-MAC network: ~5 min on
one H100, ~6 h on a 2-core CPU.
"""

from thinjax.config import study_cifar_recipe
from thinjax.cost import count
from thinjax.plan import plan_from_width


def get_config():
    c = study_cifar_recipe("resnet56", 16, "cifar10", 10)
    c.train.epochs = 30
    c.train.eval_every_epochs = 2
    c.optim.lr, c.optim.warmup_epochs = 0.1, 1.0
    c.prune.schedule = "oneshot"
    c.prune.criterion, c.prune.allocation = "l1", "global"
    c.prune.target_kind = "macs"
    c.prune.target = float(count(plan_from_width("resnet56", 8), 32).macs)
    return c
