"""Quick CPU recipe: ThinResNet-20 w=8 on CIFAR-10 in about 10 minutes on 2 CPU cores.

Command (data: the unzipped ../shared/data/cifar10-jpeg.zip, or TFDS `cifar10`):
    python -m thinjax.main --config=configs/quick_cifar10.py --workdir=runs/quick \
        --config.data.name=$HOME/data/cifar10-jpeg
Expected: >= 78% top-1 (EMA) on the JPEG test split after 13 epochs; measured 2026-12-03:
80.74% raw / 80.07% EMA (docs/training.md).
Cost: 13 epochs x 390 steps at batch 128: 9 min 33 s at 820-1,770 img/s on the 2-core AMD
EPYC VM of docs/performance.md (oneDNN convolutions, continuous tf.data pipeline; 15 min 24 s
with XLA's convolutions and a per-epoch pipeline).
A short schedule wants little regularisation: flip + 4-px crop, label smoothing 0.1, no
mixup/cutmix, no TrivialAugment, no random erasing; SGD (Nesterov) with a higher weight
decay; one warmup epoch then cosine to 0.
"""

from thinjax.config import short_cpu_recipe


def get_config():
    c = short_cpu_recipe("cifar10", epochs=13)
    c.train.eval_every_epochs = 1
    c.train.log_every = 50
    c.train.checkpoint_every = 390
    return c
