"""Thin against pruned on CIFAR-10 MobileNetV2, in one data domain, decided by paired seeds:
the question of configs/study_cifar10_r20_protocol.py asked of an example network
(`thinjax.models.examples.MobileNetV2`, CIFAR strides, width multiplier), CPU-sized.

Every network here was trained on the same data (CIFAR-10 JPEG training images): no
release weights. For seed s = 0, 1, 2:
  dense      MobileNetV2 width 0.5 (700,490 params, 27.97 M MACs) trained T = 3 epochs
             (LR 0.1, not chosen);
  oneshot    the dense network pruned one-shot (global allocation) on its traced channel
             groups by L1 and random scores to the MACs of width 0.25 (9.48 M, 34% of the
             dense MACs), BN recalibrated on 10 training batches of 128, 0 epochs;
  pruned+ft  that network fine-tuned E = 3 epochs;
  thin       MobileNetV2 width 0.25 trained from scratch for T + E = 6 epochs.
Seed s gives the same batches and the same dense network to every arm. Each arm's peak LR
is chosen from its grid on the validation split (seed 0, E = 3): from scratch (0.05, 0.1,
0.2), fine-tuning (0.01, 0.03, 0.1): the grids of the ResNet-20 study halved, as its batch
of 128 is halved here (64: twice the steps on a small training set); the test split is
read only for the reported numbers. The equivalence margin delta = 1.0 top-1 point (the
ResNet-20 study's) is fixed here, before any run. Statistics as in the ResNet-20 study:
paired 95% t-intervals, Holm over the arms compared at one target and E.

Chosen to fit about 2 hours of the 2-core CPU, and why: MobileNetV2's depthwise
convolutions run as XLA:CPU grouped convolutions, which are slow (a 3x3 depthwise layer of
96 channels at 32x32, batch 128: 1.4-2.3 s forward, 9 s forward + backward, as long as the
dense 3x3 layer with 96x more MACs; measured under the load below). Training width 0.25
ran at ~38 img/s and width 0.5 at ~10 img/s (7-21), so one epoch of the 45,000 training
images would take ~20 min (width 0.25) and ~75 min (width 0.5), and this protocol on them
~33 h. Hence: a training set of TRAIN_IMAGES = 2,000 images (train[:2000], the first of
the fixed file order, ~200 a class), a 1,000-image validation split (train[45000:46000]),
the full 10,000-image test split; one target; two criteria (L1, random); one E (no E
curve); no controls (dense+ft, gradual, scratch-E/B). configs/study_cifar10_r20_protocol.py
has what is left out, for ResNet-20.

Command (DATA: the unzipped ../shared/data/cifar10-jpeg.zip; run it from a clone at a fixed
commit; rerun to continue where it stopped):
    python -m thinjax.study --config=configs/study_cifar10_mobilenetv2.py \
        --workdir=runs/study_mnv2 --config.data.name=DATA \
        --report_dir=docs/study_cifar10_mobilenetv2
Cost: an ESTIMATE before the run, from short timings on the 2-core AMD EPYC VM while other
jobs ran (load average 3-5; nice 15): training at the rates above (batch 64), evaluation
~136 img/s at width 0.25 and ~56 img/s at width 0.5, ~40 s start-up and compilation a job:
about 2.2 h for the 24 runs (~1.4 h of training, ~0.5 h of test-split evaluation, ~0.3 h
of start-ups). Each further 1,000 training images adds about 40 min. The measured wall
time per arm and in all is in the report's Cost section once it has run.
Outcome: not stated before it is measured; the report says it.
Measured (2026-12-06, commit 6f5a397, the AMD EPYC without AVX-512, with the test suite
running beside it for the first ~45 min): 24 runs in 1.01 h of run time (63 min wall):
dense 223 s a run, oneshot 53 s, pruned+ft 183 s, thin 168 s, test evaluations included.
"""

import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES = 2000
SCRATCH_GRID = (0.05, 0.1, 0.2)
FINETUNE_GRID = (0.01, 0.03, 0.1)


