"""The Python front door: `create_model`, `list_models`, `prune_model` and the `Network`
bundle they return (``thinjax.create_model`` etc., loaded on first use; docs/python_api.md).

    net = thinjax.create_model("resnet56", width=16, pretrained=True)    # the release's
    small = thinjax.prune_model(net, target=0.5)                         # half its MACs
    model, variables = small                                             # Flax module + tree

Each is a thin layer over the library: `thinjax.plan.plan_from_width` and
`thinjax.models.build_model` make networks, `thinjax.zoo` reads released weights, and a
`thinjax.prune.spec.PruneSpec` drives `thinjax.prune.pruner.compute_masks` and
`thinjax.prune.materialize.materialize` (the same steps as ``python -m thinjax.convert``).
The pruning function is ``prune_model``, not ``prune``: ``thinjax.prune`` is the pruning
subpackage, and a function of that name would be hidden by it as soon as it is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from thinjax import zoo
from thinjax.checkpoint import check_shapes
from thinjax.cost import Cost, check_input_size, count
from thinjax.errors import ConfigError, TargetError
from thinjax.models.resnet import ResNet, build_model, init_variables
from thinjax.plan import ARCHS, Plan, default_input_size, plan_from_width
from thinjax.prune import spec as prune_spec
from thinjax.prune.criteria import needs_data
from thinjax.prune.materialize import materialize
from thinjax.prune.pruner import check_target, compute_masks
from thinjax.prune.recalibrate import recalibrate_bn as recalibrate
from thinjax.prune.spec import PruneSpec

__all__ = ["Network", "Pruning", "create_model", "list_models", "prune_model"]

DATASETS = tuple(zoo.NUM_CLASSES)  # cifar10, cifar100, imagenet
# model options create_model passes to the module (ResNet's fields but the plan)
MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(ResNet)
                      if f.name not in ("plan", "parent", "name", "dtype"))
# the PruneSpec fields of a one-shot decision (the rest are a training schedule's)
ONE_SHOT = ("criterion", "score_members", "fpgm_p", "reduce", "allocation", "normalization",
            "group_ratios", "target_kind", "target", "round_to", "allow_block_removal",
            "taylor_batches")


@dataclasses.dataclass(frozen=True, eq=False)
class Pruning:
    """How a pruned `Network` was cut: the decision, the network it was cut from (its
    plan) and the keep-masks on that network's channel groups (1 = kept). Without BN
    recalibration the pruned network computes what that network computes with these
    masks: ``dense.model.apply(dense.variables, x, masks=pruning.masks)``."""
    spec: PruneSpec
    dense_plan: Plan
    masks: dict[str, np.ndarray]
    input_size: int  # the image size its MACs were counted at
    recalibrated: int = 0  # batches its BN statistics were re-estimated on (0: none)


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A network: its Flax module (`model`, a `thinjax.models.ResNet`), its variables
    (``{'params', 'batch_stats'}``), its channel plan, a name saying what it is, and for
    a pruned one how it was cut (`pruning`). ``model, variables = net`` unpacks it;
    ``net(images)`` gives eval-mode logits (NHWC float images; not jitted: for speed,
    ``jax.jit(net.model.apply)``)."""
    model: ResNet = dataclasses.field(repr=False)
    variables: dict = dataclasses.field(repr=False)
    name: str = ""
    pruning: Pruning | None = dataclasses.field(default=None, repr=False)

    @property
    def plan(self) -> Plan:
        return self.model.plan

    @property
    def input_size(self) -> int:
        """The image size the network is made for (224 ImageNet stem, 32 CIFAR)."""
        return self.pruning.input_size if self.pruning else default_input_size(self.plan)

    def cost(self, input_size: int | None = None) -> Cost:
        """Params and MACs (`thinjax.cost.count`) at `input_size` (default: input_size)."""
        return count(self.plan, input_size or self.input_size)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.variables))

    def __call__(self, images) -> jax.Array:
        return self.model.apply(self.variables, images)


# -- names ------------------------------------------------------------------------------


