"""Exports describe themselves: ONNX metadata_props and TFLite's named metadata buffer hold
the input layout and size, mean/std, class names and the plan, read back from real exported
files, and enough to preprocess raw images into thinjax's logits."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import IMAGENET_ZIP
from thinjax import pixels
from thinjax.checkpoint import export_model
from thinjax.commands import cli
from thinjax.commands import export as export_command
from thinjax.interop import export as ex
from thinjax.interop import metadata
from thinjax.interop.torch import import_checkpoint
from thinjax.models.resnet import random_variables
from thinjax.plan import Plan, plan_from_width

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

ASSET = os.path.join(os.path.dirname(metadata.__file__), "..", "assets",
                     "resnet20_width4_cifar10_ema.safetensors")
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def _export(args: list[str], capsys) -> dict:
    """``python -m thinjax.export ARGS --json`` in this process; its JSON result."""
    assert cli.call(export_command.main, [*args, "--json"], export_command.FLAGS) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def raw_images(n: int = 6) -> np.ndarray:
    """Bundled-sample test images as a user has them: uint8 RGB, NHWC."""
    with zipfile.ZipFile(ex.SAMPLE_ZIP) as z:
        names = sorted(m for m in z.namelist() if m.startswith("test/") and m.endswith(".jpg"))
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(m))).convert("RGB"))
                         for m in names[::97][:n]])


def preprocess(images: np.ndarray, meta: dict) -> np.ndarray:
    """What the metadata tells a user to do, and nothing else: scale, normalise, lay out."""
    x = (images.astype(np.float32) * np.float32(meta["scale"]) -
         np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if meta["layout"] == "NCHW" else x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training run's best model as the loop writes it: its meta records the config."""
    plan, v = import_checkpoint(ASSET)
    ck = str(tmp_path_factory.mktemp("run") / "best")
    export_model(ck, plan, v, {"config": {"data": {"name": "sample:cifar10"}}})
    return ck, plan, v


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_exports_carry_layout_size_mean_std_classes_and_plan(trained, tmp_path, fmt, capsys):
    if fmt == "tflite":
        pytest.importorskip("tensorflow")
    ck, plan, v = trained
    out = str(tmp_path / f"r20.{fmt}")
    s = _export([f"--checkpoint={ck}", f"--format={fmt}", f"--output={out}",
                 "--batch_size=2"], capsys)
    assert s["class_names"] == CIFAR10 and s["metadata"] is True
    meta = metadata.read_metadata(out)
    layout = "NHWC" if fmt == "tflite" else "NCHW"
    assert meta["layout"] == layout and meta["input_size"] == 32
    assert meta["input_shape"] == ([2, 32, 32, 3] if fmt == "tflite" else [2, 3, 32, 32])
    assert meta["mean"] == list(pixels.MEAN) and meta["std"] == list(pixels.STD)
    assert meta["scale"] == 1 / 255 and meta["color"] == "RGB"
    assert meta["class_names"] == CIFAR10 and meta["num_classes"] == 10
    assert Plan.from_dict(meta["plan"]) == plan
    assert (meta["producer"], meta["format_version"]) == ("thinjax", 1)
    # the metadata is all it takes: raw uint8 images -> the file's runtime -> thinjax's logits
    images = raw_images(2)
    x = preprocess(images, meta)
    run = ex.runner(fmt, out)
    got = run(x.transpose(0, 2, 3, 1) if layout == "NCHW" else x)  # runner takes NHWC
    normalised = (images / np.float32(255) - np.float32(pixels.MEAN)) / np.float32(pixels.STD)
    want = ex.thinjax_logits(plan, v, normalised.astype(np.float32))  # as thinjax's pipeline
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_readers_without_thinjax(trained, tmp_path, capsys):
    """The reading code of docs/export.md: onnxruntime's custom_metadata_map, TensorFlow's
    TFLite schema."""
    pytest.importorskip("tensorflow")
    import onnxruntime as ort
    from tensorflow.lite.python import schema_py_generated as schema
    ck, plan, _ = trained
    _export([f"--checkpoint={ck}", "--format=onnx", f"--output={tmp_path}/o.onnx"], capsys)
    _export([f"--checkpoint={ck}", "--format=tflite", f"--output={tmp_path}/t.tflite"], capsys)
    sess = ort.InferenceSession(f"{tmp_path}/o.onnx", providers=["CPUExecutionProvider"])
    onnx_meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    buf = open(f"{tmp_path}/t.tflite", "rb").read()
    model = schema.Model.GetRootAsModel(buf, 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    tfl_meta = json.loads(model.Buffers(entries["thinjax"]).DataAsNumpy().tobytes())
    assert "min_runtime_version" in entries  # the converter's own entry is kept
    for meta, layout in ((onnx_meta, "NCHW"), (tfl_meta, "NHWC")):
        assert meta["layout"] == layout and meta["class_names"] == CIFAR10
        assert meta["input_shape"][0] is None  # any batch
        assert Plan.from_dict(meta["plan"]) == plan
    assert {k: v for k, v in onnx_meta.items() if k not in ("layout", "input_shape")} == \
        {k: v for k, v in tfl_meta.items() if k not in ("layout", "input_shape")}


def test_class_names_unknown_explicit_or_refused(tmp_path, capsys):
    """A PyTorch file records no dataset: no class names unless --dataset names them; a
    --dataset without names for the plan's classes is one error line."""
    s = _export([f"--checkpoint={ASSET}", "--format=onnx", f"--output={tmp_path}/a.onnx"],
                capsys)
    assert s["class_names"] is None
    assert metadata.read_metadata(f"{tmp_path}/a.onnx")["class_names"] is None
    _export([f"--checkpoint={ASSET}", "--format=onnx", f"--output={tmp_path}/b.onnx",
             "--dataset=cifar10"], capsys)
    assert metadata.read_metadata(f"{tmp_path}/b.onnx")["class_names"] == CIFAR10
    for bad in ("cifar100", "imagenet"):
        with pytest.raises(SystemExit) as e:
            cli.call(export_command.main, [f"--checkpoint={ASSET}", "--format=onnx",
                                           f"--output={tmp_path}/c.onnx", f"--dataset={bad}"],
                     export_command.FLAGS)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --dataset={bad}: no 10 class names known for it; give cifar10, imagenet "
            "or an image folder with 10 class folders (or leave --dataset out)")
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "a.plan.json", "b.onnx", "b.plan.json"]


