"""What a training run is made of: the fixed setting (data sizes, schedule, mesh, step
options) and, per network, the model, optimizer and jitted step.

A network (`thinjax.trace.networks`) is a ThinResNet's plan or an example network pruned
on traced groups. A `Run` belongs to one network and is rebuilt, never mutated, when
pruning materialises a smaller one (`Setting.run_for(smaller)`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from thinjax import optim, sharding
from thinjax.errors import ConfigError, DataError
from thinjax.prune.spec import PruneSpec
from thinjax.settings import Settings
from thinjax.trace.networks import Network
from thinjax.train import state as state_lib
from thinjax.train.step import StepConfig, train_step

# XLA options for code that runs once per run (the state's init): the backend's optimisation
# passes would take ~10 s of compilation for a ResNet-20 on a CPU and save nothing.
RUN_ONCE = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Run:
    """One network's model, optimizer and jitted train step."""
    net: Network
    model: Any
    tx: optax.GradientTransformation
    step: Callable  # (state, global batch) -> (state, metrics), donating the state

    @property
    def plan(self):
        """What rebuilds the network: its `Plan` (an `ExampleNet` for an example)."""
        return self.net.desc


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything about a run that does not depend on its plan."""
    config: Settings
    mesh: Any
    global_batch: int
    n_train: int
    steps_per_epoch: int
    total: int
    image_size: int
    schedule: Callable
    step_cfg: StepConfig
    ema_decay: float
    rng: jax.Array

    @property
    def prune(self) -> PruneSpec:
        return self.config.prune

    @property
    def epochs(self) -> float:
        return self.total / self.steps_per_epoch

    @property
    def repl(self):
        return sharding.replicated(self.mesh)

    def model_and_tx(self, net: Network):
        """(model, optimizer) for `net`, without a jitted step: what a state's shapes need."""
        m = net.model
        size = self.image_size
        shapes = jax.eval_shape(lambda: m.init(self.rng, np.zeros((1, size, size, 3),
                                                                  np.float32)))
        return m, optim.make_optimizer(self.config.optim, self.schedule, shapes["params"])

    def run_for(self, net: Network) -> Run:
        """(model, optimizer, jitted step) for `net`. A pruning regulariser
        (``step_cfg.prune_reg``) built for another network (the dense one, when `net` is
        materialised) is left out of the step."""
        m, tx = self.model_and_tx(net)
        step_cfg = self.step_cfg
        reg = step_cfg.prune_reg
        if reg is not None and not net.keeps(reg):  # the materialised network
            step_cfg = dataclasses.replace(step_cfg, prune_reg=None)
        f = jax.jit(functools.partial(train_step, model=m, tx=tx, schedule=self.schedule,
                                      cfg=step_cfg, net=net),
                    in_shardings=(self.repl, sharding.batch_sharding(self.mesh)),
                    out_shardings=(self.repl, self.repl), donate_argnums=0)
        return Run(net, m, tx, f)

    def init_state(self, net: Network, tx, init_variables: dict | None, masks: dict):
        """A fresh state on the mesh: from scratch, or from given weights."""
        shape = (1, self.image_size, self.image_size, net.in_channels)
        if init_variables is None:
            f = functools.partial(state_lib.create, net.model, tx, input_shape=shape,
                                  masks=masks)
            return jax.jit(f, out_shardings=self.repl, compiler_options=RUN_ONCE)(self.rng)
        f = functools.partial(state_lib.from_variables, tx=tx, masks=masks)
        return jax.jit(f, out_shardings=self.repl, compiler_options=RUN_ONCE)(
            init_variables, rng=self.rng)

    def abstract_state(self, net: Network, tx, masks: dict):
        """The state's shapes, placed on the mesh: a restore target."""
        shape = (1, self.image_size, self.image_size, net.in_channels)
        st = jax.eval_shape(functools.partial(state_lib.create, net.model, tx,
                                              input_shape=shape, masks=masks), self.rng)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=self.repl), st)


def make_setting(cfg: Settings, plan: Network, source, mesh) -> Setting:
    """Checks the data against the run and derives its sizes, schedule and step options
    (`plan`: the network, or anything with its ``num_classes``)."""
    if source.num_classes != plan.num_classes:
        raise DataError(f"the model has {plan.num_classes} classes but data {cfg.data.name!r} "
                        f"has {source.num_classes}; set config.model.num_classes")
    gb = cfg.train.batch_size
    if gb % mesh.shape["data"] or gb % cfg.train.grad_accum:
        raise ConfigError(f"train.batch_size {gb} must divide evenly over "
                          f"{mesh.shape['data']} data-parallel devices and "
                          f"{cfg.train.grad_accum} micro-batches")
    n_train = source.num_examples(cfg.data.train_split)
    steps_per_epoch = n_train // gb
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size {gb} exceeds the {n_train} training examples")
    total = cfg.train.total_steps or int(round(cfg.train.epochs * steps_per_epoch))
    if total < 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs} gives {total} steps; train for "
                          "at least one step")
    schedule = optim.learning_rate_schedule(cfg.optim, gb, steps_per_epoch, total)
    ema_d = optim.ema_decay(cfg.ema, gb, total / steps_per_epoch)
    return Setting(cfg, mesh, gb, n_train, steps_per_epoch, total, cfg.data.image_size,
                   schedule, _step_config(cfg, plan, steps_per_epoch, ema_d), ema_d,
                   jax.random.PRNGKey(cfg.seed))


def _step_config(cfg: Settings, plan: Network, steps_per_epoch: int,
                 ema_decay: float) -> StepConfig:
    t = cfg.train
    return StepConfig(
        num_classes=plan.num_classes, label_smoothing=t.label_smoothing,
        mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, loss=t.loss,
        grad_accum=t.grad_accum, ema=cfg.ema.enabled, ema_decay=ema_decay,
        ema_every=cfg.ema.every,
        ema_copy_until=int(cfg.optim.warmup_epochs * steps_per_epoch)
        if cfg.ema.warmup_copy else 0, bn_l1=cfg.prune.bn_l1)
