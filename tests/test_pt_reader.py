"""thinjax.interop.pt_reader (torch.save files read without PyTorch) and the zoo's cache of
converted networks (thinjax.zoo.converted)."""

import glob
import logging
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from tests.conftest import RELEASE, ROOT, release_path
from thinjax import fs, zoo
from thinjax.errors import CheckpointFormatError
from thinjax.interop import pt_reader
from thinjax.interop.torch import import_checkpoint, load_state_dict, to_variables
from thinjax.load import load_model
from thinjax.zoo import converted

RELEASE_FILES = sorted(glob.glob(os.path.join(RELEASE, "*.pt")))


def _torch():
    return pytest.importorskip("torch")


def _as_numpy(t) -> np.ndarray:
    """torch tensor -> numpy, bfloat16 included (as ml_dtypes.bfloat16)."""
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        w = _as_numpy(w)
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        assert np.array_equal(got[k], w) and got[k].tobytes() == w.tobytes(), k  # bit for bit


# -- the release files: bit for bit what torch.load gives ---------------------------------


@pytest.mark.parametrize("path", RELEASE_FILES or [None],
                         ids=[os.path.basename(p) for p in RELEASE_FILES] or ["absent"])
def test_every_release_file_reads_bit_identical_to_torch(path):
    if path is None:
        pytest.skip(f"no release files in {RELEASE}")
    torch = _torch()
    want = torch.load(path, map_location="cpu", weights_only=True)
    got = pt_reader.load(path)
    assert type(got) is type(want)  # an OrderedDict
    _assert_same(got, want)


def test_the_release_holds_33_files_with_the_imagenet_resnet50():
    if not RELEASE_FILES:
        pytest.skip(f"no release files in {RELEASE}")
    names = {os.path.basename(p) for p in RELEASE_FILES}
    assert len(names) == 33 and "resnet50_width16_imagenet_ema.pt" in names


# -- torch.save files of every dtype and layout --------------------------------------------


def test_torch_save_round_trips_every_dtype_and_layout(tmp_path):
    torch = _torch()
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    sd = {f"x_{dt}".replace("torch.", ""): (base * 3).to(dt) for dt in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}
    sd.update({
        "transposed": base.t(),  # non-contiguous: stride (1, 10)
        "shares": base[1:, ::3],  # a view of base's storage: offset 10, stride (10, 3)
        "offset": base.view(-1)[17:29],  # offset into the same storage
        "expanded": torch.tensor([1.5, -2.0]).expand(3, 2),  # stride 0
        "scalar": torch.tensor(7, dtype=torch.int64),  # 0-d
        "empty": torch.zeros(0, 5),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "base": base,
    })
    f = tmp_path / "all.pt"
    torch.save(sd, f)
    got = pt_reader.load(str(f))
    want = torch.load(f, weights_only=True)
    _assert_same(got, want)
    assert got["shares"].flags.c_contiguous and got["shares"].flags.writeable
    got["shares"][0, 0] = -1  # arrays own their memory, as torch.load's share none with us
    assert got["base"][1, 0] == want["base"][1, 0].item()
    # the nested layout of training checkpoints, through load_state_dict
    torch.save({"state_dict": {"a": base.t()}, "epoch": 3}, tmp_path / "nested.pth")
    assert np.array_equal(load_state_dict(str(tmp_path / "nested.pth"))["a"], base.t().numpy())


# -- hand-written archives: what torch never writes, refused ---------------------------------


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key, numel, offset, size, stride, storage="FloatStorage") -> bytes:
    """The pickle ops torch.save writes for one tensor."""
    pid = _tup(_str("storage"), _glob("torch", storage), _str(key), _str("cpu"), _int(numel))
    args = _tup(pid + b"Q", _int(offset), _tup(*map(_int, size)), _tup(*map(_int, stride)),
                b"\x89", _glob("collections", "OrderedDict") + b")R")
    return _glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _archive(path, items: dict[str, bytes], storages: dict[str, bytes], **records) -> str:
    pkl = b"\x80\x02}(" + b"".join(_str(k) + v for k, v in items.items()) + b"u."
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in storages.items():
            z.writestr(f"archive/data/{k}", v)
        for k, v in records.items():
            z.writestr(f"archive/{k}", v)
    return str(path)


