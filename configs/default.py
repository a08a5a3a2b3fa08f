"""Offline default (the README quick start): a short training run on the bundled sample.

Command:
    python -m thinjax.main --config=configs/default.py --workdir=runs/default
Expected: ThinResNet-20 w=8 (68,786 params, 10.31 M MACs) trained on the 2,500-image
CIFAR-10 sample for 10 epochs (190 steps) reaches roughly 40% top-1 on the sample's 1,000
test images: a check of the whole system, not a result. Cost: about 1-2 minutes on a
2-core CPU, no network. Rerunning the command resumes (here: finds the run finished).
"""

from thinjax.config import short_cpu_recipe


def get_config():
    c = short_cpu_recipe("sample:cifar10", epochs=10)
    c.data.eval_batch_size = 250
    c.train.eval_every_epochs = 5
    c.train.log_every = 19
    c.train.checkpoint_every = 95
    c.ema.decay = 0.95
    return c
