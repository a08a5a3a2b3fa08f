"""What an exported file says about itself: input layout and size, preprocessing (mean/std),
class names and the channel plan, written into ONNX and TFLite exports and read back.

    meta = describe(plan, "onnx", 32, None, class_names_for("cifar10", 10))
    read_metadata("r56.onnx")   # the same dict, from the file

The description is a flat dict (`describe`). In ONNX it is the model's ``metadata_props``,
one entry per key, each value JSON text (onnxruntime gives them as
``InferenceSession(path).get_modelmeta().custom_metadata_map``). In TFLite it is one
JSON document (UTF-8) in a buffer that the model's ``metadata`` list names ``thinjax``
(the schema's own mechanism for named metadata, as ``min_runtime_version`` uses; the
interpreter ignores it). docs/export.md shows how to read both without thinjax.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from thinjax import pixels
from thinjax.plan import Plan

NAME = "thinjax"        # the TFLite metadata entry's name
FORMAT_VERSION = 1      # of the description's keys
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")      # TFDS's, torchvision's and the JPEG folders' label order
WNIDS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                     "imagenet_wnids.txt")
PREPROCESSING = ("RGB scaled to [0, 1], then (x - mean) / std per channel; CIFAR stems take "
                 "the image as it is, ImageNet stems a resize of the shorter side and a centre "
                 "crop to input_size")


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k WordNet ids in label order (sorted, as TFDS's imagenet2012
    and torchvision's ImageFolder number them)."""
    with open(WNIDS) as f:
        return [ln.strip() for ln in f if ln.strip()]


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def _folder_classes(path: str) -> list[str] | None:
    """The class folders of an image-folder dataset (split/label/image), sorted as TFDS's
    ImageFolder numbers them; the folder is found as `thinjax.data.sources` finds it (the
    path itself, or its single sub-folder)."""
    is_split_root = lambda p: bool(_subdirs(p)) and all(  # noqa: E731
        _subdirs(os.path.join(p, d)) for d in _subdirs(p))
    root = os.path.expanduser(path)
    if not is_split_root(root):
        inner = _subdirs(root)
        if len(inner) != 1 or not is_split_root(os.path.join(root, inner[0])):
            return None
        root = os.path.join(root, inner[0])
    return sorted({c for split in _subdirs(root) for c in _subdirs(os.path.join(root, split))})


def class_names_for(dataset: str | None, num_classes: int) -> list[str] | None:
    """The class names of `dataset` (a config's data.name, a zoo dataset, an image folder)
    in label order, if known here and there are `num_classes` of them; else None.

    Known: CIFAR-10 (``cifar10``, ``sample:cifar10``), ImageNet-1k WordNet ids
    (``imagenet``, ``imagenet2012``), and the class folders of a local image folder."""
    if not dataset:
        return None
    name = dataset.removeprefix("sample:")
    if name == "cifar10":
        names = list(CIFAR10)
    elif name in ("imagenet", "imagenet2012"):
        names = imagenet_wnids()
    elif os.path.isdir(os.path.expanduser(name)):
        names = _folder_classes(name)
    else:
        return None
    return names if names is not None and len(names) == num_classes else None


def describe(plan: Plan, fmt: str, input_size: int, batch_size: int | None,
             class_names: list[str] | None) -> dict[str, Any]:
    """The description an export of `plan` in `fmt` carries (JSON-ready)."""
    layout = "NHWC" if fmt == "tflite" else "NCHW"
    dims = {"N": batch_size, "H": input_size, "W": input_size, "C": plan.in_channels}
    return {"producer": NAME, "format_version": FORMAT_VERSION, "input_name": "images",
            "output_name": "logits", "layout": layout,
            "input_shape": [dims[d] for d in layout], "input_size": input_size,
            "dtype": "float32", "color": "RGB", "scale": 1 / 255, "mean": list(pixels.MEAN),
            "std": list(pixels.STD), "preprocessing": PREPROCESSING,
            "num_classes": plan.num_classes, "class_names": class_names,
            "plan": plan.to_dict()}


# -- ONNX ------------------------------------------------------------------------------


def add_onnx_metadata(path: str, meta: dict[str, Any]) -> None:
    """Sets `meta` as the ONNX model's ``metadata_props`` (values as JSON text), in place."""
    import onnx  # optional: the export extra (an onnx export has checked it is there)
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
    onnx.save(model, path)


def read_onnx_metadata(path: str) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, values decoded from JSON."""
    import onnx  # optional: the export extra
    model = onnx.load(path, load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


# -- TFLite ----------------------------------------------------------------------------


def add_tflite_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    """A TFLite flatbuffer `data` with `meta` added as JSON in a buffer named ``thinjax``
    in the model's metadata list (read through TensorFlow's schema object API)."""
    from tensorflow.lite.python import schema_py_generated as schema  # loads TensorFlow
    from tensorflow.lite.tools import flatbuffer_utils  # loads TensorFlow
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != NAME.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(path: str) -> dict[str, Any]:
    """The ``thinjax`` metadata of a TFLite file ({} where there is none)."""
    from tensorflow.lite.python import schema_py_generated as schema  # loads TensorFlow
    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


def read_metadata(path: str) -> dict[str, Any]:
    """The description an ONNX or TFLite file carries ({} where none)."""
    with open(path, "rb") as f:
        tflite = f.read(8)[4:8] == b"TFL3"  # a TFLite flatbuffer's file identifier
    return read_tflite_metadata(path) if tflite else read_onnx_metadata(path)
