"""Network slimming (Liu et al. 2017) on CIFAR-10 ResNet-56 (w=16): sparsity training
with an L1 penalty on every BatchNorm scale, prune by |gamma| (global ranking, blocks may be
dropped), fine-tune.

Command (from a trained network; from scratch works too but takes the full 600 epochs):
    python -m thinjax.main --config=configs/prune_r56_slimming.py --workdir=runs/slim_r56 \
        --config.init_from=../shared/checkpoints/thinresnet-release/resnet56_width16_cifar10_ema.pt \
        --config.data.name=$HOME/data/cifar10-jpeg
Epochs 0-40: loss + 1e-4 x sum|gamma|; epoch 40: one-shot to 40% of the parameters by
BN-scale magnitude (an inner group may fall to 0: its block becomes the identity);
epochs 40-80: fine-tune (the penalty stays, small).
Expected: compare with the regular ThinResNet-56 of equal parameters (w=10: 335,540 params vs 342 k;
`python -m thinjax.cost --model=resnet56 --width=10`). Cost: ~30 min on one H100.
"""

from thinjax.config import study_cifar_recipe


def get_config():
    c = study_cifar_recipe("resnet56", 16, "cifar10", 10)
    c.train.epochs = 80
    c.train.eval_every_epochs = 5
    c.optim.lr, c.optim.warmup_epochs = 0.1, 1.0
    c.prune.bn_l1 = 1e-4
    c.prune.schedule, c.prune.start_epoch = "oneshot", 40.0
    c.prune.criterion, c.prune.allocation = "bn_scale", "global"
    c.prune.allow_block_removal = True
    c.prune.target_kind, c.prune.target = "params_fraction", 0.4
    return c