def _natural(name: str) -> list:
    """Sort key: numbers by value (resnet20_w2 before resnet20_w10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _zoo_names() -> dict[str, zoo.Entry]:
    return {e.name: e for e in zoo.manifest()}


def list_models(pattern: str = "*", *, pretrained: bool | None = None) -> list[str]:
    """The names `create_model` takes that match the glob `pattern` (fnmatch: ``*``,
    ``?``, ``[...]``), naturally sorted: architectures (``resnet56``, any width) and
    released networks (``resnet56_w12_cifar10``). ``pretrained=True``: only the released
    ones (those have weights); ``False``: only the architectures; None: both."""
    if pretrained not in (None, True, False):
        raise ConfigError(f"pretrained={pretrained!r}: give True, False or None")
    names = ([] if pretrained is True else list(ARCHS)) + \
        ([] if pretrained is False else list(_zoo_names()))
    return sorted(fnmatch.filter(names, pattern), key=_natural)


def _unknown(name: str) -> ConfigError:
    known = [*ARCHS, *_zoo_names()]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else \
        f"architectures: {', '.join(sorted(ARCHS, key=_natural))}"
    return ConfigError(f"name={name!r}: no such model; {hint} (thinjax.list_models() lists "
                       "them all)")


def _resolve(name: str, width: int | None, dataset: str | None
             ) -> tuple[str, int | None, str | None]:
    """(architecture, width, dataset) of `name`, an architecture or a released network."""
    if not isinstance(name, str):
        raise ConfigError(f"name={name!r}: give a model name, e.g. 'resnet20'")
    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"dataset={dataset!r}: unknown; use one of {', '.join(DATASETS)}")
    key = name.removeprefix("zoo:")
    e = _zoo_names().get(key)
    if e is None:
        if key not in ARCHS:
            raise _unknown(key)
        return key, width, dataset
    for field, given, own in (("width", width, e.width), ("dataset", dataset, e.dataset)):
        if given is not None and given != own:
            raise ConfigError(f"{field}={given!r}: {key} has {field} {own!r}; leave {field} "
                              f"out, or name the architecture ({e.arch!r}) instead")
    return e.arch, e.width, e.dataset


# -- create_model ----------------------------------------------------------------------


def create_model(name: str, *, width: int | None = None, pretrained: bool = False,
                 dataset: str | None = None, num_classes: int | None = None,
                 base_width: int | None = None, dtype: Any = "float32", seed: int = 0,
                 **options: Any) -> Network:
    """A `Network`: `name` is an architecture (``resnet20``, ``resnet56``, ``resnet50``,
    ``resnet18_cifar``, ...: `thinjax.plan.ARCHS`) or a released network
    (``resnet20_w8_cifar10``, optionally ``zoo:``-prefixed); `list_models` lists both.

    ``pretrained=True`` loads the release's weights through `thinjax.zoo` (from
    ``$THINJAX_ZOO_DIR`` when set, else the cache or a checked download); an architecture
    name then needs the `width` of a released network. Otherwise the weights are a fresh
    Flax initialisation from `seed` (``width`` None: the architecture's usual width, 16
    for CIFAR ResNet-20...110, 64 otherwise). `dataset` (cifar10 | cifar100 | imagenet;
    default: imagenet for the ImageNet stem, else cifar10) gives the number of classes
    unless `num_classes` does. `dtype` is the compute dtype (``"bfloat16"``; the weights
    stay float32); `options` are the module's other fields (``zero_init_last_bn``,
    ``bn_momentum``, ``bn_epsilon``, ``conv_impl``, ...). Bad input raises ConfigError
    (or PlanError, ZooError) naming the argument."""
    arch, width, dataset = _resolve(name, width, dataset)
    bad = sorted(set(options) - set(MODEL_OPTIONS))
    if bad:
        raise ConfigError(f"{bad[0]}={options[bad[0]]!r}: not a model option; valid: "
                          f"{', '.join(MODEL_OPTIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed={seed!r}: must be a whole number")
    if pretrained:
        plan, variables, label = _released(arch, width, dataset, num_classes, base_width)
    else:
        classes = num_classes or (zoo.NUM_CLASSES[dataset] if dataset else None)
        plan = plan_from_width(arch, width, classes, base_width)
        label = f"{arch}_w{plan.stem_width}" + (f"_{dataset}" if dataset else "") + \
            f" (random init, seed {seed})"
    try:
        model = build_model(plan, dtype=dtype, **options)
    except TypeError as e:
        raise ConfigError(f"dtype={dtype!r}: not a dtype ({e}); use e.g. 'float32' or "
                          "'bfloat16'") from None
    if not pretrained:
        variables = init_variables(model, jax.random.PRNGKey(int(seed)),
                                   default_input_size(plan))
    return Network(model, variables, name=label)


def _released(arch: str, width: int | None, dataset: str | None, num_classes: int | None,
              base_width: int | None) -> tuple[Plan, dict, str]:
    """(plan, variables, name) of the released `arch` at `width` on `dataset`."""
    dataset = dataset or ("imagenet" if ARCHS[arch][2] == "imagenet" else "cifar10")
    have = sorted(e.width for e in zoo.manifest() if e.arch == arch and e.dataset == dataset)
    if not have:
        raise ConfigError(f"pretrained=True: the release has no {arch} trained on {dataset}; "
                          "thinjax.list_models(pretrained=True) lists the released networks")
    if width is None or width not in have:
        start = "pretrained=True needs a width:" if width is None else f"width={width}:"
        raise ConfigError(f"{start} the release's {arch} on {dataset} has widths "
                          f"{', '.join(map(str, have))}, e.g. create_model({arch!r}, "
                          f"width={have[len(have) // 2]}, pretrained=True)")
    if base_width is not None:
        raise ConfigError(f"base_width={base_width}: a released network has the release's "
                          "base width; leave base_width out with pretrained=True")
    name = f"{arch}_w{width}_{dataset}"
    plan, variables = zoo.load(name)
    if num_classes is not None and num_classes != plan.num_classes:
        raise ConfigError(f"num_classes={num_classes}: {name} has {plan.num_classes} "
                          "classes; leave num_classes out with pretrained=True")
    return plan, variables, name


# -- prune_model -----------------------------------------------------------------------


def prune_model(network: Network | Plan | ResNet, variables: dict | None = None, *,
                target: float, target_kind: str = "macs_fraction", criterion: str = "l1",
                allocation: str = "global", round_to: int = 1,
                data: Iterable[Mapping] | Mapping | None = None, recalibrate_bn: int = 0,
                input_size: int | None = None, seed: int = 0, **options: Any) -> Network:
    """One-shot structured pruning: a new, genuinely smaller `Network` whose cost meets
    `target` within 1% (its `pruning` says how it was cut). Not fine-tuned.

    `network`: a `Network` (`create_model`, or an earlier `prune_model`: targets are then
    relative to it), or a `Plan` or a `thinjax.models.ResNet` with its `variables`.
    `target_kind`: ``macs_fraction`` / ``params_fraction`` (of the network's MACs /
    params; ``target=0.5`` halves them), ``macs`` / ``params`` (counts, at `input_size`,
    default the network's) or ``ratio`` (the fraction of channels removed). `criterion`
    scores channels (l1, l2, bn_scale, fpgm, group_norm, random, taylor, hrank:
    `thinjax.prune.criteria`); `allocation` (global | uniform | explicit) spreads the
    removal; every channel count stays a multiple of `round_to`. `data`, an iterable of
    ``{'image': NHWC float, 'label': int}`` batches (or one batch), feeds the criteria
    that need it (taylor, hrank; the others ignore it) and, with ``recalibrate_bn=N``, the
    re-estimation of the BN statistics on N batches after the cut
    (`thinjax.prune.recalibrate`). `options`: the other fields of a one-shot `PruneSpec`
    (score_members, fpgm_p, reduce, normalization, group_ratios, allow_block_removal,
    taylor_batches); `seed` feeds the random criterion. Bad values raise ConfigError or
    TargetError naming the field."""
    src = _as_network(network, variables)
    spec = _spec(criterion, target_kind, target, allocation, round_to, options)
    check_input_size(input_size, "input_size")
    if isinstance(recalibrate_bn, bool) or not isinstance(recalibrate_bn, int) \
            or recalibrate_bn < 0:
        raise ConfigError(f"recalibrate_bn={recalibrate_bn!r}: a number of batches >= 0")
    size = input_size or src.input_size
    check_target(src.plan, None, size, spec.target_kind, spec.target, prefix="")
    needs = f"criterion={spec.criterion!r}" if needs_data(spec.criterion) else None
    alloc = compute_masks(src.plan, src.variables, spec, spec.goal(), model=src.model,
                          batches=_batches(data, needs), input_size=size, seed=seed)
    if alloc.plan == src.plan:
        raise TargetError(f"target_kind={spec.target_kind}, target={spec.target:g}: removes "
                          "no channel (rounding keeps every group whole); give a lower "
                          "target or a smaller round_to")
    new_plan, new_variables = materialize(src.plan, alloc.masks, src.variables)
    model = src.model.clone(plan=new_plan)
    how = f"{spec.criterion} {spec.allocation} to {spec.target_kind}={spec.target:g}"
    if recalibrate_bn:
        new_variables = recalibrate(model, new_variables, _batches(
            data, f"recalibrate_bn={recalibrate_bn}"), recalibrate_bn)
        how += f", BN recalibrated on {recalibrate_bn} batches"
    return Network(model, new_variables, name=f"{src.name or 'network'}, pruned ({how})",
                   pruning=Pruning(spec, src.plan, alloc.masks, size, recalibrate_bn))


def _spec(criterion: str, target_kind: str, target: float, allocation: str, round_to: int,
          options: dict[str, Any]) -> PruneSpec:
    """The one-shot `PruneSpec` of prune_model's arguments; errors name the argument."""
    bad = sorted(set(options) - set(ONE_SHOT))
    if bad:
        raise ConfigError(f"{bad[0]}={options[bad[0]]!r}: not an option of prune_model; "
                          f"valid: {', '.join(ONE_SHOT)}")
    return prune_spec.from_config(dict(criterion=criterion, target_kind=target_kind,
                                       target=target, allocation=allocation,
                                       round_to=round_to, **options), where="")


def _as_network(network: Network | Plan | ResNet, variables: dict | None) -> Network:
    """`network` as a `Network`, its variables checked against its plan."""
    if isinstance(network, Network):
        if variables is not None:
            raise ConfigError("variables: a Network carries its own; leave variables out")
        return network
    if not isinstance(network, (Plan, ResNet)):
        raise ConfigError(f"network: got {type(network).__name__}; give a Network "
                          "(thinjax.create_model), or a Plan or ResNet with its variables")
    if variables is None:
        raise ConfigError(f"variables: a {type(network).__name__} needs its variables "
                          "({'params', 'batch_stats'}): prune_model(plan, variables, ...)")
    model = network if isinstance(network, ResNet) else build_model(network)
    check_shapes(model.plan, variables, where="variables")
    return Network(model, variables)


def _batches(data: Iterable[Mapping] | Mapping | None, needs: str | None
             ) -> Iterator[Mapping] | None:
    """The batches `needs` (the argument that reads them; None: nothing) reads, checked as
    they come. A list is read from its start by each user; an iterator goes on."""
    if needs is None:
        return None
    example = ("thinjax.data.eval_batches(thinjax.data.get_source('sample:cifar10'), "
               "'test', 64)")
    if data is None:
        raise ConfigError(f"{needs} needs data: pass data=, an iterable of "
                          f"{{'image', 'label'}} batches, e.g. data={example}")
    if isinstance(data, Mapping):
        data = [data]
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ConfigError(f"data={data!r}: give an iterable of {{'image', 'label'}} "
                          f"batches, not a {type(data).__name__}, e.g. data={example}")
    return _checked(data)


def _checked(data: Iterable[Mapping]) -> Iterator[Mapping]:
    n = 0
    for n, b in enumerate(data, 1):
        if not isinstance(b, Mapping) or "image" not in b or "label" not in b:
            raise ConfigError(f"data: batch {n} is a {type(b).__name__}"
                              f"{' without image or label' if isinstance(b, Mapping) else ''}"
                              "; each batch is a mapping {'image': NHWC, 'label': ints}")
        yield b
    if n == 0:
        raise ConfigError("data: the iterable gave no batches")
