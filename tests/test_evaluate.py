import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import RELEASE_TABLE, release_path
from thinjax.data import DataError, eval_batches, get_source, sample_dir
from thinjax.evaluation import evaluate_checkpoint

# two of the five on the full split (time); tests/test_interop.py checks every release
# file's logits against PyTorch, and benchmarks/release_accuracy.py gives all five accuracies
CIFAR_RELEASE = ["resnet20_width4_cifar10_ema.pt", "resnet56_width8_cifar10_ema.pt"]


@pytest.mark.parametrize("name", CIFAR_RELEASE)
def test_release_accuracy_on_the_jpeg_test_split_matches_pytorch(name, cifar10_jpeg):
    r = evaluate_checkpoint(release_path(name), cifar10_jpeg, "test", batch_size=500,
                            progress=False)
    assert r["count"] == 10_000
    assert abs(r["top1"] - RELEASE_TABLE[name][1]) <= 0.3, r
    assert r["top1"] <= r["top5"] <= 100


def test_every_example_counted_once_whatever_the_batch_size():
    src = get_source("sample:cifar10")
    n = src.num_examples("test")
    labels = {}
    for bs in (1000, 300, 7):
        seen = [b["label"][b["mask"]] for b in eval_batches(src, "test", bs)]
        all_labels = np.concatenate(seen)
        assert len(all_labels) == n == 1000
        assert all(len(b) <= bs for b in seen)
        labels[bs] = all_labels
    np.testing.assert_array_equal(labels[1000], labels[7])
    assert np.bincount(labels[300], minlength=10).tolist() == [100] * 10
    from thinjax.data.sources import ASSETS
    path = os.path.join(ASSETS, "resnet20_width4_cifar10_ema.safetensors")
    a = evaluate_checkpoint(path, "sample:cifar10", batch_size=1000, progress=False)
    b = evaluate_checkpoint(path, "sample:cifar10", batch_size=333, progress=False)
    assert a["count"] == b["count"] == 1000
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert 65 < a["top1"] < 85  # the release's 75.8% network on 1,000 images


def test_unknown_dataset_and_split_errors():
    with pytest.raises(DataError, match=r"unknown dataset 'cifar11'.*Did you mean: .*cifar10"):
        get_source("cifar11")
    with pytest.raises(DataError, match="does not exist"):
        get_source("./no/such/folder")
    with pytest.raises(DataError, match=r"has no split 'validation'; available: test, train"):
        get_source("sample:cifar10").as_dataset("validation")


def test_corrupt_image_is_named(tmp_path):
    root = tmp_path / "tiny"
    src = sample_dir()
    for cls in ("cat", "dog"):
        os.makedirs(root / "test" / cls)
        for f in sorted(os.listdir(os.path.join(src, "test", cls)))[:5]:
            shutil.copy(os.path.join(src, "test", cls, f), root / "test" / cls / f)
    (root / "test" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    source = get_source(str(root))
    assert source.num_classes == 2 and source.num_examples("test") == 11
    with pytest.raises(DataError, match=r"broken\.jpg: not a decodable image"):
        list(eval_batches(source, "test", 4))


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True)


def test_evaluate_command_json_and_errors(tmp_path):
    from thinjax.data.sources import ASSETS
    ck = os.path.join(ASSETS, "resnet20_width4_cifar10_ema.safetensors")
    r = run("-m", "thinjax.evaluate", f"--checkpoint={ck}", "--data=sample:cifar10", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["count"] == 1000 and d["params"] == 17_534 and 65 < d["top1"] < 85
    r = run("-m", "thinjax.evaluate", f"--checkpoint={tmp_path}/nothing", "--data=sample:cifar10")
    assert r.returncode == 2 and "no checkpoint at" in r.stderr
    r = run("-m", "thinjax.evaluate", f"--checkpoint={ck}", "--data=nosuchdataset")
    assert r.returncode == 2 and "unknown dataset 'nosuchdataset'" in r.stderr
