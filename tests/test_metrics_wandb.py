"""config.logging.wandb: a tiny training run logs to an offline Weights & Biases run the same
numbers as its metrics.jsonl, a resumed workdir goes on in the same W&B run, and without
wandb installed the setting is one 'error:' line before anything is written."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.helpers import ROOT, main_cmd, sub_env
from thinjax.config import base_config, check_rerun, validate
from thinjax.errors import ConfigError
from thinjax.plan import plan_from_width

WANDB = ["--config.logging.wandb=True", "--config.logging.wandb_project=thinjax-test"]


def wandb_records(path: str):
    """The protobuf records of a .wandb file: W&B's transaction log (a 7-byte header, then
    LevelDB-log chunks in 32 KiB blocks: crc32c, length, type; FULL=1 ... LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional: this test's own skip
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield pb.Record.FromString(buf)
            buf = b""


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb's core writes the nested form


def offline_run(folder) -> tuple[str, list[dict], dict]:
    """(run id, history rows, config) of the one offline run under `folder`/wandb."""
    runs = glob.glob(os.path.join(folder, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, runs
    rows, config = [], {}
    for r in wandb_records(runs[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({item_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "run":
            config = {item_key(i): json.loads(i.value_json) for i in r.run.config.update}
    return os.path.basename(runs[0])[len("run-"):-len(".wandb")], rows, config


def train(workdir, env, *extra) -> subprocess.CompletedProcess:
    r = subprocess.run(main_cmd(workdir, *WANDB, *extra), capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_offline_wandb_run_holds_the_metrics_jsonl_values(tmp_path):
    pytest.importorskip("wandb")
    env = {**sub_env(), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"),
           "WANDB_SILENT": "true"}
    (tmp_path / "wandb_dir").mkdir()
    workdir = tmp_path / "run"
    train(workdir, env)
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    run_id, rows, config = offline_run(tmp_path / "wandb_dir")
    assert run_id == (workdir / "wandb_run_id").read_text().strip()
    assert [r["_step"] for r in rows] == [x["step"] for x in lines] == [4, 8, 12]
    for row, line in zip(rows, lines):
        logged = {k: v for k, v in row.items() if not k.startswith("_")}
        assert logged == {k: v for k, v in line.items() if k != "step"}  # exactly equal
    assert "ema_eval_top1" in rows[-1] and 0 <= rows[-1]["ema_eval_top1"] <= 100
    assert config["model"]["width"] == 4  # the run's settings, recorded
    assert config["logging"]["wandb"] is True

    # resumed (longer): the same W&B run id goes on from the checkpoint; without
    # $WANDB_DIR wandb's files go into the workdir
    env.pop("WANDB_DIR")
    train(workdir, env, "--config.train.total_steps=16")
    run_id2, rows2, _ = offline_run(workdir)
    assert run_id2 == run_id
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    assert [r["_step"] for r in rows2] == [16] and lines[-1]["step"] == 16
    assert rows2[0]["train_loss"] == lines[-1]["train_loss"]


def test_without_wandb_the_setting_is_one_error_line(tmp_path):
    workdir = tmp_path / "run"
    code = ("import sys; sys.modules['wandb'] = None; "  # as if wandb were not installed
            "from thinjax.commands.train import cli_main; cli_main()")
    cmd = main_cmd(workdir, *WANDB)
    r = subprocess.run([sys.executable, "-c", code, *cmd[3:]], capture_output=True, text=True,
                       cwd=ROOT, env=sub_env(), timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    # (TensorFlow's own start-up lines may precede it: they are not thinjax's)
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error")] == [
        "error: config.logging.wandb=True needs the Python package 'wandb', which is not "
        "installed: pip install 'thinjax[wandb]' (or set --config.logging.wandb=False)"]
    assert not workdir.exists()


def test_wandb_settings_are_checked():
    c = base_config()
    validate(c)  # off by default: nothing to check
    c.logging.wandb, c.logging.wandb_mode = True, "ofline"
    with pytest.raises(ConfigError, match="wandb_mode='ofline' unknown; use one of online"):
        validate(c)


def test_wandb_may_be_turned_on_when_a_run_is_resumed(tmp_path):
    """The logging keys change no weight: a workdir recorded before the section existed
    (its config.json has no 'logging') resumes with W&B on; the model may not change."""
    old = base_config()
    del old["logging"]
    (tmp_path / "config.json").write_text(old.to_json_best_effort())
    plan = plan_from_width("resnet20", old.model.width)
    plan.save(str(tmp_path / "plan.json"))
    new = base_config()
    new.logging.wandb, new.logging.wandb_name, new.logging.wandb_mode = True, "r20", "offline"
    check_rerun(str(tmp_path), new, plan)
    new.model.width = 8
    with pytest.raises(ConfigError, match=r"model.width: 16 -> 8"):
        check_rerun(str(tmp_path), new, plan_from_width("resnet20", 8))


def test_a_wandb_run_that_cannot_start_is_one_error(tmp_path, monkeypatch):
    """Online without a W&B login: a ConfigError saying how to go on, not wandb's traceback."""
    pytest.importorskip("wandb")
    from thinjax.settings import LoggingSettings
    from thinjax.train.metrics import MetricWriter
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    log = LoggingSettings(wandb=True, wandb_project="p", wandb_entity="", wandb_name="",
                          wandb_mode="online")
    with pytest.raises(ConfigError, match=r"W&B could not start a run \(.*API key.*\); log in"):
        MetricWriter(str(tmp_path), enabled=True, logging=log)
