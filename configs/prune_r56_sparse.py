"""Group sparsity, then prune, on a trained CIFAR-10 ResNet-56 (w=16), to the MACs of w=8:
``configs/prune_r56_sparse.py:group_lasso`` (DepGraph's sparse learning, Fang et al. 2023)
or ``configs/prune_r56_sparse.py:greg`` (growing regularisation, Wang et al. 2021).

Command (the release's w=16 weights; any thinjax or PyTorch checkpoint of the plan works):
    python -m thinjax.main --config=configs/prune_r56_sparse.py:group_lasso \\
        --workdir=runs/sparse_r56 \\
        --config.init_from=../shared/checkpoints/thinresnet-release/resnet56_width16_cifar10_ema.pt \\
        --config.data.name=$HOME/data/cifar10-jpeg
Epochs 0-10: the loss plus the penalty (group_lasso: 5e-4 x the sum of every coupled
channel's L2 norm over all its slices; greg: lambda_t / 2 x the squared norms of the channels
that L1 selects for removal at the start, lambda_t growing by 1e-4 every 10 steps to 1); epoch
10: one-shot pruning (group_lasso: by group_norm; greg: by l1, which removes the penalised
channels), materialised, the penalty dropped; fine-tuning to epoch 30. Recipe:
thinjax.conversion.FINETUNE (SGD Nesterov, lr 0.04 at batch 128, cosine, wd 5e-5, flip +
crop, EMA 0.999).
Expected: the 30 epochs are not measured yet. Only a short version has been measured:
benchmarks/prune_methods_r56.py, 100 regularised steps + 200 steps of batch 64, 2-core
Intel Xeon, 2026-11-29. group_lasso got 23.07% and greg 49.54% (one-shot L1 with the same
steps: 46.88%); see docs/pruning.md, "Every method on the release's ResNet-56".
Cost: 10 epochs on the 125.75 M-MAC dense network (the penalty: one pass over the
parameters per step), then 20 on the 31.5 M-MAC one.
"""

from thinjax.config import base_config
from thinjax.conversion import FINETUNE
from thinjax.cost import count
from thinjax.errors import ConfigError
from thinjax.plan import plan_from_width

CRITERION = {"group_lasso": "group_norm", "greg": "l1"}


def get_config(arg: str = "group_lasso"):
    if arg not in CRITERION:
        raise ConfigError(f"configs/prune_r56_sparse.py:{arg}: use group_lasso or greg")
    c = base_config()
    for k, v in FINETUNE.items():
        sec, key = k.split(".")
        c[sec][key] = v
    c.model.name, c.model.width, c.data.name = "resnet56", 16, "cifar10"
    c.train.epochs, c.train.eval_every_epochs = 30.0, 2.0
    c.prune.regularizer = arg
    c.prune.schedule, c.prune.start_epoch = "oneshot", 10.0
    c.prune.criterion, c.prune.allocation = CRITERION[arg], "global"
    if arg == "group_lasso":
        c.prune.score_members = "all"   # score what the penalty drives to zero
    c.prune.target_kind = "macs"
    c.prune.target = float(count(plan_from_width("resnet56", 8), 32).macs)
    return c
