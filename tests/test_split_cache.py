"""The evaluation-input cache (thinjax.split_cache): the first evaluation of a split keeps
its preprocessed inputs, a later one reads them back instead of the images, with the same
batches bit for bit and so the same top-1, top-5 and loss; a later command imports no
TensorFlow; a damaged file is rebuilt, never trusted; one setting turns it off; the key
follows the data, the split and the view."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import release_path
from tests.helpers import ROOT
from thinjax import cache, fs, split_cache
from thinjax.data import EvalBatches, get_source, sample_dir
from thinjax.errors import ConfigError
from thinjax.evaluation import IMAGENET_RESIZE, evaluate_checkpoint, evaluate_data

ASSET = os.path.join(ROOT, "thinjax", "assets", "resnet20_width4_cifar10_ema.safetensors")
CIFAR = lambda size: (32, None)  # noqa: E731  (the view of a CIFAR network: no resize)
IMAGENET = lambda size: (224, IMAGENET_RESIZE)  # noqa: E731


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("THINJAX_NO_EVAL_CACHE", raising=False)
    monkeypatch.delenv("THINJAX_EVAL_CACHE_MAX_MB", raising=False)
    return tmp_path / "cache"


def _kept(root):
    d = root / "eval-inputs"
    return sorted(os.listdir(d)) if d.is_dir() else []


def _no_images(monkeypatch):
    """Any attempt to open the dataset through tf.data fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the images were read: the kept inputs were not used")
    monkeypatch.setattr("thinjax.data.get_source", refuse)


def _same_batches(data, split, view, batch_size):
    """The tf.data batches (normalised by TensorFlow) and the kept ones, array for array."""
    e = split_cache.entry(data, split, view)
    source = get_source(data)
    tf_batches = list(EvalBatches(source, split, batch_size, e.size, e.resize))
    raw = EvalBatches(source, split, batch_size, e.size, e.resize, normalized=False)
    filled = list(split_cache.fill(e, raw, source.num_examples(split), batch_size))
    kept = list(split_cache.batches(split_cache.read(e), batch_size))
    assert len(tf_batches) == len(filled) == len(kept) > 1
    for a, b, c in zip(tf_batches, filled, kept):
        for k in ("image", "label", "mask"):
            assert a[k].dtype == b[k].dtype == c[k].dtype
            np.testing.assert_array_equal(a[k], b[k], strict=True)
            np.testing.assert_array_equal(a[k], c[k], strict=True)
    return e


def test_kept_inputs_are_the_pipelines_bit_for_bit_on_the_sample(root):
    e = _same_batches("sample:cifar10", "test", CIFAR, 300)  # 1000 images: a padded last
    assert e.resize is None and _kept(root) == [os.path.basename(e.path)]
    assert os.path.getsize(e.path) == pytest.approx(1000 * 32 * 32 * 3 + 4000, abs=1024)
    assert os.stat(e.path).st_mode & 0o777 == 0o666 & ~fs.umask()  # as any cache file


def test_kept_inputs_are_the_pipelines_bit_for_bit_on_real_cifar_jpegs(root, cifar10_jpeg):
    _same_batches(cifar10_jpeg, "test[:1500]", CIFAR, 500)


def test_kept_inputs_are_the_pipelines_bit_for_bit_after_a_resize(root, imagenet_sample):
    e = _same_batches(imagenet_sample, "val[:40]", IMAGENET, 16)  # float32, resized, cropped
    assert e.resize == IMAGENET_RESIZE and split_cache.read(e)["image"].dtype == np.float32


def test_a_kept_split_gives_the_same_results_as_the_images(root, monkeypatch):
    monkeypatch.setenv("THINJAX_NO_EVAL_CACHE", "1")
    off = evaluate_checkpoint(ASSET, "sample:cifar10", batch_size=300, progress=False)
    assert _kept(root) == []  # off: nothing kept
    monkeypatch.delenv("THINJAX_NO_EVAL_CACHE")
    first = evaluate_checkpoint(ASSET, "sample:cifar10", batch_size=300, progress=False)
    assert len(_kept(root)) == 1
    _no_images(monkeypatch)
    second = evaluate_checkpoint(ASSET, "sample:cifar10", batch_size=300, progress=False)
    keys = ("top1", "top5", "loss", "count", "input_size", "params", "macs")
    assert [off[k] for k in keys] == [first[k] for k in keys] == [second[k] for k in keys]
    assert second["count"] == 1000 and 65 < second["top1"] < 85


def test_a_release_network_scores_the_same_from_kept_real_jpegs(root, cifar10_jpeg,
                                                                monkeypatch):
    from thinjax.load import load_network
    plan, variables, _ = load_network(release_path("resnet20_width4_cifar10_ema.pt"))
    run = lambda: evaluate_data(plan, variables, cifar10_jpeg, "test[:2000]",  # noqa: E731
                                progress=False)
    monkeypatch.setenv("THINJAX_NO_EVAL_CACHE", "1")
    off = run()
    monkeypatch.delenv("THINJAX_NO_EVAL_CACHE")
    first = run()
    _no_images(monkeypatch)
    second = run()
    for k in ("top1", "top5", "loss", "count"):
        assert off[k] == first[k] == second[k], k
    assert second["count"] == 2000 and 70 < second["top1"] < 82  # the release's 75.76%


