"""ResNet-50 with a "ResNet strikes back" procedure (Wightman, Touvron, Jegou, 2021): A1, A2
or A3, chosen after the file name (default a1).

Command:
    python -m thinjax.main --config=configs/rsb.py:a2 --workdir=gs://BUCKET/rsb_a2 \
        --config.data.data_dir=gs://BUCKET/tfds
All three: LAMB at batch 2048 (lr scaled linearly), 5-epoch warmup then cosine, binary
cross-entropy, cutmix 1.0, test at 224 (resize 236/232), random resized crop; the paper
uses RandAugment and repeated augmentation, which thinjax replaces with TrivialAugmentWide
(stated, not hidden).
  a1: 600 epochs, lr 5e-3, weight decay 0.01, mixup 0.2, train at 224 px
  a2: 300 epochs, lr 5e-3, weight decay 0.02, mixup 0.1, train at 224 px
  a3: 100 epochs, lr 8e-3, weight decay 0.02, mixup 0.1, train at 160 px
Expected: 80.4% (a1), 79.8% (a2), 78.1% (a3) top-1 at 224 (paper), not measured here.
Cost: epochs x 625 steps at batch 2048.
"""

from thinjax.config import RSB, rsb_procedure

VARIANTS = ("a1", "a2", "a3")


def get_config(procedure: str = "a1"):
    if procedure not in RSB:
        raise ValueError(f"configs/rsb.py:{procedure}: unknown procedure; choose one of "
                         f"{', '.join(sorted(RSB))}")
    return rsb_procedure(procedure)
