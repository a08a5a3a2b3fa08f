"""The study on CIFAR-10 ResNet-56: the release's ThinResNet-56 sweep (w=1..16) against the
release's w=16 pruned to the MACs of w=8 (L1, BN scale and Taylor, global ranking), without
fine-tuning and after a 1-epoch fine-tune, with published pruning results beside them.

Command (the unzipped ../shared/data/cifar10-jpeg.zip; the release checkpoints in
../shared/checkpoints/thinresnet-release, or set --config.release_dir):
    python -m thinjax.study --config=configs/study_cifar10_r56.py --workdir=runs/study_r56 \
        --config.data.name=$HOME/data/cifar10-jpeg --report_dir=docs/study_cifar10_r56
Measured (docs/study_cifar10_r56/report.md): the ThinResNets at 87.39% / 89.51% on the
JPEG test split; the w=16 pruned to w=8's MACs at 9.7-15.0% before fine-tuning and
42.3-72.3% after one CPU epoch. The budgets differ: the ThinResNets are the release's
600-epoch networks (original CIFAR-10, no JPEG epoch), the pruned ones 600 + 1 epochs with
a weaker recipe, scored on raw weights; the report says so in each sentence. The
equal-budget study is configs/study_cifar10_r20_budget.py.
Cost: ~25 min on a 2-core CPU (3 x 1 fine-tune epoch of a 31.5 M-MAC network dominate);
a rerun skips finished runs.
"""

import os

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.title = "CIFAR-10 ResNet-56: ThinResNets vs pruning"
    c.release_dir = os.path.join("..", "shared", "checkpoints", "thinresnet-release")
    c.data = ml_collections.ConfigDict({"name": "cifar10", "data_dir": "", "split": "test",
                                        "eval_batch_size": 500})
    c.eval_label = "CIFAR-10 JPEG test split"
    c.eval_label_data = "cifar10-jpeg"  # the data eval_label and notes describe
    c.sweep = []
    c.sweep_range = {"arch": "resnet56", "widths": tuple(range(1, 17)), "dataset": "cifar10",
                     "epochs": 600}   # the release's 16 ThinResNet-56s: a dense sweep
    c.pruning = {"base": "{release}/resnet56_width16_cifar10_ema.pt",
                 "criteria": ("l1", "bn_scale", "taylor"), "allocation": "global",
                 "match": ("ThinResNet-56 w=8",), "match_on": "macs", "round_to": 1,
                 "recalibrate_bn": 50, "finetune_epochs": (1.0,)}
    # pruning inside training runs, e.g. 4 Taylor events every 5 epochs (too long for the
    # CPU budget of this config; ~10 min on one GPU):
    # {"name": "taylor iterative @ w=8", "method": "taylor (global), iterative, 40 epochs",
    #  "train": "configs/prune_r56_iterative.py", "base": "{release}/resnet56_width16_cifar10_ema.pt",
    #  "match": "ThinResNet-56 w=8", "overrides": []}
    c.schedule_runs = []
    c.extra = []
    c.literature = {"network": "resnet56", "dataset": "CIFAR-10"}
    c.base_epochs = 600
    c.finetune_recipe = ("converted net's own config (SGD-N lr 0.04 @128, cosine, "
                         "flip+crop)")
    c.domain = ("the release ThinResNets (and the w=16 that is pruned) were trained 600 "
                "epochs on the original CIFAR-10; the local splits are JPEG re-encodings "
                "(../shared/data/cifar10-jpeg.zip), which cost the release's w=16 networks "
                "about 7 points (ResNet-56 96.76% -> 89.51%, ResNet-20 94.65% -> 87.20%). The "
                "ThinResNets here never saw the JPEG train split; the fine-tuned pruned "
                "networks saw it for one epoch.")
    c.not_run = ("a fine-tune of the ThinResNets (thin+ft) of the same length, so the "
                 "fine-tuned rows have no equal-budget partner: see "
                 "configs/study_cifar10_r20_budget.py",
                 "gradual pruning and pruned-plan-from-scratch arms", "more than one seed")
    c.notes = ("Measured points: top-1 on the 10,000-image CIFAR-10 JPEG test split (the "
               "release's ThinResNets score 96.76% (w=16) on the original test set; JPEG "
               "costs about 7 points). The one-shot pruned rows are the release's EMA weights "
               "pruned (no training here); the fine-tuned rows are scored on the raw weights "
               "of the fine-tune, which uses the converted network's own config (SGD Nesterov lr 0.04 at "
               "batch 128, cosine, flip + crop). Published results are on the original "
               "test sets and are shown in their own panel.")
    return c
