"""The study on ImageNet ResNet-50: a ThinResNet-50 width sweep against ResNet-50 pruned
to the MACs of each thinner width, with the published ResNet-50 results beside them.

Command (TFDS imagenet2012 under DATA_DIR; the ThinResNets trained beforehand with
configs/thin_r50.py on a pod slice or GPU nodes, see launch/ and docs/scaling.md):
    python -m thinjax.study --config=configs/study_imagenet_r50.py --workdir=gs://BUCKET/study_r50 \
        --config.data.data_dir=gs://BUCKET/tfds \
        --config.sweep_dir=gs://BUCKET --config.base=gs://BUCKET/r50_w64
`sweep_dir/r50_w{16,32,48,64}` are finished `thin_r50.py` workdirs (the study collects them:
each is evaluated on the validation split, 232 -> 224); `base` is the ResNet-50 (w=64) to
prune (a thinjax workdir or a torchvision .pth). The release's ThinResNet-50 w=16 is
evaluated from ../shared as a fifth sweep point.
Outcome: not measured yet (no ImageNet sweep has been trained); the report will say it.
The release w=16 and a retrained w=16 have the same cost: the sweep curve takes their mean
there (thinjax.report.interpolate).
Cost: the evaluations (50,000 images x 5 networks) take minutes on an accelerator; each
pruning fine-tune runs `finetune_epochs` epochs of thin_r50.py's recipe on the pruned net;
the sweep trainings themselves are the cost of thin_r50.py (docs/scaling.md).
"""

import os

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.title = "ImageNet ResNet-50: ThinResNets vs pruning"
    c.release_dir = os.path.join("..", "shared", "checkpoints", "thinresnet-release")
    c.sweep_dir = "runs"
    c.base = "runs/r50_w64"
    c.data = ml_collections.ConfigDict({"name": "imagenet2012", "data_dir": "",
                                        "split": "validation", "eval_batch_size": 1000})
    c.eval_label = "ImageNet validation, 224 px"
    c.eval_label_data = "imagenet2012"  # the data eval_label and notes describe
    c.sweep = [{"name": "ThinResNet-50 w=16 (release)",
                "checkpoint": "{release}/resnet50_width16_imagenet_ema.pt", "epochs": 600}] + [
        {"name": f"ThinResNet-50 w={w}", "checkpoint": "{sweep_dir}/r50_w" + str(w),
         "epochs": 600} for w in (16, 32, 48, 64)]
    c.pruning = {"base": "{base}", "criteria": ("l1", "taylor"), "allocation": "global",
                 "match": ("ThinResNet-50 w=32", "ThinResNet-50 w=48"), "match_on": "macs",
                 "round_to": 8, "recalibrate_bn": 100, "finetune_epochs": (10.0,),
                 "finetune_overrides": ()}
    c.schedule_runs = [
        {"name": "l1 gradual @ w=48", "method": "l1 (global), gradual over 30 epochs",
         "train": "configs/prune_r50_oneshot.py", "base": "{base}", "match": "ThinResNet-50 w=48",
         "overrides": ["--config.prune.schedule=gradual", "--config.prune.end_epoch=30",
                       "--config.prune.every_epochs=2"]}]
    c.extra = []
    c.literature = {"network": "resnet50", "dataset": "ImageNet"}
    c.domain = ("ImageNet-1k train / validation; the release ThinResNet-50 w=16 was trained "
                "600 epochs by the release's authors, the other sweep members by thin_r50.py.")
    c.notes = ("Measured points: top-1 on the ImageNet validation split (resize 232, centre "
               "crop 224). Published results use their own baselines and recipes.")
    return c
