"""thinjax checkpoints: an orbax CheckpointManager directory per run or model.

Each step directory holds two items:
  * ``state``: the array pytree (``params``, ``batch_stats``, and during training the
    optimizer state, EMA, step, RNG, ...), saved with ``StandardSave``;
  * ``meta``: JSON with the channel ``plan`` (or, for one of `thinjax.models.examples`,
    ``example``: its name, constructor arguments, input size and the shapes of the leaves
    pruning narrowed, `thinjax.trace.example.ExampleNet`), the model options and whatever
    describes where the weights came from (``source``, ``config``).

``load_network`` opens any of: a thinjax checkpoint directory (latest complete step), a
step directory inside one, a training workdir, a ``thinjax.convert`` output, or a
PyTorch/safetensors/npz file (imported on the fly); ``load_model`` the same, ThinResNets
alone. A pruning run's masks come back in
``meta["masks"]``. A released network by name (``zoo:NAME``) is `thinjax.load`'s: the zoo
sits above this module.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import traverse_util

from thinjax import fs
from thinjax.errors import CheckpointError
from thinjax.interop.torch import import_checkpoint
from thinjax.models.resnet import variable_shapes
from thinjax.plan import Plan
from thinjax.trace.example import (
    ExampleNet,
    abstract_variables,
    network_from_meta,
    network_meta,
)

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

PYTORCH_EXTS = (".pt", ".pth", ".bin", ".safetensors", ".npz")


def _orbax() -> ModuleType:
    """orbax.checkpoint, imported where a checkpoint directory is written or read: loading a
    PyTorch/safetensors file or a zoo network (most evaluations) goes without it (its
    import, with tensorstore's, is ~0.15 CPU-s of every evaluation's start-up)."""
    import orbax.checkpoint as ocp
    return ocp


def manager(directory: str, max_to_keep: int | None = None, **options) -> ocp.CheckpointManager:
    ocp = _orbax()
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **options)
    return ocp.CheckpointManager(fs.absolute(directory), options=opts, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves now: the caller decides when (force=True skips orbax's own save policy)."""
    ocp = _orbax()
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)


def _write_model(directory: str, plan: Plan | ExampleNet, variables: dict,
                 meta: dict | None) -> None:
    # written by this process alone (the caller picks one on multi-host jobs)
    ocp = _orbax()
    me = jax.process_index()
    fs.makedirs(directory)
    m = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False,  # nothing runs on after a failure
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me})))
    try:
        state = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        save(m, 0, state, {**network_meta(plan), **(meta or {})})
        m.wait_until_finished()
    finally:
        m.close()


def export_model(dst: str, plan: Plan | ExampleNet, variables: dict,
                 meta: dict | None = None, overwrite: bool = False,
                 sources: tuple[str, ...] = ()) -> str:
    """Writes a standalone model checkpoint (step 0) of `plan`'s network (a ThinResNet's
    plan or an example's description) atomically: all of it, or nothing
    (`fs.atomic_dir`). An existing `dst` is replaced only with `overwrite` and only if
    thinjax wrote it; `dst` may not be, lie inside or contain one of `sources`."""
    dst = fs.absolute(dst)
    fs.check_replaceable(dst, sources, overwrite)
    with fs.writing(dst), fs.atomic_dir(dst) as tmp:
        _write_model(tmp, plan, variables, meta)
    return dst


def _step_dir(path: str) -> tuple[str, int]:
    """(manager directory, step) of the newest complete step under `path`."""
    path = fs.absolute(path)
    if fs.isdir(os.path.join(path, "meta")) and fs.isdir(os.path.join(path, "state")):
        parent, name = os.path.split(path)
        if name.isdigit():
            return parent, int(name)
    if not fs.isdir(path):
        raise CheckpointError(f"no checkpoint at {path}: neither a thinjax checkpoint "
                              f"directory nor a file ({', '.join(PYTORCH_EXTS)})")
    m = _orbax().CheckpointManager(path)
    steps = sorted(m.all_steps(), reverse=True)
    m.close()
    if not steps:
        for sub in ("checkpoints", "model"):  # a training workdir, a thinjax.convert output
            if fs.isdir(os.path.join(path, sub)):
                return _step_dir(os.path.join(path, sub))
        raise CheckpointError(f"{path} holds no complete checkpoint step (looked for "
                              "numbered step directories with meta/ and state/)")
    return path, steps[0]


def load_model(path: str, use_ema: bool = False) -> tuple[Plan, dict, dict]:
    """(plan, {'params', 'batch_stats'}, meta) from a thinjax or PyTorch checkpoint of a
    ThinResNet (an example network's is refused: `load_network` reads both)."""
    net, variables, meta = load_network(path, use_ema)
    if not isinstance(net, Plan):
        raise CheckpointError(f"{meta.get('directory', path)}: holds an example network "
                              f"({net.describe()}), not a ThinResNet; this tool reads "
                              "ThinResNets (the train, evaluate and prune commands read both)")
    return net, variables, meta


