"""Quick CPU recipe for an example network: MobileNetV2 (width 0.5) on CIFAR-10, the recipe
and data pipeline of configs/quick_cifar10.py (ThinResNet-20 w=8).

Command (data: the unzipped ../shared/data/cifar10-jpeg.zip, or TFDS `cifar10`):
    python -m thinjax.main --config=configs/quick_mobilenetv2.py --workdir=runs/mnv2 \
        --config.data.name=$HOME/data/cifar10-jpeg
Expected: top-1 not measured at full length yet; on the bundled sample
(`--config.data.name=sample:cifar10`) it trains, resumes, evaluates and checkpoints like a
ThinResNet run (tests/test_trace_train.py runs it at width 0.25).
Cost: MobileNetV2 width 0.5 at 32x32 (CIFAR strides) is 700,490 params and 27.97 M MACs
(a ThinResNet-20 w=8: 68,786 and 10.31 M); 13 epochs x 390 steps at batch 128.
The network is `thinjax.models.examples.MobileNetV2(width=0.5, num_classes=10)`; its
checkpoints record it (name, arguments, and after pruning the narrowed shapes), so resume,
`python -m thinjax.evaluate` and the prune command rebuild it. Other examples:
``--config.model.example=convnext`` or ``vit`` (``width_mult`` scales each).
"""

from thinjax.config import short_cpu_recipe


def get_config():
    c = short_cpu_recipe("cifar10", epochs=13)
    c.model.example, c.model.width_mult = "mobilenetv2", 0.5
    c.train.eval_every_epochs = 1
    c.train.log_every = 50
    c.train.checkpoint_every = 390
    return c
