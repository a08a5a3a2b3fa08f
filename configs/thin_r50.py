"""ImageNet ThinResNet-50 at width w (default 64 = torchvision's ResNet-50), the study's
modern recipe (torchvision's "new recipe": SGD, 600 epochs, TrivialAugment, mixup/cutmix,
random erasing, label smoothing, EMA, train at 176 px, evaluate 232 -> 224).

Command (TFDS imagenet2012 prepared under DATA_DIR; on a TPU VM or GPU node, see launch/):
    python -m thinjax.main --config=configs/thin_r50.py --workdir=gs://BUCKET/r50 \
        --config.data.data_dir=gs://BUCKET/tfds [--config.model.width=16]
Expected: w=64 ~80.8% top-1 (EMA) after 600 epochs, as torchvision's recipe reports;
the study's w=16 ThinResNet-50 (889,304 params, 87 M MACs) is the release checkpoint.
Cost: 600 epochs x 1251 steps at batch 1024; w=64 at 176 px is 2.61 GMACs per image, so
~1.2 x 10^19 training FLOPs, 3.8x the Flax ImageNet example (4.4 h on a TPU v3-8): ~17 h
compute-bound on a v3-8, while reading 769 M augmented images (~26 h at that host's
8,100 img/s) is the larger bound; w=16 costs 0.02x the compute (docs/scaling.md).
Scale lr with the batch (0.5 at 1024 is applied automatically).
"""

from thinjax.config import base_config


def get_config():
    c = base_config()
    c.model.name, c.model.width, c.model.num_classes = "resnet50", 64, 1000
    c.model.dtype = "bfloat16"
    c.data.name = "imagenet2012"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.augment = "imagenet"
    c.data.image_size = 176
    c.data.eval_size, c.data.eval_resize = 224, 232
    c.data.cache = "none"
    c.data.shuffle_buffer = 16_384
    c.data.eval_batch_size = 1024
    c.train.batch_size = 1024
    c.train.epochs = 600
    c.train.eval_every_epochs = 10
    c.train.log_every = 100
    c.train.checkpoint_every = 2000
    c.optim.lr, c.optim.lr_batch = 0.5, 1024
    c.optim.warmup_epochs, c.optim.warmup_init = 5, 0.01
    c.optim.weight_decay = 2e-5
    return c
