"""Prune ImageNet ResNet-50 (w=64, torchvision's) to 50% of its MACs in one shot (L1,
global ranking, round_to=8 for fast kernels), then fine-tune with the study's recipe.

Command (a torchvision ResNet-50 state dict or a thinjax checkpoint of it):
    python -m thinjax.main --config=configs/prune_r50_oneshot.py --workdir=gs://BUCKET/prune_r50 \
        --config.init_from=resnet50.pth --config.data.data_dir=gs://BUCKET/tfds
Expected: compare with configs/thin_r50.py at the width of equal MACs: w=52 with the
study's inner-width rule, or w=45 scaled linearly (--config.model.base_width=64); check with
`python -m thinjax.cost --model=resnet50 --width=52 --input_size=224` (2.08 G vs 4.09 G).
Cost: 100 epochs at 176 px, ~2.05 GMACs per 224-px image: about 1/6 of thin_r50.py's
600-epoch run at w=64 (see docs/scaling.md).
"""

import importlib.util
import os


def get_config():
    spec = importlib.util.spec_from_file_location(
        "thin_r50", os.path.join(os.path.dirname(os.path.abspath(__file__)), "thin_r50.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.model.width = 64
    c.model.base_width = 64
    c.train.epochs = 100
    c.optim.warmup_epochs = 1.0
    c.prune.schedule = "oneshot"
    c.prune.criterion, c.prune.allocation = "l1", "global"
    c.prune.target_kind, c.prune.target = "macs_fraction", 0.5
    c.prune.round_to = 8
    return c
