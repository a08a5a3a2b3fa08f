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

from thinjax.config import base_config


def get_config():
    c = base_config()
    c.model.name, c.model.width, c.model.num_classes = "resnet50", 64, 1000
    c.model.dtype = "bfloat16"
    c.model.zero_init_last_bn = True
    c.data.name = "imagenet2012"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.augment = "imagenet"
    c.data.image_size = 224
    c.data.eval_size, c.data.eval_resize = 224, 236
    c.data.cache = "none"
    c.data.shuffle_buffer = 16_384
    c.data.random_erasing = 0.0
    c.train.batch_size = 2048
    c.train.epochs = 300
    c.train.loss = "bce"
    c.train.label_smoothing = 0.0
    c.train.mixup_alpha, c.train.cutmix_alpha = 0.1, 1.0
    c.train.eval_every_epochs = 10
    c.train.checkpoint_every = 2000
    c.optim.name = "lamb"
    c.optim.lr, c.optim.lr_batch = 5e-3, 2048
    c.optim.warmup_epochs, c.optim.warmup_init = 5, 1e-4
    c.optim.weight_decay = 0.02
    c.optim.weight_decay_on = r"kernel$"
    c.ema.enabled = False
    return c
