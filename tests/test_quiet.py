"""Quiet commands: nothing from TensorFlow's or TFLite's C++ logs on stderr, and progress off
a terminal as plain lines (no carriage-return frames)."""

import io
import os
import re
import subprocess
import sys

from tqdm import tqdm

from tests.helpers import ROOT, main_cmd, sub_env
from thinjax.interop.quiet import stderr_without
from thinjax.progress import Lines, progress_bar

CHECKPOINT = os.path.join(ROOT, "thinjax", "assets", "resnet20_width4_cifar10_ema.safetensors")
# what TensorFlow (absl/tsl C++ logging), oneDNN and TFLite print: 'I0000 00:00:...',
# 'W1206 07:43:59...', their file:line, absl's pre-InitializeLog notice, TFLite's 'INFO:'
TF_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|oneDNN custom operations"
                     r"|tensorflow/|cpu_feature_guard|XNNPACK|^INFO: ", re.M)


def _run(args):
    env = sub_env()
    for k in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):  # unset, as in a user's shell
        env.pop(k, None)  # (importing jax in this process set the first)
    r = subprocess.run([sys.executable, *args], capture_output=True, cwd=ROOT, env=env,
                       timeout=600)  # bytes: text mode would turn tqdm's '\r' into '\n'
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _assert_quiet(r):
    assert not TF_LINE.search(r.stderr), r.stderr[:3000]
    assert "\r" not in r.stderr and "\r" not in r.stdout, repr(r.stderr[:500])


def test_a_training_run_prints_nothing_from_tensorflow(tmp_path):
    r = _run(main_cmd(tmp_path / "run", "--config.train.total_steps=2")[1:])
    _assert_quiet(r)
    assert "step 2/2" in r.stdout, r.stdout


def test_evaluation_off_a_terminal_draws_no_bar():
    r = _run(["-m", "thinjax.evaluate", f"--checkpoint={CHECKPOINT}", "--data=sample:cifar10"])
    _assert_quiet(r)
    assert "top-1" in r.stdout and "eval:" not in r.stderr, (r.stdout, r.stderr)


def test_a_tflite_export_does_not_announce_xnnpack(tmp_path):
    r = _run(["-m", "thinjax.export", f"--checkpoint={CHECKPOINT}", "--format=tflite",
              f"--output={tmp_path / 'm.tflite'}"])
    _assert_quiet(r)
    assert "max relative logit error" in r.stdout, r.stdout


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_lines_prints_every_interval_and_a_last_line_only_after_one():
    out, clock = io.StringIO(), Clock()
    bar = Lines(1000, "img", "eval", out, every_s=30.0, clock=clock)
    bar.update(100)
    clock.t += 29.9
    bar.update(100)
    assert out.getvalue() == ""  # under the interval: nothing yet
    clock.t += 0.1
    bar.update(300)  # 500 images in 30 s
    assert out.getvalue() == "eval: 500/1,000 img (50%), 17 img/s\n"
    clock.t += 10
    bar.update(500)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == ["eval: 500/1,000 img (50%), 17 img/s",
                                           "eval: 1,000/1,000 img (100%), 25 img/s"]
    short = io.StringIO()
    with Lines(None, "B", "x.pt", short, every_s=30.0, clock=Clock()) as b:
        b.update(10)
    assert short.getvalue() == ""  # a loop shorter than the interval prints nothing


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_tqdm_on_a_terminal_only():
    assert isinstance(progress_bar(10, "img", "eval", stream=io.StringIO()), Lines)
    term = Terminal()
    with progress_bar(10, "img", "eval", stream=term) as bar:
        assert isinstance(bar, tqdm)
        bar.update(10)
    assert "\r" in term.getvalue() and "10/10" in term.getvalue()
    off = io.StringIO()
    with progress_bar(10, "img", "eval", enabled=False, stream=off) as bar:
        bar.update(10)
    assert off.getvalue() == ""


def test_stderr_without_drops_only_the_named_lines_at_the_file_descriptor(capfd):
    with stderr_without("INFO: Created", "noise"):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nkept 1\n")
        os.write(2, b"noise again\nkept 2\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "kept 1\nkept 2\nafter\n"
