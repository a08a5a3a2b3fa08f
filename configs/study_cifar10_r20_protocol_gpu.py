"""The protocol of configs/study_cifar10_r20_protocol.py at full scale, for one GPU.

The same arms, statistics and data (one data domain; LRs chosen on train[45000:]), with
the study's full recipe (configs/thin_cifar.py: SGD 0.9, 5-epoch warmup + cosine, wd 2e-5,
label smoothing 0.1, mixup 0.2 / cutmix 1.0, TrivialAugmentWide, random erasing 0.1; raw
weights), T = 200 dense epochs, E in {10, 40, 160}, 5 seeds and three targets (the MACs of
w=6, 8 and 11: 14%, 25% and 47% of the dense ResNet-20 w=16); the E curve and the
controls at every target.

Command (one GPU; DATA: the CIFAR-10 JPEG folder, or TFDS cifar10 with the same splits):
    python -m thinjax.study --config=configs/study_cifar10_r20_protocol_gpu.py \
        --workdir=runs/study_r20_protocol_gpu --config.data.name=DATA \
        --report_dir=docs/study_cifar10_r20_protocol_gpu
Cost: an ESTIMATE, not measured. About 30,000 epochs of 45,000 images in all (the thin
arm at T + 160 = 360 epochs and scratch-B at up to T x 7 + 40 = 1,440 epochs dominate);
ResNet-20 steps on one GPU are input-bound, ~5-10k img/s, so ~5-9 s an epoch: roughly
40-80 GPU hours. Split it over machines by running the same command on copies of the
workdir with different seed counts only after the seed-0 LR selection has finished.
Outcome: not stated before it is measured.
"""

import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_config():
    spec = importlib.util.spec_from_file_location(
        "study_cifar10_r20_protocol", os.path.join(HERE, "study_cifar10_r20_protocol.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def get_config():
    c = _cpu_config()
    c.title = "CIFAR-10 ResNet-20: thin vs pruned in one data domain, full scale (GPU)"
    c.cpu = "one GPU"
    p = c.protocol
    p.seeds, p.targets = 5, (6, 8, 11)
    p.curve_targets = p.control_targets = (6, 8, 11)
    p.dense_epochs, p.finetune_epochs, p.ref_epochs = 200.0, (10.0, 40.0, 160.0), 40.0
    p.recipe = os.path.join(HERE, "thin_cifar.py")
    p.recipe_name = "the study's full recipe (configs/thin_cifar.py), peak LR per arm, raw weights"
    p.recipe_overrides = ("--config.train.checkpoint_every=2000", "--config.train.log_every=200")
    p.dense_lr = 0.0625  # the recipe's 0.5 at batch 1024
    p.warmup_fraction = 0.025
    p.lr_grid = {"thin": (0.03, 0.0625, 0.125), "scratch-E": (0.03, 0.0625, 0.125),
                 "scratch-B": (0.03, 0.0625, 0.125), "pruned+ft": (0.005, 0.015, 0.05),
                 "dense+ft": (0.005, 0.015, 0.05), "gradual": (0.005, 0.015, 0.05)}
    c.limits = tuple(x for x in c.limits if not x.startswith(("A short-training", "One network")))
    c.limits += ("One network (ResNet-20) and one dataset (CIFAR-10 as JPEGs).",)
    return c
