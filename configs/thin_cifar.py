"""The study's CIFAR recipe for any CIFAR ThinResNet: model, width and dataset as arguments.

Command (data: TFDS `cifar10` / `cifar100`, or an image folder such as the unzipped
../shared/data/cifar10-jpeg.zip for CIFAR-10):
    python -m thinjax.main --config=configs/thin_cifar.py:MODEL,WIDTH,DATASET \\
        --workdir=runs/thin_MODEL_wWIDTH_DATASET [--config.data.name=$HOME/data/cifar10-jpeg]
e.g. ``configs/thin_cifar.py:resnet56,16,cifar100``. MODEL: a CIFAR-stem network
(resnet20, resnet32, resnet44, resnet56, resnet110, resnet18_cifar, ..., resnet152_cifar);
WIDTH: w (default 16, or 64 for the *_cifar ones, which then train in bfloat16);
DATASET: cifar10 or cifar100 (default cifar10). Omitted trailing arguments take the
defaults: ``configs/thin_cifar.py`` alone is resnet20,16,cifar10.

The recipe: SGD momentum 0.9, lr 0.5 at batch 1024 (0.0625 at 128), 5-epoch warmup then
cosine, weight decay 2e-5 on kernels, label smoothing 0.1, mixup 0.2 / cutmix 1.0, flip +
4-px crop + TrivialAugmentWide + random erasing 0.1, EMA; batch 128, 600 epochs.

Expected: these are the study's own measured results, from its public release
(brain-bzh/baseline-pruning, trained with this recipe; EMA weights), not runs of this
config. On the original CIFAR-10 test set the release reports 94.65% top-1 for ResNet-20
w=16 and 96.76% for ResNet-56 w=16. Its checkpoints, evaluated with the release's own
PyTorch code on the JPEG re-encoded test split (../shared/checkpoints/README.md), score
ResNet-20: 75.76% / 81.67% / 87.20% at w=4 / 8 / 16; ResNet-56: 87.39% / 89.51% at
w=8 / 16 (thinjax's evaluation of the same files agrees to the image: README.md,
"Evaluation"). No accuracy has been measured for CIFAR-100 or for resnet18_cifar.

Cost (python -m thinjax.cost --model=MODEL --width=W): 600 epochs x 390 steps of 128
images, about 3 x MACs per image trained: ResNet-20 w=16 40.81 M MACs (272,474 params),
ResNet-56 w=16 125.75 M (855,770), resnet18_cifar w=64 555.42 M (11,173,962), i.e. about
3.7e15, 1.1e16 and 5.0e16 multiply-accumulates in all. No wall-clock time of a full run
has been measured.
"""

from thinjax.config import study_cifar_recipe
from thinjax.errors import ConfigError
from thinjax.plan import ARCHS

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
# the six configurations this file replaces (configs/thin_r{20,56,18}_cifar{10,100}.py)
VARIANTS = ("resnet20,16,cifar10", "resnet20,16,cifar100", "resnet56,16,cifar10",
            "resnet56,16,cifar100", "resnet18_cifar,64,cifar10", "resnet18_cifar,64,cifar100")


def parse(arg: str | None) -> tuple[str, int, str]:
    """'MODEL[,WIDTH[,DATASET]]' (each may be empty) -> (model, width, dataset)."""
    parts = [p.strip() for p in (arg or "").split(",")]
    if len(parts) > 3:
        raise ConfigError(f"thin_cifar.py:{arg}: expected MODEL,WIDTH,DATASET")
    parts += [""] * (3 - len(parts))
    model = parts[0] or "resnet20"
    cifar = sorted(n for n, (_, _, stem) in ARCHS.items() if stem == "cifar")
    if model not in cifar:
        raise ConfigError(f"thin_cifar.py: model {model!r} is not a CIFAR-stem network; "
                          f"use one of {', '.join(cifar)}")
    try:
        width = int(parts[1]) if parts[1] else (64 if model.endswith("_cifar") else 16)
    except ValueError:
        raise ConfigError(f"thin_cifar.py: width {parts[1]!r} is not an integer") from None
    dataset = parts[2] or "cifar10"
    if dataset not in NUM_CLASSES:
        raise ConfigError(f"thin_cifar.py: dataset {dataset!r}; use cifar10 or cifar100")
    return model, width, dataset


def get_config(arg: str | None = None):
    """The study's CIFAR recipe for ``MODEL,WIDTH,DATASET`` (see the module docstring)."""
    model, width, dataset = parse(arg)
    c = study_cifar_recipe(model, width, dataset, NUM_CLASSES[dataset])
    if model.endswith("_cifar"):  # the wide ImageNet-family networks: bfloat16 compute
        c.model.dtype = "bfloat16"
    return c
