"""Thin against pruned on CIFAR-10 ResNet-20, in one data domain, decided by paired seeds.

Every network here was trained on the same data (30,000 of the JPEG CIFAR-10 training
images; a separate 5,000-image validation split): no release weights. For seed s = 0, 1, 2:
  dense      ResNet-20 w=16 trained T = 3 epochs (recipe R, LR 0.2);
  oneshot    the dense network pruned one-shot (global allocation) by L1, Taylor, FPGM and
             random scores to the MACs of w=8 (25% of the dense MACs) and w=11 (47%), BN
             recalibrated on 200 training batches, 0 epochs;
  pruned+ft  that network fine-tuned E epochs;
  thin       the uniform ResNet-20 at the target width trained from scratch T + E epochs;
  dense+ft   the dense network trained E more epochs (what E buys without pruning);
  gradual    the dense network pruned gradually (Zhu & Gupta) with the best criterion in E;
  scratch-E  the best criterion's pruned plan trained from scratch for T + E epochs;
  scratch-B  the same plan trained from scratch for the training FLOPs of pruned+ft.
E = 3 for every arm at both targets; E in {1, 3, 10} for thin and the two best criteria at
the w=8 target; the controls (gradual, scratch-E/B) at the w=8 target. Seed s gives the
same batches and the same dense network to every arm. Each arm's peak LR is chosen from its
grid on the validation split (seed 0, the w=8 target, E = 3); the best criteria are ranked
there too; the test split is read only for the reported numbers. The equivalence margin
delta = 1.0 top-1 point is fixed here, before any run. The grids are the final ones of a
first run of this protocol (from commit 61d7deb, on the AVX-512 EPYC), which extended them
before any run beyond the selection each time a validation pick was a grid's top: from
scratch (0.1, 0.2, 0.4) -> + 0.8 (thin's pick 0.4) -> + 1.6 (0.8 won again), fine-tuning
(0.02, 0.06, 0.2) -> + 0.6 (Taylor's and FPGM's pick 0.2) -> + 1.8 (random's pick 0.6);
a run that diverges at a grid LR is a row at chance accuracy. That first run was lost with
its machine at 96 of its 123 runs (2026-12-06, its workdir not kept); the second (these
grids, 30,000 training images, commit 97f6a0f, the AVX2 EPYC) at 119 of 123 (2026-12-07),
when the project moved to another machine and the workdir stayed behind. The third started
from nothing on 2026-12-07 at commit 0a68075, on an Intel Xeon (family 6 model 207, AVX-512;
AMX and AVX-512 BF16 not shown to the VM), and is carried from machine to machine by
--pack_to (below): every pick is made on the whole grid and no row of a lost run is in
the results.

Command (DATA: the unzipped ../shared/data/cifar10-jpeg.zip; run it from a clone at a fixed
commit; rerun to continue where it stopped):
    python -m thinjax.study --config=configs/study_cifar10_r20_protocol.py \
        --workdir=runs/study_r20_protocol --config.data.name=DATA \
        --report_dir=docs/study_cifar10_r20_protocol
While it runs, its state lives in benchmarks/state/study_cifar10_r20_protocol/ (a --pack_to
copy: every row and the weights later runs read; pack.json names the CPU each row was made
on). On a new machine, cp -a that folder to runs/study_r20_protocol and run the command
from a clone at the commit its rows name (0a68075 for the third run: nothing else mixes
in); before the machine goes, pack it back with main's command (it runs nothing with
--pack_to) and commit the folder:
    python -m thinjax.study --config=configs/study_cifar10_r20_protocol.py \
        --workdir=runs/study_r20_protocol --config.data.name=DATA \
        --pack_to=benchmarks/state/study_cifar10_r20_protocol
The folder is deleted when the study is done.
Cost: an ESTIMATE before the run. The study was first sized on the AVX-512 EPYC (45,000
training images, ~8 h). On the AVX2 EPYC of 2026-12-07 (Zen 3, no AVX-512) one quiet epoch
of 45,000 images measured w=16 125 s, w=11 106 s, w=8 62 s, and a run's start-up and
validation ~35 s: ~11.3 h for the 123 runs. To stay within about 8 h there, training uses
the first 30,000 images (the validation split stays train[45000:]; train[30000:45000] is
not used): ~7.9 h estimated. That estimate was low: the second run measured 10.42 h at
each group's median run time for 117 of its 123 runs on that EPYC (13.13 h as its wall
times add up, pauses and shared CPU included), because the pruned and scratch networks take
~50-80 s per 30,000-image epoch at w=8's MACs against thin w=8's 41 s (channel counts that
are not multiples of 8 run slower in oneDNN's AVX2 kernels, issue 28). On the Intel Xeon of
the third run, w=16 trains at ~600 images/s (~360 on that EPYC: 125 s per 45,000 images)
and a quiet dense run takes 177-194 s. The measured wall time per arm and in all is in the
report's Cost section once it has run.
Outcome: not stated before it is measured; the report says it.
"""