def test_hand_written_archive_reads_with_strides_and_big_endian_bytes(tmp_path):
    f32 = np.arange(12, dtype=np.float32) - 3.25
    bf = np.array([1.5, -2.0, 3.0e-3], ml_dtypes.bfloat16)
    c64 = np.array([1 + 2j, -3.5j], np.complex64)
    little = _archive(tmp_path / "little.pt", {
        "w": _tensor("0", 12, 1, (2, 3), (4, 2)), "b": _tensor("1", 3, 0, (3,), (1,),
                                                               "BFloat16Storage")},
        {"0": f32.tobytes(), "1": bf.tobytes()})
    got = pt_reader.load(little)
    # offset 1, size (2, 3), stride (4, 2): elements 1 3 5 / 5 7 9
    assert np.array_equal(got["w"], f32[[[1, 3, 5], [5, 7, 9]]]) and got["w"].dtype == f32.dtype
    assert got["b"].dtype == ml_dtypes.bfloat16 and np.array_equal(got["b"], bf)
    big = _archive(tmp_path / "big.pt", {
        "w": _tensor("0", 12, 0, (12,), (1,)), "b": _tensor("1", 3, 0, (3,), (1,),
                                                             "BFloat16Storage"),
        "c": _tensor("2", 2, 0, (2,), (1,), "ComplexFloatStorage"),
        "n": _tensor("3", 2, 0, (2,), (1,), "LongStorage")},
        {"0": f32.astype(">f4").tobytes(), "1": bf.view(np.uint16).astype(">u2").tobytes(),
         "2": c64.astype(">c8").tobytes(), "3": np.array([5, -6], ">i8").tobytes()},
        byteorder="big")
    got = pt_reader.load(big)
    assert np.array_equal(got["w"], f32) and got["w"].dtype == np.float32
    assert np.array_equal(got["b"], bf) and np.array_equal(got["c"], c64)
    assert got["n"].tolist() == [5, -6] and got["n"].dtype == np.int64


@pytest.mark.parametrize("item,storage,words", [
    (_tensor("0", 4, 0, (100,), (1,)), 16, "reaches past its storage of 4 elements"),
    (_tensor("0", 4, 2, (2, 2), (1, 1)), 16, "reaches past"),  # offset + extent
    (_tensor("0", 4, 0, (2,), (-1,)), 16, "reaches past"),  # negative stride
    (_tensor("0", 4, 0, (4,), (1,)), 12, "holds 12 bytes, 16 expected"),
    (_tensor("0", 4, 0, (4,), (1,), "UntypedStorage"), 16, "global torch.UntypedStorage"),
    (_glob("torch", "FloatStorage") + b"}" + _str("dtype") + _str("O") + b"sb",
     16, "sets attributes"),  # BUILD on a marker of the reader: refused, the marker kept
    (_glob("torch._utils", "_rebuild_tensor_v2") + b"}" + _str("fn") + _str("x") + b"sb",
     16, "sets attributes"),
])
def test_malformed_archives_are_refused_naming_the_file(tmp_path, item, storage, words):
    f = _archive(tmp_path / "bad.pt", {"x": item}, {"0": b"\0" * storage})
    with pytest.raises(CheckpointFormatError, match="bad.pt: ") as e:
        pt_reader.load(f)
    assert words in str(e.value)
    assert pt_reader.ALLOWED[("torch", "FloatStorage")].dtype == np.float32
    # the reader still reads a good file after a bad one
    good = _archive(tmp_path / "good.pt", {"x": _tensor("0", 4, 0, (4,), (1,))},
                    {"0": np.ones(4, np.float32).tobytes()})
    assert pt_reader.load(good)["x"].tolist() == [1, 1, 1, 1]


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("layout", ["zip", "bare"])
def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, layout):
    pwned = tmp_path / "pwned"
    pkl = pickle.dumps({"conv1.weight": _Evil(pwned)}, protocol=2)
    f = tmp_path / "evil.pt"
    if layout == "zip":
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/version", "3\n")
    else:
        f.write_bytes(pkl)
    with pytest.raises(CheckpointFormatError) as e:
        load_state_dict(str(f))
    msg = str(e.value)
    assert msg.startswith(f"{f}: not a plain tensor checkpoint")
    assert f"global {os.system.__module__}.system" in msg  # posix.system on Linux
    assert "never executes code" in msg and ".safetensors" in msg and "weights_only" not in msg
    assert not pwned.exists()


def test_legacy_and_foreign_files_are_refused_with_the_fix(tmp_path):
    torch = _torch()
    legacy = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match=r"old\.pt: a PyTorch checkpoint in the "
                       r"legacy format .* \(torch\.save writes the zip format\)"):
        pt_reader.load(str(legacy))
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with pytest.raises(CheckpointFormatError, match=r"bare\.pt: a bare pickle, not a "
                       r"torch\.save checkpoint; re-save it .* \.safetensors"):
        pt_reader.load(str(bare))
    other = _archive(tmp_path / "other.pt", {}, {})
    with zipfile.ZipFile(tmp_path / "docs.pt", "w") as z:
        z.writestr("word/document.xml", "<w/>")
    for f in (tmp_path / "docs.pt", tmp_path / "garbage.pt"):
        if f.name == "garbage.pt":
            f.write_bytes(b"\x00\x01 not a checkpoint")
        with pytest.raises(CheckpointFormatError, match=f"{f.name}: cannot read this .pt "
                           "checkpoint .* Is the file complete"):
            pt_reader.load(str(f))
    assert pt_reader.load(other) == {}


# -- without PyTorch at all -------------------------------------------------------------------

_NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
try:
    import torch  # noqa
    raise SystemExit("torch imported")
except ImportError:
    pass
