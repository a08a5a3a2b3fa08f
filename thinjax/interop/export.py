"""Any thinjax network (regular, pruned, with removed blocks) out to ONNX, PyTorch or TFLite,
checked in the format's own runtime.

    from thinjax.interop.export import export
    summary = export(plan, variables, "onnx", "r56.onnx")   # written only if it checks

Formats:
  * ``torch``: the state dict in the ThinResNet release's key names (``embed.0``,
    ``layerX.Y.convZ``, ``downsample.0/1``, ``fc``; loadable by the release's code for
    regular plans, by thinjax's importer for any) and ``<name>.plan.json`` beside it;
    ``thinjax.interop.torch_module.load_exported(path)`` rebuilds it as a ``TorchResNet``.
    Checked with that module.
  * ``onnx``: traced from ``TorchResNet`` in eval mode with PyTorch's TorchScript-based
    exporter (``dynamo=False``: the dynamo exporter needs onnxscript), opset 17, constant
    folding on: every BatchNorm is folded into its convolution, so the graph holds only
    Conv, Relu, Add, MaxPool, ReduceMean and Gemm. Input ``images`` (NCHW, float32,
    normalised as for thinjax), output ``logits``. Checked in onnxruntime (CPU).
  * ``tflite``: float32, from a ``tf.function`` rebuild of the plan
    (`thinjax.interop.tf_module`, BatchNorm folded) through ``tf.lite.TFLiteConverter``.
    Input NHWC. Checked with the TFLite interpreter.

ONNX and TFLite files describe themselves (input layout and size, mean/std, class names, the
plan): `thinjax.interop.metadata`.

``batch_size`` fixes the batch dimension (default: any batch); ``input_size`` fixes the
image size (default 32 for the CIFAR stem, 224 for the ImageNet stem). The check runs
real CIFAR-10 images from the bundled sample (resized to ``input_size``) through thinjax
and the exported model and requires the largest logit difference to be within
``tolerance`` (1e-4) of the largest thinjax logit. Outputs are written to temporary files
beside the destination and renamed at the end: a failed export leaves nothing behind; an
existing output is refused unless ``overwrite``, and even then replaced only if it is an
export in that format (never a directory or another file), and never the input.

torch, onnx, onnxruntime and tensorflow are imported only when used; a missing one is an
error naming ``pip install 'thinjax[export]'``.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from thinjax import cache, fs, pixels
from thinjax.cost import count
from thinjax.errors import OutputError, ThinjaxError
from thinjax.errors import require as require_extra
from thinjax.interop import metadata
from thinjax.interop.quiet import stderr_without
from thinjax.interop.torch import to_state_dict
from thinjax.models import fold
from thinjax.plan import Plan, default_input_size

FORMATS = ("onnx", "torch", "tflite")
SAMPLE_ZIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "assets", "cifar10_sample.zip")
OPSET = 17


class ExportError(ThinjaxError, RuntimeError):
    """An export that failed or whose output does not compute thinjax's logits."""


class MissingExportDependency(ExportError, ImportError):
    """A package that an export format needs is not installed."""


