"""Torch-Pruning's channel groups (DepGraph, Fang et al., CVPR 2023) of a PyTorch twin,
written in Flax terms, to compare with groups traced from a Flax model's jaxpr.

The format. A group is a ``frozenset`` of entries ``(path, axis, start, stop)``:

* ``path``: the Flax variable's path in the variables dict, collection first, joined by
  ``/``: ``params/block3/expand/conv/kernel``, ``batch_stats/block3/expand/bn/mean``;
* ``axis``: the axis of that array that the group's channels index. Conv and transposed
  conv kernels are HWIO (``(kh, kw, in, out)``): output channels axis 3, input channels
  axis 2; a depthwise kernel ``(kh, kw, 1, C)`` is entered once, axis 3, for its tied
  input and output. Dense kernels are ``(in, out)``: output axis 1, input axis 0. Biases,
  BatchNorm ``scale``/``bias``/``mean``/``var``, LayerNorm ``scale``/``bias`` and bare
  ``(C,)`` parameters (ConvNeXt's layer scale ``gamma``): axis 0;
* ``start, stop``: the slice of that axis the group owns; channel k of the group is index
  ``start + k``. It is ``0, size`` except behind a concatenation: a U-Net encoder's output
  channels are input channels ``[f, 2f)`` of the decoder convolution that reads
  ``concat([upsampled, skip])``.

A group holds its producers' output slices (kernel, bias), every normalisation on its
channels, its consumers' input slices (conv, Dense, the classifier's rows) and anything
element-wise in between (residual adds merge streams into one group). The network's
input is in no group, and the classifier's output (the modules named in ``outputs``, by
default ``head``) is not prunable: groups that would prune it are left out.

``torch_pruning_groups(net, example_input)`` takes a twin from
`thinjax.models.examples.torch_twins` (module names = Flax paths); ``oracle_groups``
builds the twin of a Flax example module itself. Needs torch and torch-pruning (the
``test`` extra): imported by the tests alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from thinjax.errors import ThinjaxError, require
from thinjax.models.examples.torch_twins import flax_tensors, torch, twin_of

tp = require("torch_pruning", "test", "the Torch-Pruning oracle")
nn = torch.nn

Entry = tuple[str, int, int, int]  # (variable path, axis, start, stop)


def _axes(module: nn.Module, out: bool) -> dict[str, int]:
    """{torch attribute: the Flax axis it is pruned along} for `module`'s `out`put
    (else input) channels; {} for a module with no parameters (ops, activations)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        depthwise = module.groups == module.in_channels == module.out_channels > 1
        if module.groups > 1 and not depthwise:
            raise ThinjaxError(f"the oracle maps no grouped convolution but depthwise ones "
                               f"({module})")
        return {"weight": 3, "bias": 0} if out or depthwise else {"weight": 2}
    if isinstance(module, nn.Linear):
        return {"weight": 1, "bias": 0} if out else {"weight": 0}
    if isinstance(module, nn.BatchNorm2d):
        return {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}
    if isinstance(module, nn.LayerNorm):
        return {"weight": 0, "bias": 0}
    if next(module.parameters(recurse=False), None) is not None:
        raise ThinjaxError(f"the oracle cannot map the parameters of {module}")
    return {}


def _entries(dep, idxs, root_idxs, dg, names: dict) -> set[Entry]:
    """The Flax entries of one (dependency, indices) member of a Torch-Pruning group;
    `names` maps the id of each module and parameter of the network to its name."""
    target = dep.target.module
    if id(target) not in names:  # one of Torch-Pruning's op nodes (add, concat, ReLU...)
        return set()
    idxs, root_idxs = list(idxs), list(root_idxs)
    start, stop = min(idxs), max(idxs) + 1
    if [i - start for i in idxs] != root_idxs:  # channel k of the group at start + k
        raise ThinjaxError(f"{dep}: indices {idxs[:8]}... are not one slice of the group")
    if isinstance(target, nn.Parameter):  # a bare parameter: same layout in Flax
        path = "params/" + names[id(target)].replace(".", "/")
        return {(path, dep.target.pruning_dim, start, stop)}
    paths = flax_tensors(names[id(target)], target)
    return {(paths[attr][0], axis, start, stop)
            for attr, axis in _axes(target, dg.is_out_channel_pruning_fn(dep.handler)).items()
            if attr in paths}


def torch_pruning_groups(net: nn.Module, example_input, outputs: Sequence[str] = ("head",)
                         ) -> set[frozenset[Entry]]:
    """Torch-Pruning's coupled channel groups of twin `net` (traced on `example_input`,
    NCHW), in the Flax format of this module's docstring; the output channels of the
    modules named in `outputs` are not prunable."""
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example_input,
                                               verbose=False)
    modules = dict(net.named_modules())
    names = {id(x): n for n, x in [*modules.items(), *net.named_parameters()]}
    groups = set()
    for group in dg.get_all_groups(ignored_layers=[modules[o] for o in outputs]):
        entries = set()
        for item in group.items:
            entries |= _entries(item.dep, item.idxs, item.root_idxs, dg, names)
        groups.add(frozenset(entries))
    return groups


def oracle_groups(module, shape: tuple[int, int, int, int] = (1, 32, 32, 3)
                  ) -> set[frozenset[Entry]]:
    """`torch_pruning_groups` of the twin of Flax example `module` (MobileNetV2, ConvNeXt,
    UNet) for NHWC input `shape`; the weights play no part in the groups."""
    n, h, w, c = shape
    return torch_pruning_groups(twin_of(module).float(), torch.zeros(n, c, h, w))
