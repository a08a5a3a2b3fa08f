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
The third run is complete (123 rows, from about 17:30 UTC on 2026-12-07 to 01:47 on
2026-12-08, over three sessions, carried between them by --pack_to); its report is
docs/study_cifar10_r20_protocol.
Its final pack (every row, and the dense and one-shot weights that rerunning one row reads)
is commit cbbacea's benchmarks/state/study_cifar10_r20_protocol/, deleted after it: to rerun
one row, `git checkout cbbacea -- benchmarks/state/study_cifar10_r20_protocol`, copy it to
DIR, delete DIR/runs/<run> and run the command with --workdir=DIR from a clone at 0a68075.
Cost, as sized: the study was first sized on the AVX-512 EPYC (45,000 training images, ~8
h); on the AVX2 EPYC (Zen 3) measured epochs put that at ~11.3 h, so training uses the first
30,000 images (~7.9 h estimated there; the second run then measured 10.42 h at its groups'
median run times for 117 of its runs: channel counts that are not multiples of 8 run slower
in oneDNN's AVX2 kernels, issue 28).
Cost, measured (the third run, Intel Xeon family 6 model 207, 2 cores; the report's Cost
section): median wall per run: dense 194 s; one-shot with BN recalibration 38-40 s;
pruned+ft w=8 E=1 59 s, E=3 131 s, E=10 369 s; pruned+ft w=11 E=3 169 s; thin w=8 E=1 150 s,
E=3 189 s, E=10 386 s; thin w=11 E=3 236 s; dense+ft 261 s, gradual 363 s, scratch-E 331 s,
scratch-B 690 s (of these four arms 20 of 28 runs ran on one core, two runs at a time: one
core takes ~1.3-1.6x a run's two-core time). In all 6.92 h at each group's median, 8.49 h
as the rows' wall times add up (which count pauses: oneshot-l1-w11-s0's 4,192 s and
dense-ft-E3-lr0.02-s0's 1,074 s include ~69 and ~15 min paused; scratch-B-lr0.2-s0's 964 s
~4 min with the study's loop stopped; and each of the two one-core runs side by side).
Elapsed: the 25 control runs took 1.7 h (00:05-01:47 UTC on 2026-12-08, two at a time from
00:27).
Outcome: measured, in the report (its In words section) and in docs/study.md.
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
    c.cpu = ("this project's 2-core VM, an Intel Xeon (family 6 model 207; AVX-512 with VNNI; "
             "neither AMX nor AVX-512 BF16 shown to the VM), every row; the last 20 runs "
             "(from 00:27 UTC on 2026-12-08) as two one-core processes, the study on core 0 "
             "and benchmarks/study_second_worker.py on core 1")
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
        "shown, beside this study's paired differences.",
        "scratch-B is compared with thin at thin's E = 3 but has the training FLOPs of "
        "pruned+ft (14.9 epochs from init, 445,952 images, against thin's 6 and 179,712): its "
        "difference from thin is not at an equal budget. The thin network with a similar "
        "budget is thin at E = 10 (13 epochs, 389,376 images; not paired with scratch-B here).",
        "n = 3 seeds: where the seeds spread (thin at w=8, E = 3: sd 1.27 points) the "
        "intervals are several points wide, and 'inconclusive' means this study cannot tell "
        "the arms apart, not that they are equal.",
        "Run times: the last 20 runs ran as two one-core processes side by side (see Cost); "
        "a few rows' wall times include pauses (the config's docstring names them).")
    c.rerun_text = (
        "One row, leaving the study as it is: copy DIR (cp -a DIR COPY), delete the row's "
        "folder COPY/runs/<run> (the run column) and rerun the study command with "
        "--workdir=COPY from a clone at the rows' commit (0a68075); only that run is made "
        "again, with the same seed, LR and inputs. Without the study's folder: its final pack "
        "(every row, and the dense and one-shot weights a rerun reads) is in the repository's "
        "history, `git checkout cbbacea -- benchmarks/state/study_cifar10_r20_protocol`, and "
        "a copy of it is DIR. Done so on 2026-12-08 for pruned-ft-l1-w8-E3-lr0.06-s1 (same "
        "machine, beside the study): val top-1 70.10% and test top-1 69.93%, the same as its "
        "row (its arm: 70.36% mean, sd 0.53, n = 3).")
    return c