def require(module: str, fmt: str) -> Any:
    """Imports `module`, or raises MissingExportDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExportDependency(
            f"--format={fmt} needs the Python package {module.split('.')[0]!r}, which is not "
            "installed: pip install 'thinjax[export]'") from e


def output_paths(fmt: str, output: str) -> list[str]:
    """The files an export to `output` writes: the export and its plan beside it
    (``NAME.plan.json``: what a torch export is rebuilt from, and for every format the
    signature that it is thinjax's, which ``--overwrite`` requires)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return [output, os.path.splitext(output)[0] + ".plan.json"]  # = torch_module.plan_file_for


def _is_plan_file(path: str) -> bool:
    try:
        with open(path) as f:
            return "stages" in json.load(f)
    except (ValueError, OSError, TypeError):
        return False


def looks_like(fmt: str, path: str) -> bool:
    """Whether the existing file `path` is an export in `fmt` that thinjax wrote (its
    format's signature and its plan beside it), or such an export's ``.plan.json``: what
    ``--overwrite`` may replace. A user's zip, .pt or document carries neither."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    if path.endswith(".plan.json"):
        return _is_plan_file(path)
    if not _is_plan_file(os.path.splitext(path)[0] + ".plan.json"):
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    if fmt == "tflite":
        return head[4:8] == b"TFL3"
    if fmt == "torch":
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("/data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return head[:1] == b"\x08"  # onnx: a ModelProto starts with its ir_version field


def _zoo_dirs() -> list[str]:
    """The zoo's folders that exist here: its download cache and $THINJAX_ZOO_DIR."""
    return [d for d in (cache.zoo_dir(), cache.zoo_local_dir()) if d and os.path.isdir(d)]


def _input_path(source: str | None) -> list[str]:
    """The input as paths: a zoo name stands for the zoo's folders, where its file is when
    it has one here (the name itself is checked where it is loaded)."""
    if not source:
        return []
    return _zoo_dirs() if source.startswith("zoo:") else [source]


def check_output(fmt: str, output: str, overwrite: bool, source: str | None = None) -> list[str]:
    """The absolute output paths; OutputError if one is the input (or inside it) or lies
    in the zoo's folders, exists and not `overwrite`, or exists but is no thinjax export in
    `fmt` (never replaced)."""
    paths = [os.path.abspath(p) for p in output_paths(fmt, output)]
    for p in paths:
        for d in _zoo_dirs():
            real = os.path.realpath(d)
            if os.path.commonpath([os.path.realpath(p), real]) == real:
                raise OutputError(f"--output={output} lies in the model zoo's folder {d}; "
                                  "exports never write there. Choose an --output elsewhere")
        fs.check_replaceable(p, _input_path(source), overwrite,
                             recognise=functools.partial(looks_like, fmt),
                             kind=f"a thinjax {fmt} export (with its .plan.json beside it)")
    return paths


# -- writers ---------------------------------------------------------------------------


def write_torch(plan: Plan, variables: Mapping, path: str, plan_path: str) -> None:
    """The release-named state dict (torch.save) at `path`, the plan JSON at `plan_path`."""
    torch = require("torch", "torch")
    sd = to_state_dict(plan, variables, style="release")
    torch.save({k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()},
               path)
    with open(plan_path, "w") as f:
        f.write(plan.to_json(indent=1))


def write_onnx(plan: Plan, variables: Mapping, path: str, batch_size: int | None,
               input_size: int) -> None:
    """An inference ONNX graph (BatchNorm folded) traced from TorchResNet."""
    torch = require("torch", "onnx")
    require("onnx", "onnx")
    from thinjax.interop.torch_module import from_variables  # heavy, optional: PyTorch
    model = from_variables(plan, variables)
    x = torch.zeros((batch_size or 1, plan.in_channels, input_size, input_size))
    dynamic = None if batch_size else {"images": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True)


def write_tflite(plan: Plan, variables: Mapping, path: str, batch_size: int | None,
                 input_size: int) -> None:
    """A float32 TFLite flatbuffer from the tf.function rebuild of the plan."""
    tf = require("tensorflow", "tflite")
    from thinjax.interop.tf_module import tf_forward  # loads TensorFlow: tflite only
    fn = tf_forward(plan, variables, batch_size, input_size)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    data = conv.convert()
    with open(path, "wb") as f:
        f.write(data)


# -- runtimes --------------------------------------------------------------------------


def onnx_session(path: str, threads: int = 0) -> Any:
    """An onnxruntime CPU session (all graph optimisations; `threads` 0 = its default)."""
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def tflite_interpreter(path: str) -> Any:
    """The LiteRT interpreter (ai_edge_litert) where installed, else tf.lite's."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # optional: LiteRT
    except ModuleNotFoundError:
        Interpreter = require("tensorflow", "tflite").lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interp = Interpreter(model_path=path)
    with stderr_without("INFO: Created TensorFlow Lite XNNPACK delegate"):
        interp.allocate_tensors()  # applies XNNPACK, which says so (once a process)
    return interp


def run_tflite(interpreter: Any, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits of `images_nhwc` through a TFLite interpreter (resized to the batch)."""
    inp = interpreter.get_input_details()[0]
    if tuple(inp["shape"]) != images_nhwc.shape:
        interpreter.resize_tensor_input(inp["index"], list(images_nhwc.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(images_nhwc, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def runner(fmt: str, path: str, plan: Plan | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function NHWC images -> logits running the exported file in its own runtime."""
    if fmt == "torch":
        torch = require("torch", "torch")
        from thinjax.interop.torch_module import load_exported  # heavy, optional: PyTorch
        model = load_exported(path, plan)

        def run(x):
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(
                    x.transpose(0, 3, 1, 2)))).numpy()
        return run
    if fmt == "onnx":
        sess = onnx_session(path)
        return lambda x: sess.run(None, {"images": np.ascontiguousarray(
            x.transpose(0, 3, 1, 2))})[0]
    if fmt == "tflite":
        interp = tflite_interpreter(path)
        return lambda x: run_tflite(interp, x)
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# -- the check -------------------------------------------------------------------------


def sample_images(n: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    """`n` real CIFAR-10 test images from the bundled sample, NHWC float32, normalised with
    the ImageNet mean/std as thinjax does (resized with PIL where `size` is not 32)."""
    Image = require_extra("PIL.Image", "export", "an export's check")
    with zipfile.ZipFile(SAMPLE_ZIP) as z:
        names = sorted(m for m in z.namelist() if m.startswith("test/") and m.endswith(".jpg"))
        pick = np.random.default_rng(seed).choice(len(names), n, replace=n > len(names))
        out = []
        for i in pick:
            img = Image.open(io.BytesIO(z.read(names[i]))).convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(img, np.float32) / 255.0)
    mean, std = (np.asarray(v, np.float32) for v in (pixels.MEAN, pixels.STD))
    return (np.stack(out) - mean) / std


@functools.lru_cache(maxsize=16)
def jitted_forward(plan: Plan) -> Callable:
    """thinjax's jitted inference forward pass of `plan`: (variables, NHWC images) -> logits,
    with BatchNorm folded into the convolutions (`thinjax.models.fold`: the logits of
    ``ResNet(plan).apply(variables, x)`` to float32 rounding) as in the exported graphs.
    One per plan, so repeated calls on one shape compile once. For deployment,
    `thinjax.models.fold.forward_fn` also folds once and passes only the images."""
    return jax.jit(lambda v, x: fold.forward(plan, fold.fold(plan, v), x))


def thinjax_logits(plan: Plan, variables: Mapping, images_nhwc: np.ndarray) -> np.ndarray:
    """thinjax's own (jitted, inference-mode) logits."""
    return np.asarray(jitted_forward(plan)(variables, images_nhwc))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def check(fmt: str, path: str, plan: Plan, variables: Mapping, input_size: int,
          batch_size: int | None = None, n: int = 16) -> float:
    """The relative logit error of the exported file against thinjax on real images."""
    x = sample_images(batch_size or n, input_size)
    got = runner(fmt, path, plan)(x)
    want = thinjax_logits(plan, variables, x)
    if got.shape != want.shape:
        raise ExportError(f"{path}: logits of shape {got.shape}, thinjax gives {want.shape}")
    return relative_error(got, want)


# -- the whole export ------------------------------------------------------------------


def _temp_beside(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = fs.mkstemp(parent, f".{base}.tmp-", os.path.splitext(base)[1])
    os.close(fd)
    return tmp


def export(plan: Plan, variables: Mapping, fmt: str, output: str, *,
           batch_size: int | None = None, input_size: int | None = None,
           overwrite: bool = False, tolerance: float = 1e-4, check_images: int = 16,
           class_names: list[str] | None = None) -> dict:
    """Writes `plan`/`variables` to `output` in `fmt` once its own runtime reproduces
    thinjax's logits within `tolerance` (relative); returns a summary dict. ONNX and
    TFLite files carry `thinjax.interop.metadata.describe` (with `class_names`)."""
    paths = check_output(fmt, output, overwrite)
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"batch size must be >= 1, got {batch_size}")
    size = input_size or default_input_size(plan)
    meta = metadata.describe(plan, fmt, size, batch_size, class_names)
    t0 = time.perf_counter()
    tmps = [_temp_beside(p) for p in paths]
    done: list[str] = []  # final paths already renamed into place
    try:
        if fmt == "torch":
            write_torch(plan, variables, tmps[0], tmps[1])
        elif fmt == "onnx":
            write_onnx(plan, variables, tmps[0], batch_size, size)
            metadata.add_onnx_metadata(tmps[0], meta)
            plan.save(tmps[1])
        else:
            write_tflite(plan, variables, tmps[0], batch_size, size)
            _add_tflite_metadata(tmps[0], meta)
            plan.save(tmps[1])
        err = check(fmt, tmps[0], plan, variables, size, batch_size, check_images)
        if not err <= tolerance:
            raise ExportError(f"the {fmt} export computes other logits than thinjax: relative "
                              f"error {err:.3g} > {tolerance:g}; nothing was written")
        for tmp, p in zip(tmps[::-1], paths[::-1]):  # the main file last
            os.replace(tmp, p)
            done.append(p)
    except BaseException:
        for tmp in tmps + (done if len(done) < len(paths) else []):
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    c = count(plan, size)
    return {"format": fmt, "output": paths[0], "files": paths,
            "bytes": sum(os.path.getsize(p) for p in paths), "plan": plan.describe(),
            "params": c.params, "macs": c.macs, "input_size": size,
            "batch_size": batch_size, "layout": "NHWC" if fmt == "tflite" else "NCHW",
            "bn_folded": fmt != "torch", "max_relative_error": err,
            "class_names": class_names, "metadata": fmt != "torch",
            "seconds": time.perf_counter() - t0}


def _add_tflite_metadata(path: str, meta: dict) -> None:
    with open(path, "rb") as f:
        data = metadata.add_tflite_metadata(f.read(), meta)
    with open(path, "wb") as f:
        f.write(data)
