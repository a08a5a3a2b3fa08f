"""TFDS datasets as a data source: the builders load (their imports are installed), a dataset
prepared by TFDS's own CIFAR-10 builder is read by the pipeline and a training run, and an
unprepared one without a network is one 'error:' line, in seconds."""

import json
import os
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.helpers import ROOT, main_cmd, sub_env
from thinjax.config import short_cpu_recipe
from thinjax.data import get_source, preprocess, train_batches
from thinjax.data.sources import unreachable
from thinjax.errors import DataError
from thinjax.settings import data_settings

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
PER_TRAIN_FILE, N_TEST = 8, 10  # 5 train files: 40 training images

# `url_infos` reads the builder's checksums beside its code (TFDS's `code_path`), the first
# use of importlib_resources: the import that was missing
BUILD = """
import json, sys
import tensorflow_datasets as tfds
out = {}
for name in ("cifar10", "imagenet2012"):
    b = tfds.builder(name, data_dir=sys.argv[1])
    f = b.info.features
    out[name] = {"urls": sorted(b.url_infos), "classes": f["label"].num_classes,
                 "shape": list(f["image"].shape), "version": str(b.version),
                 "manual": bool(b.MANUAL_DOWNLOAD_INSTRUCTIONS), "prepared": b.data_path.exists()}
print(json.dumps(out))
"""


def test_the_cifar10_and_imagenet2012_builders_load_in_a_fresh_process(tmp_path):
    r = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cifar10"] == {"urls": [CIFAR10_URL], "classes": 10, "shape": [32, 32, 3],
                              "version": "3.0.2", "manual": False, "prepared": False}
    im = out["imagenet2012"]
    assert (im["classes"], im["shape"], im["manual"], im["prepared"]) == (
        1000, [None, None, 3], True, False)
    assert [u.rsplit("/", 1)[1] for u in im["urls"]] == ["ILSVRC2012_img_train.tar",
                                                         "ILSVRC2012_img_val.tar"]
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing written


def _write_cifar_binaries(folder, rng):
    """CIFAR-10's binary release format (label byte + 3072 bytes of CHW pixels a record) in
    the archive's layout; returns {split: (labels, HWC images)}."""
    bins = folder / "cifar-10-batches-bin"
    bins.mkdir(parents=True)
    (bins / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    out = {"train": [], "test": []}
    files = [(f"data_batch_{i}.bin", "train", PER_TRAIN_FILE) for i in range(1, 6)]
    for name, split, n in files + [("test_batch.bin", "test", N_TEST)]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        np.concatenate([labels[:, None], chw.reshape(n, -1)], axis=1).tofile(bins / name)
        out[split].append((labels, chw.transpose(0, 2, 3, 1)))
    return {k: tuple(np.concatenate(p) for p in zip(*v)) for k, v in out.items()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny CIFAR-10 prepared by TFDS's own cifar10 builder (its generator, writer and
    metadata) from archives in the real format; only the download is replaced."""
    root = tmp_path_factory.mktemp("tfds")
    written = _write_cifar_binaries(root / "extracted", np.random.default_rng(0))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value=str(root / "extracted")):
        tfds.builder("cifar10", data_dir=str(root / "data")).download_and_prepare()
    return str(root / "data"), written


def _by_pixels(labels, images):
    return sorted((im.tobytes(), int(lab)) for lab, im in zip(labels, images))


def test_a_cifar10_prepared_by_tfds_is_read_image_for_image(prepared):
    data_dir, written = prepared
    src = get_source("cifar10", data_dir=data_dir)
    assert (src.splits, src.num_classes, src.image_size) == ({"train": 40, "test": 10}, 10, 32)
    for split in ("train", "test"):
        got = [(preprocess.decode(ex["image"]).numpy(), int(ex["label"]))
               for ex in src.as_dataset(split)]
        assert _by_pixels([g[1] for g in got], [g[0] for g in got]) == _by_pixels(*written[split])
    assert src.num_examples("train[10:30]") == 20
    cfg = short_cpu_recipe("cifar10", epochs=1)
    b = next(train_batches(src, data_settings(cfg.data), 16, seed=0, start_step=0,
                           steps_per_epoch=2))
    assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
    assert set(b["label"].tolist()) <= set(written["train"][0].tolist())


def test_training_runs_on_a_prepared_tfds_cifar10(prepared, tmp_path):
    data_dir, _ = prepared
    wd = tmp_path / "run"
    r = subprocess.run(main_cmd(wd, "--config.data.name=cifar10",
                                f"--config.data.data_dir={data_dir}",
                                "--config.train.total_steps=2", "--config.train.log_every=1"),
                       capture_output=True, text=True, cwd=ROOT, env=sub_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 train images" in r.stdout, r.stdout
    res = json.load(open(wd / "results.json"))
    assert res["steps"] == 2
    for k in ("eval_top1", "ema_eval_top1"):  # over the 10 test images: a multiple of 10 %
        assert res[k] in {10.0 * i for i in range(11)}, res


OFFLINE = """
import runpy, socket, sys
def no_dns(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = no_dns   # as on a machine without a network
sys.argv = ["thinjax.main"] + sys.argv[1:]
runpy.run_module("thinjax.main", run_name="__main__", alter_sys=True)
"""


def test_an_unprepared_tfds_dataset_without_a_network_is_one_error_line(tmp_path):
    args = main_cmd(tmp_path / "run", "--config.data.name=cifar10",
                    f"--config.data.data_dir={tmp_path / 'empty'}")[3:]
    env = {k: v for k, v in sub_env().items()  # TensorFlow's log settings as in a user's
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}  # shell: unset
    r = subprocess.run([sys.executable, "-c", OFFLINE, *args], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == [r.stderr.strip()], r.stderr  # one line, nothing else
    assert r.stderr.startswith(f"error: TFDS dataset 'cifar10' is not prepared in "
                               f"{tmp_path / 'empty'}/cifar10/3.0.2 and cannot be "
                               "downloaded: no network (www.cs.toronto.edu: Name or "
                               "service not known)"), r.stderr
    assert "data_dir" in r.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_an_imagenet2012_without_its_manual_files_is_one_line_naming_them(tmp_path):
    with pytest.raises(DataError) as e:
        get_source("imagenet2012", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "Manual directory" in msg, msg
    assert "ILSVRC2012_img_train.tar" in msg and "follow TFDS's instructions" in msg, msg


def test_unreachable_names_the_first_host_that_takes_no_connection(monkeypatch):
    for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert unreachable([f"http://127.0.0.1:{port}/a.tar", "ftp://x/y", "gs://b/c"]) is None
    # the listener is closed: the same port now refuses
    assert unreachable([f"http://127.0.0.1:{port}/a.tar"]) == "127.0.0.1: Connection refused"
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert unreachable([f"https://127.0.0.1:{port}/a.tar"]) is None  # the proxy's to tell
