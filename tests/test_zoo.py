"""thinjax.zoo: the release by name, checked files, the local folder, downloads from a
loopback HTTP server (good, corrupt, truncated, missing and Git LFS files)."""

import functools
import hashlib
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest

from tests.conftest import RELEASE, release_path
from thinjax import checkpoint, zoo
from thinjax.commands import cli
from thinjax.commands import zoo as zoo_cmd
from thinjax.errors import CheckpointError
from thinjax.interop.torch import import_checkpoint
from thinjax.load import load_model
from thinjax.plan import plan_from_width
from thinjax.zoo import checksums

SMALL = ["resnet20_w1_cifar10", "resnet20_w2_cifar10", "resnet20_w3_cifar10",
         "resnet20_w5_cifar10"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if "width3" in self.path:  # promise more bytes than are sent, then hang up
            self.send_response(200)
            self.send_header("Content-Length", "84393")
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A loopback HTTP server with a copy of small release files in the release's layout:
    w1 intact, w2 corrupted (one byte flipped), w3 truncated by the server, w5 absent."""
    root = tmp_path / "www"
    for name in SMALL[:2]:
        e = zoo.entry(name)
        dst = root / e.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(release_path(e.filename), dst)
    bad = root / zoo.entry(SMALL[1]).path
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.delenv("THINJAX_ZOO_DIR", raising=False)
    monkeypatch.setenv("THINJAX_ZOO_URL", url + "/")
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "TIMEOUT_S", 10.0)
    yield {"url": url, "root": root, "cache": tmp_path / "cache" / "zoo",  # the zoo's folder
           "requests": _Handler.requests}
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


def _cache_files(cache) -> list:
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_manifest_and_costs_come_from_the_plans():
    es = zoo.manifest()
    assert len(es) == 79 and len({e.name for e in es}) == 79  # 2 x 2 x 16 CIFAR, 15 ImageNet
    by = {r["name"]: r for r in zoo.list()}
    assert (by["resnet56_w16_cifar10"]["params"], by["resnet56_w16_cifar10"]["macs"]) == \
        (855_770, 125_747_840)
    assert by["resnet20_w4_cifar10"]["params"] == 17_534
    assert by["resnet50_w64_imagenet"]["params"] == 25_557_032  # torchvision's ResNet-50
    assert by["resnet56_w16_cifar100"]["classes"] == 100
    assert (by["resnet50_w32_imagenet"]["bytes"], by["resnet50_w32_imagenet"]["sha256"]) == \
        (None, None)
    assert len(zoo.list(dataset="cifar100", arch="resnet20")) == 16


def test_the_bundled_manifest_is_the_release_manifest():
    src = os.path.join(RELEASE, "MANIFEST.tsv")
    if not os.path.isfile(src):
        pytest.skip("no release manifest")
    with open(src, "rb") as a, open(zoo.MANIFEST, "rb") as b:
        assert a.read() == b.read()


def test_list_command_json(offline, capsys):
    assert cli.call(zoo_cmd.main, ["list", "--dataset=cifar10", "--arch=resnet20", "--json"],
                    zoo_cmd.FLAGS) == 0
    out = capsys.readouterr().out.strip().splitlines()
    table = json.loads(out[-1])["networks"]
    assert [r["width"] for r in table] == list(range(1, 17))
    assert all(r["where"] == "local" and os.path.isfile(r["path"]) for r in table)
    assert out[0].split()[:3] == ["name", "classes", "params"]
    assert "resnet20_w4_cifar10" in out[4] and "17,534" in out[4]


def test_load_offline_from_local_folder_checks_once(offline, monkeypatch):
    plan, v = zoo.load("resnet20", width=4, dataset="cifar10")
    assert plan == plan_from_width("resnet20", 4)
    _, ref = import_checkpoint(release_path("resnet20_width4_cifar10_ema.pt"))
    np.testing.assert_array_equal(v["params"]["head"]["kernel"], ref["params"]["head"]["kernel"])
    calls = []
    real = checksums.file_digests  # what digests() calls
    monkeypatch.setattr(checksums, "file_digests", lambda p: calls.append(p) or real(p))
    path = zoo.resolve("zoo:resnet20_w4_cifar10")
    assert path == os.path.join(RELEASE, "resnet20_width4_cifar10_ema.pt")
    assert calls == []  # remembered in the cache's verified.json: not hashed again
    assert os.path.realpath(path) in json.loads((offline / "verified.json").read_text())
    assert not os.path.exists(offline / "resnet20_width4_cifar10_ema.pt")  # used in place


def test_zoo_specs_work_wherever_a_checkpoint_does(offline):
    plan, v, meta = load_model("zoo:resnet20_w4_cifar10")
    assert plan == plan_from_width("resnet20", 4)
    assert meta["source"].endswith("resnet20_width4_cifar10_ema.pt")
    # thinjax.checkpoint, below the zoo, points at the loader that knows it
    with pytest.raises(CheckpointError, match="load it with thinjax.load.load_model"):
        checkpoint.load_model("zoo:resnet20_w4_cifar10")


def test_errors_unknown_name_and_missing_offline(offline, capsys):
    with pytest.raises(zoo.ZooError, match="did you mean resnet56_w7_cifar10"):
        zoo.resolve("zoo:resnet56_w17_cifar10")
    with pytest.raises(CheckpointError, match=r"not in \$THINJAX_ZOO_DIR.*offline"):
        load_model("zoo:resnet50_w8_imagenet")
    with pytest.raises(SystemExit) as ex:
        cli.call(zoo_cmd.main, ["get", "resnet20_w4_cifar1O"], zoo_cmd.FLAGS)
    assert ex.value.code == 2 and "did you mean resnet20_w4_cifar10" in capsys.readouterr().err


def test_corrupt_local_file_is_refused_and_kept(monkeypatch, tmp_path, no_network):
    local = tmp_path / "mirror"
    local.mkdir()
    f = local / "resnet20_width1_cifar10_ema.pt"
    data = bytearray(open(release_path(f.name), "rb").read())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    monkeypatch.setenv("THINJAX_ZOO_DIR", str(local))
    monkeypatch.setenv("THINJAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(zoo.ZooError, match="checksum mismatch"):
        zoo.resolve("zoo:resnet20_w1_cifar10")
    assert f.exists()  # the user's folder: reported, not deleted


def test_download_checks_and_caches(server, capsys):
    assert cli.call(zoo_cmd.main, ["get", SMALL[0], "--json"], zoo_cmd.FLAGS) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    e = zoo.entry(SMALL[0])
    assert got["path"] == str(server["cache"] / e.filename)
    assert hashlib.sha256(open(got["path"], "rb").read()).hexdigest() == e.sha256
    assert _cache_files(server["cache"]) == [e.filename, "verified.json"]
    assert zoo.location(e) == ("cached", got["path"])
    plan, _ = zoo.load(SMALL[0])  # from the cache: no second request
    assert plan == plan_from_width("resnet20", 1)
    assert server["requests"] == ["/" + e.path]
    with open(got["path"], "r+b") as f:  # damaged in the cache: fetched again
        f.write(b"x")
    assert zoo.resolve(SMALL[0]) == got["path"]
    assert zoo.file_digests(got["path"])["sha256"] == e.sha256
    assert len(server["requests"]) == 2


@pytest.mark.parametrize("name,match", [(SMALL[1], "checksum mismatch"),
                                        (SMALL[2], "download of .* failed"),
                                        (SMALL[3], "HTTP Error 404")])
def test_bad_downloads_leave_nothing(server, name, match):
    with pytest.raises(zoo.ZooError, match=match):
        zoo.resolve("zoo:" + name, progress=False)
    assert [f for f in _cache_files(server["cache"]) if f != "verified.json"] == []


def test_git_lfs_pointer_then_content(server, monkeypatch):
    """Where only the git blob id is known and the release keeps a file in LFS: the raw URL
    serves either the pointer (then the content comes from the LFS URL, checked against the
    pointer's oid) or, redirected, the content (accepted when its pointer has that blob)."""
    src = zoo.entry(SMALL[0])
    data = open(release_path(src.filename), "rb").read()
    pointer = zoo.lfs_pointer(hashlib.sha256(data).hexdigest(), len(data))
    e = zoo.Entry("cifar10", "resnet20", 1, "lfs/model.pt", None, None, zoo.git_blob_id(pointer))
    (server["root"] / "lfs").mkdir()
    (server["root"] / "lfs" / "model.pt").write_bytes(pointer)
    (server["root"] / "media" / "lfs").mkdir(parents=True)
    (server["root"] / "media" / "lfs" / "model.pt").write_bytes(data)
    monkeypatch.setenv("THINJAX_ZOO_LFS_URL", server["url"] + "/media")
    path = zoo.download(e, progress=False)
    assert open(path, "rb").read() == data
    assert server["requests"] == ["/lfs/model.pt", "/media/lfs/model.pt"]
    os.remove(path)
    (server["root"] / "lfs" / "model.pt").write_bytes(data)  # the content itself
    assert open(zoo.download(e, progress=False), "rb").read() == data
    (server["root"] / "media" / "lfs" / "model.pt").write_bytes(data[:-1])
    (server["root"] / "lfs" / "model.pt").write_bytes(pointer)
    os.remove(path)
    with pytest.raises(zoo.ZooError, match="does not match its LFS pointer"):
        zoo.download(e, progress=False)
    assert _cache_files(server["cache"]) == ["verified.json"]
