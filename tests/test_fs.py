"""Local and remote (gs://) paths: what can be checked without a bucket."""

import json

from thinjax import fs
from thinjax.train.loop import MetricWriter


def test_remote_paths_are_left_alone_and_local_writes_are_atomic(tmp_path):
    assert fs.absolute("gs://bucket/run") == "gs://bucket/run"
    assert fs.absolute("run").startswith("/") and fs.is_remote("s3://b/x")
    p = tmp_path / "a.json"
    fs.write_text(str(p), "1")
    fs.write_text(str(p), "2")
    assert fs.read_text(str(p)) == "2" and [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_metric_writer_rewrites_whole_files_where_it_cannot_append(tmp_path, monkeypatch):
    """Object stores cannot append: the writer keeps the lines and rewrites the file (here
    forced on a local directory), continuing what an earlier run wrote."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    monkeypatch.setattr(fs, "is_remote", lambda p: True)
    monkeypatch.setattr(fs, "_p", lambda p: __import__("pathlib").Path(p))
    w = MetricWriter(str(tmp_path), enabled=True)
    w.write(2, {"loss": 1.5})
    w.write(3, {"loss": 1.0})
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]


def test_temporary_files_renamed_into_place_get_a_new_files_permissions(tmp_path):
    """A cache or output file made through fs.mkstemp is readable by the group (umask
    022 -> 0644), not mkstemp's 0600; the umask is honoured (077 -> 0600)."""
    import os

    from thinjax import fs
    old = os.umask(0o022)
    try:
        fd, tmp = fs.mkstemp(str(tmp_path), ".x.part-")
        os.close(fd)
        os.replace(tmp, tmp_path / "x")
        assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        fd, tmp = fs.mkstemp(str(tmp_path), ".y.part-", mode=0o777)
        os.close(fd)
        assert os.stat(tmp).st_mode & 0o777 == 0o700
    finally:
        os.umask(old)