import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH_GRID = (0.1, 0.2, 0.4, 0.8, 1.6)
FINETUNE_GRID = (0.02, 0.06, 0.2, 0.6, 1.8)


def get_config():
    c = ml_collections.ConfigDict()
    c.title = "CIFAR-10 ResNet-20: thin vs pruned in one data domain, paired seeds"
    c.data = ml_collections.ConfigDict({"name": "cifar10", "data_dir": "", "split": "test",
                                        "eval_batch_size": 500})
    c.cpu = "this project's 2-core VM, an AMD EPYC without AVX-512 (Zen 3, AVX2)"
    c.data_text = ("Data: CIFAR-10 as JPEGs (../shared/data/cifar10-jpeg.zip; the --config.data"
                   ".name the command names): training on train[:30000], LR selection on "
                   "train[45000:] (5,000 images), reported top-1 on the 10,000-image test "
                   "split. No network carries weights trained on other data.")
    c.protocol = ml_collections.ConfigDict({
        "arch": "resnet20", "base_width": 16, "targets": (8, 11), "seeds": 3, "delta": 1.0,
        "dense_epochs": 3.0, "finetune_epochs": (1.0, 3.0, 10.0), "ref_epochs": 3.0,
        "criteria": ("l1", "taylor", "fpgm", "random"), "curve_criteria": 2,
        "curve_targets": (8,), "control_targets": (8,),
        "arms": ("dense", "oneshot", "thin", "pruned+ft", "dense+ft", "gradual", "scratch-E",
                 "scratch-B"),
        # extended twice where a grid's top won on the validation split (docstring); the
        # rows kept their keys (the grid is not in them)
        "lr_grid": {"thin": SCRATCH_GRID, "scratch-E": SCRATCH_GRID,
                    "scratch-B": SCRATCH_GRID, "pruned+ft": FINETUNE_GRID,
                    "dense+ft": FINETUNE_GRID, "gradual": FINETUNE_GRID},
        "dense_lr": 0.2, "allocation": "global", "round_to": 1, "recalibrate_bn": 200,
        "gradual_end": 0.5, "gradual_every": 0.05, "warmup_fraction": 0.05,
        "train_split": "train[:30000]", "val_split": "train[45000:]", "test_split": "test",
        "recipe": os.path.join(REPO, "configs", "quick_cifar10.py"),
        "recipe_name": "R = short CPU recipe (SGD-N, batch 128, 5% warmup + cosine to 0, wd "
                       "5e-4, label smoothing 0.1, flip + 4-px crop; peak LR per arm)",
        "recipe_overrides": ("--config.train.checkpoint_every=351",
                             "--config.train.log_every=100"),
        "batch_size": 128,
    })
    c.literature_file = os.path.join(REPO, "thinjax", "assets", "literature.csv")
    c.limits = (
        "A short-training regime: T = 3 dense epochs and E <= 10; the ranking of arms at "
        "600-epoch budgets is not shown by this study (configs/study_cifar10_r20_protocol_gpu.py"
        " is the same protocol at full scale).",
        "One network (ResNet-20), one dataset (CIFAR-10 as JPEGs), two targets; the E curve "
        "and the controls at the w=8 target only.",
        "The LR of each arm was chosen at one setting (seed 0, w=8 target, E = 3) and used at "
        "every seed, target and E; the dense network's LR is the recipe's (0.2), not chosen.",
        "Training FLOPs count 3 x MACs per image of every training phase and 1 x MACs per "
        "image of BN recalibration; the Taylor scores' few batches are not counted; gradual's "
        "masked steps are counted at the dense network's MACs.",
        "Published results (literature plot) are on the original CIFAR-10 with their own "
        "600-epoch-scale baselines and recipes; only their drop from their own baseline is "
        "shown, beside this study's paired differences.")
    c.rerun_text = ("One row, leaving the study as it is: copy DIR (cp -a DIR COPY), delete "
                    "the row's folder COPY/runs/<run> (the run column) and rerun the study "
                    "command with --workdir=COPY; only that run is made again, with the same "
                    "seed, LR and inputs.")
    return c
