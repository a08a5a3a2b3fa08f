"""PyTorch ResNet state dicts -> thinjax (plan, Flax variables).

Reads torchvision names (``conv1``, ``bn1``, ``layerX.Y.convZ``, ``downsample.0/1``,
``fc``) and the ThinResNet release's names (``embed.0``, ``embed.1``, an optional
``module.`` prefix, an ``n_averaged`` entry), from ``.pt``/``.pth``/``.bin``
(`thinjax.interop.pt_reader`: PyTorch's zip format read without PyTorch; a checkpoint is
data, never code, and a file that holds more than tensors is refused as such),
``.safetensors`` or ``.npz``: no PyTorch needed. The plan is inferred from the tensor
shapes; strides are the standard ones (stage 1: 1, later stages: 2); a block index with no
tensors (layer1.0, layer1.2 but no layer1.1) is a removed block, the identity.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from thinjax.errors import CheckpointError, CheckpointFormatError
from thinjax.interop import pt_reader
from thinjax.models.resnet import variable_shapes
from thinjax.plan import BlockPlan, Plan, PlanError, StagePlan

StateDict = Mapping[str, np.ndarray]

_IGNORED = ("num_batches_tracked", "n_averaged")
_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)$")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict as numpy arrays from .pt/.pth, .safetensors or .npz."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".pt", ".pth", ".bin"):
            sd = pt_reader.load(path)  # no PyTorch: a restricted reader of its zip format
            if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            if not isinstance(sd, Mapping):
                raise CheckpointFormatError(f"{path}: expected a state dict (a mapping of names to "
                                   f"tensors), found {type(sd).__name__}")
            return {k: np.asarray(v) for k, v in sd.items()}
        if ext == ".safetensors":
            from safetensors.numpy import load_file  # optional path: .safetensors files only
            return dict(load_file(path))
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except CheckpointFormatError:
        raise
    except Exception as e:  # corrupt, truncated or code-carrying files: say which and why
        raise _unreadable(path, ext, e) from None
    raise CheckpointFormatError(f"{path}: unknown checkpoint format {ext!r}; use .pt, .pth, "
                       ".safetensors or .npz")


def _unreadable(path: str, ext: str, e: Exception) -> CheckpointFormatError:
    """The error for a file that cannot be read as plain tensors. PyTorch's own message
    for a pickle holding Python objects advises loading it with weights_only=False, which
    would run whatever code the file carries: never quoted."""
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        return CheckpointFormatError(
            f"{path}: not a plain tensor checkpoint: it holds Python objects that only "
            "running code from the file could rebuild, and thinjax never executes code from "
            "checkpoints. Re-save it as a plain state dict (torch.save(model.state_dict())) "
            "or as .safetensors, from a source you trust")
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return CheckpointFormatError(f"{path}: cannot read this {ext} checkpoint "
                                 f"({type(e).__name__}: {first}). Is the file complete and "
                                 "of the format its name says?")


def _normalise_keys(sd: StateDict) -> dict[str, np.ndarray]:
    keys = [k for k in sd if k.split(".")[-1] not in _IGNORED]
    if keys and all(k.startswith("module.") for k in keys):
        keys_map = {k: k[len("module."):] for k in keys}
    else:
        keys_map = {k: k for k in keys}
    out = {}
    for k, nk in keys_map.items():
        nk = re.sub(r"^embed\.0\.", "conv1.", nk)
        nk = re.sub(r"^embed\.1\.", "bn1.", nk)
        out[nk] = np.asarray(sd[k])
    return out


def _shape(sd, key, ndim):
    if key not in sd:
        raise CheckpointFormatError(f"missing key {key!r}: this state dict does not fit a ResNet")
    a = sd[key]
    if a.ndim != ndim:
        raise CheckpointFormatError(f"{key}: expected a {ndim}-d tensor, got shape "
                                    f"{tuple(a.shape)}")
    return a.shape


def infer_plan(sd: StateDict) -> Plan:
    """The channel plan of a (normalised) torchvision-style ResNet state dict."""
    sd = _normalise_keys(sd)
    stem = _shape(sd, "conv1.weight", 4)
    stem_kind = {7: "imagenet", 3: "cifar"}.get(stem[2])
    if stem_kind is None:
        raise CheckpointFormatError(f"conv1.weight: stem kernel {stem[2]}x{stem[3]} is neither "
                                    "7x7 "
                           "(ImageNet stem) nor 3x3 (CIFAR stem)")
    blocks: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for k in sd:
        m = _BLOCK_RE.match(k)
        if m:
            blocks[int(m[1])][int(m[2])].add(m[3])
        elif not re.match(r"^(conv1\.weight|bn1\.\w+|fc\.(weight|bias))$", k):
            raise CheckpointFormatError(f"unexpected key {k!r}: not part of a torchvision-style "
                                        f"ResNet "
                               "(expected conv1/embed.0, bn1/embed.1, layerX.Y.*, fc)")
    if sorted(blocks) != list(range(1, len(blocks) + 1)) or not blocks:
        raise CheckpointFormatError(f"stages found: {sorted(blocks)}; expected "
                                    "layer1..layerN")
    bottleneck = any("conv3" in parts for st in blocks.values() for parts in st.values())
    n_inner = 2 if bottleneck else 1
    stages, cin = [], stem[0]
    for s in sorted(blocks):
        idx = sorted(blocks[s])
        if idx[0] != 0:
            raise CheckpointFormatError(f"layer{s}: block indices {idx} do not start at 0")
        out_w = None
        bps = []
        for b in range(idx[-1] + 1):
            pre = f"layer{s}.{b}"
            if b not in blocks[s]:  # a block without tensors: its branch was removed
                bps.append(BlockPlan((0,) * n_inner))
                continue
            convs = [_shape(sd, f"{pre}.conv{i}.weight", 4) for i in range(1, n_inner + 2)]
            inner = tuple(int(c[0]) for c in convs[:-1])
            out = int(convs[-1][0])
            if out_w is None:
                out_w = out
            elif out != out_w:
                raise CheckpointFormatError(f"{pre}.conv{n_inner + 1}.weight: output {out} "
                                            f"channels, but "
                                   f"the stage's residual width is {out_w}")
            bps.append(BlockPlan(inner, proj=f"{pre}.downsample.0.weight" in sd))
        stages.append(StagePlan(out_w, 1 if s == 1 else 2, tuple(bps)))
        cin = out_w
    del cin
    fc = _shape(sd, "fc.weight", 2)
    try:
        return Plan("bottleneck" if bottleneck else "basic", stem_kind, int(stem[0]),
                    tuple(stages), int(fc[0]), in_channels=int(stem[1]))
    except PlanError as e:
        raise CheckpointFormatError(f"the state dict's shapes give an impossible plan: {e}") from e


def _flax_path_to_torch(path: tuple[str, ...]) -> tuple[str, str | None]:
    """('stage2','block0','proj','conv','kernel') -> ('layer2.0.downsample.0.weight', None)."""
    if path[0] == "head":
        return ("fc.weight" if path[1] == "kernel" else "fc.bias"), None
    leaf = path[-1]
    if path[0] == "stem":
        base = "conv1" if path[1] == "conv" else "bn1"
    else:
        s, b = int(path[0][5:]), int(path[1][5:])
        if path[2] == "proj":
            base = f"layer{s}.{b}.downsample." + ("0" if path[3] == "conv" else "1")
        else:
            base = f"layer{s}.{b}.{path[2]}"
    field = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
             "var": "running_var"}[leaf]
    return f"{base}.{field}", leaf


def to_variables(sd: StateDict, plan: Plan | None = None) -> tuple[Plan, dict]:
    """(plan, {'params': ..., 'batch_stats': ...}) from a PyTorch ResNet state dict.

    Kernels go from PyTorch OIHW to Flax HWIO; the classifier from (out, in) to (in, out).
    Raises CheckpointFormatError naming the first key whose shape does not fit the plan.
    """
    plan = plan or infer_plan(sd)
    nsd = _normalise_keys(sd)
    shapes = variable_shapes(plan)
    used = set()
    out = {}
    for col in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(shapes[col])
        new = {}
        for path, spec in flat.items():
            key, leaf = _flax_path_to_torch(path)
            if key not in nsd:
                raise CheckpointFormatError(f"missing key {key!r} (for {'/'.join(path)})")
            a = np.asarray(nsd[key], np.float32)
            if a.ndim == 4:
                a = a.transpose(2, 3, 1, 0)
            elif a.ndim == 2:
                a = a.T
            if a.shape != tuple(spec.shape):
                raise CheckpointFormatError(f"{key}: shape {tuple(nsd[key].shape)} does not fit "
                                            f"the plan "
                                   f"(Flax {'/'.join(path)} expects {tuple(spec.shape)})")
            new[path] = a
            used.add(key)
        out[col] = traverse_util.unflatten_dict(new)
    extra = sorted(set(nsd) - used)
    if extra:
        raise CheckpointFormatError(f"unexpected key {extra[0]!r}: no parameter of the plan "
                                    "uses it")
    return plan, out


def to_state_dict(plan: Plan, variables: dict,
                  style: str = "torchvision") -> dict[str, np.ndarray]:
    """Flax variables -> a PyTorch-layout state dict (numpy), for export and tests."""
    sd = {}
    for col in ("params", "batch_stats"):
        for path, a in traverse_util.flatten_dict(variables[col]).items():
            key, _ = _flax_path_to_torch(path)
            a = np.asarray(a)
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)
            sd[key] = np.ascontiguousarray(a)  # writers such as safetensors ignore strides
    if style == "release":
        sd = {re.sub(r"^conv1\.", "embed.0.", re.sub(r"^bn1\.", "embed.1.", k)): v
              for k, v in sd.items()}
    return sd


def import_checkpoint(path: str) -> tuple[Plan, dict]:
    """Reads a PyTorch ResNet checkpoint file: (plan, Flax variables)."""
    try:
        return to_variables(load_state_dict(path))
    except CheckpointFormatError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointFormatError(f"{path}: {e}") from e
