"""ResNet-50 with "ResNet strikes back" procedure A2 (Wightman, Touvron, Jegou, 2021).

Command:
    python -m thinjax.main --config=configs/rsb_a2.py --workdir=gs://BUCKET/rsb_a2 \
        --config.data.data_dir=gs://BUCKET/tfds
Procedure A2: LAMB, lr 5e-3 at batch 2048 (scaled linearly), 300 epochs, 5-epoch warmup then
cosine, weight decay 0.02, binary cross-entropy, mixup 0.1 / cutmix 1.0, train at 224 px,
test at 224 (resize 236/232), random resized crop; the paper uses RandAugment
rand-m7-mstd0.5 and repeated augmentation, which thinjax replaces with TrivialAugmentWide
(stated, not hidden).
Expected: 79.8% top-1 at 224 (paper). Cost: 300 epochs at batch 2048 (300 x 625 steps).
"""

from thinjax.config import rsb_procedure


def get_config():
    return rsb_procedure("a2")