def test_a_zoo_network_and_its_convert_output_know_their_dataset(offline, tmp_path, capsys):
    from thinjax.conversion import convert
    from thinjax.prune.spec import PruneSpec
    s = _export(["--checkpoint=zoo:resnet20_w4_cifar10", "--format=onnx",
                 f"--output={tmp_path}/z.onnx"], capsys)
    assert s["class_names"] == CIFAR10
    convert("zoo:resnet20_w4_cifar10", str(tmp_path / "half"), evaluate_before=False,
            spec=PruneSpec(criterion="l1", target_kind="macs_fraction", target=0.5))
    _export([f"--checkpoint={tmp_path}/half", "--format=onnx", f"--output={tmp_path}/h.onnx"],
            capsys)
    meta = metadata.read_metadata(f"{tmp_path}/h.onnx")
    assert meta["class_names"] == CIFAR10  # recorded as the pruned network's source
    assert Plan.from_dict(meta["plan"]) != plan_from_width("resnet20", 4)  # the pruned one


def test_class_names_of_datasets():
    wnids = metadata.imagenet_wnids()
    assert len(set(wnids)) == len(wnids) == 1000 and wnids == sorted(wnids)
    assert wnids[:2] == ["n01440764", "n01443537"] and wnids[-1] == "n15075141"
    assert metadata.class_names_for("imagenet2012", 1000) == wnids
    assert metadata.class_names_for("zoo-dataset-unknown", 10) is None
    assert metadata.class_names_for("cifar10", 100) is None  # not the plan's classes
    assert metadata.class_names_for(None, 10) is None


def test_imagenet_wnids_are_the_datasets_label_order(tmp_path):
    import tensorflow_datasets  # the label file TFDS numbers imagenet2012 with
    tfds_labels = os.path.join(os.path.dirname(tensorflow_datasets.__file__), "datasets",
                               "imagenet2012", "labels.txt")
    if os.path.isfile(tfds_labels):
        assert open(tfds_labels).read().split() == metadata.imagenet_wnids()
    if not os.path.isfile(IMAGENET_ZIP):
        pytest.skip(f"{IMAGENET_ZIP} not present")
    with zipfile.ZipFile(IMAGENET_ZIP) as z:
        z.extractall(tmp_path)
        folders = {n.split("/")[2] for n in z.namelist() if n.count("/") >= 3}
    assert sorted(folders) == metadata.imagenet_wnids()  # one image of every class
    # an image folder (as thinjax.data reads it): its class folders, sorted
    assert metadata.class_names_for(str(tmp_path / "imagenet-sample"), 1000) == sorted(folders)


def test_random_network_of_an_image_folder(tmp_path):
    for split, classes in (("train", ("b", "a", "c")), ("val", ("a", "d"))):
        for c in classes:
            os.makedirs(tmp_path / "data" / split / c)
    plan = plan_from_width("resnet20", 2, num_classes=4)
    assert metadata.class_names_for(str(tmp_path / "data"), 4) == ["a", "b", "c", "d"]
    s = ex.export(plan, random_variables(plan, 0), "onnx", str(tmp_path / "m.onnx"),
                  class_names=["a", "b", "c", "d"])
    assert s["class_names"] == ["a", "b", "c", "d"]
    assert metadata.read_metadata(str(tmp_path / "m.onnx"))["class_names"] == ["a", "b", "c", "d"]