def test_a_damaged_file_is_rebuilt_not_trusted(root, caplog):
    e = split_cache.entry("sample:cifar10", "test", CIFAR)
    assert split_cache.read(e) is None  # nothing kept yet
    good = evaluate_data(*_tiny_network(), "sample:cifar10", progress=False)
    data = open(e.path, "rb").read()
    for damaged in (data[:len(data) // 2],  # truncated
                    data[:-5000] + bytes([data[-5000] ^ 1]) + data[-4999:]):  # a bit flipped
        open(e.path, "wb").write(damaged)
        assert split_cache.read(e) is None
        assert "ignoring the kept evaluation inputs" in caplog.text
        again = evaluate_data(*_tiny_network(), "sample:cifar10", progress=False)
        assert again["top1"] == good["top1"] and again["loss"] == good["loss"]
        rebuilt = split_cache.read(e)  # built again, whole
        assert rebuilt is not None and len(rebuilt["label"]) == 1000
        caplog.clear()


def _tiny_network():
    from thinjax.load import load_network
    plan, variables, _ = load_network(ASSET)
    return plan, variables


def test_the_key_follows_the_data_the_split_and_the_view(root, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(sample_dir(), data)
    key = lambda split="test", view=CIFAR: split_cache.entry(data, split, view).key  # noqa: E731
    k0, p0 = key(), split_cache.entry(data, "test", CIFAR).path
    assert key() == k0  # the same data, split and view: the same file
    assert len({k0, key("test[:500]"), key("test[500:]"), key(view=lambda s: (28, None)),
                key(view=lambda s: (32, 36)), key("train")}) == 6
    some = os.path.join(data, "test", "cat", sorted(os.listdir(os.path.join(data, "test",
                                                                             "cat")))[0])
    st = os.stat(some)
    os.utime(some, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    k1 = key()
    shutil.copy(some, some.replace(".jpg", "-copy.jpg"))  # an image added
    k2 = key()
    os.remove(some)  # and one removed
    k3 = key()
    os.makedirs(os.path.join(data, "train", "unicorn"))  # a new class: labels renumbered
    assert len({k0, k1, k2, k3, key()}) == 5
    path = lambda split="test": split_cache.entry(data, split, CIFAR).path  # noqa: E731
    assert path() == p0
    assert path() != path("test[:500]")  # new data replaces a split's file; splits have one each
    assert key("train") != key("train[:10]")


def test_off_too_big_tfds_and_bad_settings(root, monkeypatch):
    assert split_cache.entry("sample:cifar10", "test", CIFAR) is not None
    assert split_cache.entry("cifar10", "test", CIFAR) is None  # a TFDS name: not kept
    assert split_cache.entry("sample:cifar10", "test", lambda s: (None, None)) is None
    monkeypatch.setenv("THINJAX_NO_EVAL_CACHE", "1")
    assert split_cache.entry("sample:cifar10", "test", CIFAR) is None
    monkeypatch.delenv("THINJAX_NO_EVAL_CACHE")
    monkeypatch.setenv("THINJAX_EVAL_CACHE_MAX_MB", "2")  # the sample's test split: 3 MB
    evaluate_data(*_tiny_network(), "sample:cifar10", progress=False)
    assert _kept(root) == []
    monkeypatch.setenv("THINJAX_EVAL_CACHE_MAX_MB", "lots")
    with pytest.raises(ConfigError, match="THINJAX_EVAL_CACHE_MAX_MB='lots' is not a number"):
        evaluate_data(*_tiny_network(), "sample:cifar10", progress=False)


# the command as __main__, saying at exit whether it imported TensorFlow
COMMAND = ("import atexit, runpy, sys\n"
           "atexit.register(lambda: print('tensorflow', 'tensorflow' in sys.modules, "
           "'tensorflow_datasets' in sys.modules, file=sys.stderr))\n"
           "sys.argv = ['thinjax.evaluate'] + sys.argv[1:]\n"
           "runpy.run_module('thinjax.evaluate', run_name='__main__')\n")


def test_a_second_command_reads_no_image_and_imports_no_tensorflow(root):
    def evaluate():
        r = subprocess.run([sys.executable, "-c", COMMAND, f"--checkpoint={ASSET}",
                            "--data=sample:cifar10", "--json"], capture_output=True,
                           text=True, cwd=ROOT, timeout=600,
                           env={**os.environ, "THINJAX_CACHE": str(root)})
        assert r.returncode == 0, r.stderr[-2000:]
        tf = next(ln for ln in r.stderr.splitlines() if ln.startswith("tensorflow "))
        return json.loads(r.stdout.strip().splitlines()[-1]), tf.split()[1:]

    first, tf1 = evaluate()
    second, tf2 = evaluate()
    assert tf1 == ["True", "True"] and tf2 == ["False", "False"]
    timings = ("images_per_s", "startup_s", "startup_cpu_s", "first_batch_s",
               "first_batch_cpu_s")
    # CPU seconds (the wall clock stretches with the machine's load): no TensorFlow to import,
    # no image to decode, no program to compile
    assert 0 < second["startup_cpu_s"] < first["startup_cpu_s"] - 1
    assert second["startup_cpu_s"] < second["first_batch_cpu_s"]
    assert {k: v for k, v in first.items() if k not in timings} \
        == {k: v for k, v in second.items() if k not in timings}
    assert len(os.listdir(cache.eval_inputs_dir())) == 1
