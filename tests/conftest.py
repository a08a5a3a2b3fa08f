import os
import zipfile

# XLA -O0 for what the tests compile, in this process and in the subprocesses that inherit
# its environment (set before JAX starts a backend; an optimisation level already in
# XLA_FLAGS is kept): the tests' programs run a few steps, so compiling dominates.
# Measured on the in-process files (test_optim, test_models, test_prune, test_core_gaps,
# test_evaluate; 2-core Xeon VM): 103 tests pass at both levels, in 5 min 57 s of CPU at
# -O0 against 7 min 55 s optimised.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from thinjax import cpu, zoo  # noqa: E402

# the tests compute as the commands do: malloc settings, oneDNN's convolutions for "auto"
cpu.enable()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("THINJAX_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
RELEASE = os.path.join(SHARED, "checkpoints", "thinresnet-release")
CIFAR_ZIP = os.path.join(SHARED, "data", "cifar10-jpeg.zip")
IMAGENET_ZIP = os.path.join(SHARED, "data", "imagenet-sample.zip")

# The release table (../shared/checkpoints/README.md): file -> (params, top-1 on JPEG test)
RELEASE_TABLE = {
    "resnet20_width4_cifar10_ema.pt": (17_534, 75.76),
    "resnet20_width8_cifar10_ema.pt": (68_786, 81.67),
    "resnet20_width16_cifar10_ema.pt": (272_474, 87.20),
    "resnet56_width8_cifar10_ema.pt": (215_282, 87.39),
    "resnet56_width16_cifar10_ema.pt": (855_770, 89.51),
    "resnet50_width16_imagenet_ema.pt": (889_304, None),
}


def release_path(name: str) -> str:
    p = os.path.join(RELEASE, name)
    if not os.path.isfile(p):
        pytest.skip(f"release checkpoint {p} not present")
    return p


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory) -> str:
    """The full CIFAR-10 JPEG image folder, unzipped once per session (or $THINJAX_CIFAR10)."""
    pre = os.environ.get("THINJAX_CIFAR10")
    if pre and os.path.isdir(pre):
        return pre
    if not os.path.isfile(CIFAR_ZIP):
        pytest.skip(f"{CIFAR_ZIP} not present")
    d = tmp_path_factory.mktemp("cifar10")
    with zipfile.ZipFile(CIFAR_ZIP) as z:
        z.extractall(d)
    return str(d / "cifar10-jpeg")


@pytest.fixture(scope="session")
def imagenet_sample(tmp_path_factory) -> str:
    """The 1,000-image ImageNet sample (val/<wnid>/*.JPEG, one image per class), unzipped
    once per session (or $THINJAX_IMAGENET_SAMPLE)."""
    pre = os.environ.get("THINJAX_IMAGENET_SAMPLE")
    if pre and os.path.isdir(pre):
        return pre
    if not os.path.isfile(IMAGENET_ZIP):
        pytest.skip(f"{IMAGENET_ZIP} not present")
    d = tmp_path_factory.mktemp("imagenet")
    with zipfile.ZipFile(IMAGENET_ZIP) as z:
        z.extractall(d)
    return str(d / "imagenet-sample")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _slow_files_first(items) -> None:
    """Orders the longest test files first (longest-processing-time first), so that the
    pytest-xdist workers (--dist loadfile --no-loadscope-reorder: xdist keeps this order
    instead of sorting files by their number of tests) run out of work together; the order
    within a file is kept."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# by CPU seconds in one suite run (2-core Intel Xeon VM), longest first
SLOW_FIRST = ("test_train.py", "test_convert.py", "test_multihost.py", "test_prune.py",
              "test_study.py", "test_models.py", "test_robust.py", "test_prune_training.py",
              "test_evaluate.py", "test_optim.py", "test_core_gaps.py")


def pytest_collection_modifyitems(config, items):
    _slow_files_first(items)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"the zoo touched the network: {a}")
    monkeypatch.setattr(zoo.urllib.request, "urlopen", refuse)


@pytest.fixture
def offline(monkeypatch, tmp_path, no_network):
    release_path("resnet20_width4_cifar10_ema.pt")
    monkeypatch.setenv("THINJAX_ZOO_DIR", RELEASE)
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "zoo"  # the zoo's folder in the cache