def get_config():
    c = ml_collections.ConfigDict()
    c.title = "CIFAR-10 MobileNetV2: thin vs pruned in one data domain, paired seeds"
    c.data = ml_collections.ConfigDict({"name": "cifar10", "data_dir": "", "split": "test",
                                        "eval_batch_size": 500})
    c.cpu = ("this project's 2-core VM, an AMD EPYC without AVX-512 (Zen 3, AVX2), with the "
             "test suite running beside the first ~45 min")
    c.data_text = (f"Data: CIFAR-10 as JPEGs (../shared/data/cifar10-jpeg.zip; the --config."
                   f"data.name the command names): training on train[:{TRAIN_IMAGES}], LR "
                   "selection on train[45000:46000] (1,000 images), reported top-1 on the "
                   "10,000-image test split. No network carries weights trained on other "
                   "data.")
    c.protocol = ml_collections.ConfigDict({
        "arch": "", "example": "mobilenetv2", "base_width": 0.5, "targets": (0.25,),
        "seeds": 3, "delta": 1.0, "dense_epochs": 3.0, "finetune_epochs": (3.0,),
        "ref_epochs": 3.0, "criteria": ("l1", "random"), "curve_criteria": 0,
        "curve_targets": (), "control_targets": (),
        "arms": ("dense", "oneshot", "thin", "pruned+ft"),
        "lr_grid": {"thin": SCRATCH_GRID, "pruned+ft": FINETUNE_GRID},
        "dense_lr": 0.1, "allocation": "global", "round_to": 1, "recalibrate_bn": 10,
        "warmup_fraction": 0.05, "train_split": f"train[:{TRAIN_IMAGES}]",
        "val_split": "train[45000:46000]", "test_split": "test",
        "recipe": os.path.join(REPO, "configs", "quick_mobilenetv2.py"),
        "recipe_name": "R = short CPU recipe of configs/quick_cifar10.py on MobileNetV2 (SGD-N, "
                       "batch 64, 5% warmup + cosine to 0, wd 5e-4, label smoothing 0.1, "
                       "flip + 4-px crop; peak LR per arm)",
        "recipe_overrides": ("--config.train.checkpoint_every=1000",
                             "--config.train.log_every=10"),
        "batch_size": 64,
    })
    c.limits = (
        f"A very short regime on a small training set: {TRAIN_IMAGES:,} training images, "
        "T = 3 dense epochs and E = 3; chosen for the CPU budget (the docstring of "
        "configs/study_cifar10_mobilenetv2.py), not for accuracy.",
        "One network (MobileNetV2, CIFAR strides), one dataset (CIFAR-10 as JPEGs), one "
        "target (the MACs of width 0.25), two criteria (L1, random); no E curve and no "
        "controls (dense+ft, gradual, scratch-E/B).",
        "MobileNetV2's last 1x1 convolution keeps 1,280 channels at every width below 1 (as "
        "torchvision's): thin keeps it whole, pruning may narrow it.",
        "The LR of each arm was chosen at one setting (seed 0, E = 3) and used at every "
        "seed; the dense network's LR (0.1) is not chosen.",
        "Every pick lies at an edge of its grid: thin chose the from-scratch grid's bottom "
        "(0.05), both fine-tuning arms its top (0.1). The grids were not extended (the "
        "ResNet-20 study's rule), because the other seeds had run before the picks were "
        "read; a wider grid could raise either side (a lower LR for thin, a higher one for the "
        "pruned arms), so this report's differences are not final.",
        "Training FLOPs count 3 x MACs per image of every training phase and 1 x MACs per "
        "image of BN recalibration.")
    c.rerun_text = ("One row, leaving the study as it is: copy DIR (cp -a DIR COPY), delete "
                    "the row's folder COPY/runs/<run> (the run column) and rerun the study "
                    "command with --workdir=COPY; only that run is made again, with the same "
                    "seed, LR and inputs.")
    return c