import numpy as np
from flax import traverse_util
from thinjax import zoo
from thinjax.load import load_model
plan, v, meta = load_model("zoo:resnet20_w4_cifar10")
plan50, v50 = zoo.load("resnet50_w16_imagenet")
again, v50b = zoo.load("resnet50_w16_imagenet")  # from the cache of converted networks
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
flat = {"r20/" + k: a for k, a in traverse_util.flatten_dict(v, sep="/").items()}
flat.update({"r50/" + k: a for k, a in traverse_util.flatten_dict(v50, sep="/").items()})
flat.update({"r50b/" + k: a for k, a in traverse_util.flatten_dict(v50b, sep="/").items()})
np.savez(sys.argv[1], **flat)
print(meta["source"])
"""


def test_release_networks_load_with_torch_blocked(tmp_path):
    release_path("resnet50_width16_imagenet_ema.pt")
    torch = _torch()
    env = dict(os.environ, THINJAX_ZOO_DIR=RELEASE, THINJAX_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = tmp_path / "v.npz"
    r = subprocess.run([sys.executable, "-c", _NO_TORCH, str(out)], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("resnet20_width4_cifar10_ema.pt")
    got = dict(np.load(out))
    for tag, name in (("r20", "resnet20_width4_cifar10_ema.pt"),
                      ("r50", "resnet50_width16_imagenet_ema.pt"),
                      ("r50b", "resnet50_width16_imagenet_ema.pt")):
        sd = torch.load(os.path.join(RELEASE, name), map_location="cpu", weights_only=True)
        _, want = to_variables({k: t.numpy() for k, t in sd.items()})
        for k, w in traverse_util.flatten_dict(want, sep="/").items():
            g = got[f"{tag}/{k}"]
            assert g.dtype == w.dtype and np.array_equal(g, w), (tag, k)


# -- the cache of converted networks -------------------------------------------------------


@pytest.fixture
def zoo_offline(monkeypatch, tmp_path, no_network):
    release_path("resnet20_width4_cifar10_ema.pt")
    monkeypatch.setenv("THINJAX_ZOO_DIR", RELEASE)
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "cache"))
    e = zoo.entry("resnet20_w4_cifar10")
    return e, converted.path_of(e.sha256)


def _no_reading(monkeypatch):
    """Any read or conversion of a release file fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"the release file was read: {a}")
    monkeypatch.setattr(pt_reader, "load", refuse)
    monkeypatch.setattr(converted, "import_checkpoint", refuse)


def _same_tree(a, b) -> None:
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y), p


def test_second_load_reads_the_cache_not_the_release_file(zoo_offline, monkeypatch):
    e, cached = zoo_offline
    plan, v = zoo.load(e.name)
    assert os.path.isfile(cached)
    assert os.listdir(os.path.dirname(cached)) == [os.path.basename(cached)]  # no leftovers
    assert os.stat(cached).st_mode & 0o777 == 0o666 & ~fs.umask()  # group-readable
    _, ref = import_checkpoint(release_path(e.filename))
    _same_tree(v, ref)
    _no_reading(monkeypatch)
    plan2, v2 = zoo.load(e.name)
    p3, v3, meta = load_model("zoo:" + e.name)
    assert plan2 == plan == p3 and meta["source"].endswith(e.filename)
    _same_tree(v2, ref)
    _same_tree(v3, ref)


@pytest.mark.parametrize("damage", ["data byte", "header byte", "truncated", "other source",
                                    "not safetensors"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(zoo_offline, damage, caplog):
    e, cached = zoo_offline
    _, ref = zoo.load(e.name)
    good = open(cached, "rb").read()
    bad = bytearray(good)
    if damage == "data byte":
        bad[-3] ^= 0x01
    elif damage == "header byte":
        bad[20] = ord("{")
    elif damage == "truncated":
        bad = bad[: len(bad) // 2]
    elif damage == "other source":  # a conversion of another file under this one's name
        other = zoo.entry("resnet20_w8_cifar10")
        zoo.load(other.name)
        bad = bytearray(open(converted.path_of(other.sha256), "rb").read())
    else:
        bad = bytearray(b"\0" * 64)
    with open(cached, "wb") as f:
        f.write(bytes(bad))
    with caplog.at_level(logging.WARNING, logger="thinjax.zoo.converted"):
        plan, v = zoo.load(e.name)
    assert "ignoring the converted network" in caplog.text and cached in caplog.text
    _same_tree(v, ref)
    assert open(cached, "rb").read() != bytes(bad)  # written anew, whole and trusted:
    caplog.clear()
    kept = converted.read(cached, e.sha256)
    assert kept is not None and not caplog.text and len(open(cached, "rb").read()) == len(good)
    _same_tree(kept[1], ref)
    assert not [f for f in os.listdir(os.path.dirname(cached)) if ".part-" in f]


def test_an_unwritable_cache_only_means_converting_again(zoo_offline, monkeypatch, caplog):
    e, cached = zoo_offline
    os.makedirs(os.path.dirname(os.path.dirname(cached)), exist_ok=True)
    with open(os.path.dirname(cached), "w") as f:  # a file where the folder should be
        f.write("in the way")
    with caplog.at_level(logging.WARNING, logger="thinjax.zoo.converted"):
        plan, v = zoo.load(e.name)
    assert "cannot keep the converted network" in caplog.text
    _, ref = import_checkpoint(release_path(e.filename))
    _same_tree(v, ref)