def load_network(path: str, use_ema: bool = False
                 ) -> tuple[Plan | ExampleNet, dict, dict]:
    """(plan or example network, {'params', 'batch_stats'}, meta) from a thinjax or PyTorch
    checkpoint."""
    if path.startswith("zoo:"):  # a released network by name: resolved a layer above
        raise CheckpointError(f"{path}: a zoo name; load it with thinjax.load.load_model, "
                              "which fetches the file through thinjax.zoo")
    if os.path.isfile(path) and path.lower().endswith(PYTORCH_EXTS):
        plan, variables = import_checkpoint(path)
        check_finite(variables, where=path)
        return plan, variables, {"source": os.path.abspath(path)}
    directory, step = _step_dir(path)
    meta, state = _restore(directory, step)
    where = f"{directory} step {step}"
    net = network_from_meta(meta, where=where) if isinstance(meta, dict) else None
    if net is None:
        raise CheckpointError(f"{where}: meta has no channel plan")
    if use_ema and "ema_params" in state:  # a training checkpoint's EMA weights
        variables = {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
    else:
        variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    variables = _to_numpy(variables)
    if isinstance(net, Plan):
        check_shapes(net, variables, where=where)
    else:
        _check_example_shapes(net, variables, where)
    check_finite(variables, where=where)
    extra = {}
    if state.get("masks"):  # a pruning run's channel masks (checked where they are used)
        extra["masks"] = _to_numpy(state["masks"])
    return net, variables, {**meta, **extra, "step": step, "directory": directory,
                            "has_ema": "ema_params" in state}


def _restore(directory: str, step: int) -> tuple[Any, dict]:
    """(meta, state) of one step, every array on this process's first device."""
    ocp = _orbax()
    m = ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    try:
        meta = m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        state = m.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_host_target(m.item_metadata(step)["state"])))).state
    except Exception as e:
        raise CheckpointError(f"{directory} step {step}: cannot restore ({type(e).__name__}: "
                              f"{e}); the checkpoint is incomplete or corrupt") from e
    finally:
        m.close()
    return meta, state


def _check_example_shapes(net: ExampleNet, variables: dict, where: str) -> None:
    """Refuses variables whose leaves differ from what `net`'s module makes."""
    want = abstract_variables(net.module(), net.input_size, net.in_channels)
    for col in ("params", "batch_stats"):
        w = traverse_util.flatten_dict(want.get(col, {}), sep="/")
        g = traverse_util.flatten_dict(variables.get(col, {}), sep="/")
        for k in sorted(set(w) | set(g)):
            got = tuple(np.shape(g[k])) if k in g else "absent"
            need = tuple(w[k].shape) if k in w else "absent"
            if got != need:
                raise CheckpointError(f"{where}: {col}/{k} is {got} but {net.describe()} "
                                      f"makes {need}")


def _host_target(tree_metadata):
    """Restore target placing every array on this process's first device, whatever mesh
    (devices, processes) wrote the checkpoint."""
    sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        tree_metadata, is_leaf=lambda x: hasattr(x, "shape"))


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def check_shapes(plan: Plan, variables: dict, where: str = "variables") -> None:
    """Raises CheckpointError naming the first leaf whose shape disagrees with `plan`."""
    want = variable_shapes(plan)
    for col in ("params", "batch_stats"):
        w = traverse_util.flatten_dict(want[col], sep="/")
        g = traverse_util.flatten_dict(variables.get(col, {}), sep="/")
        for k in w:
            if k not in g:
                raise CheckpointError(f"{where}: {col}/{k} is missing (plan expects shape "
                                      f"{tuple(w[k].shape)})")
            if tuple(np.shape(g[k])) != tuple(w[k].shape):
                raise CheckpointError(f"{where}: {col}/{k} has shape {tuple(np.shape(g[k]))}, "
                                      f"the plan expects {tuple(w[k].shape)}")
        extra = sorted(set(g) - set(w))
        if extra:
            raise CheckpointError(f"{where}: {col}/{extra[0]} is not part of the plan")


def check_finite(variables: dict, where: str = "variables") -> None:
    """Raises CheckpointError naming the first array holding NaN or infinity: weights that
    compute nothing are never evaluated, converted or exported as if they did."""
    for col in ("params", "batch_stats"):
        for k, x in traverse_util.flatten_dict(variables.get(col, {}), sep="/").items():
            x = np.asarray(x)
            if x.dtype.kind not in "iub" and not np.all(np.isfinite(x.astype(np.float32))):
                raise CheckpointError(f"{where}: {col}/{k} holds non-finite values (NaN or "
                                      "infinity), so the network computes nothing; use an "
                                      "earlier checkpoint of the run, or retrain with a "
                                      "lower optim.lr")
