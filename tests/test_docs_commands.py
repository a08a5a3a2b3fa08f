"""Every command in README.md and docs/*.md runs as written, on the bundled sample.

The commands are read from the Markdown (fenced shell blocks; docs/performance.md's
indented ones), in document order, and each must match one rule of `RULES`: ``run`` (as
written, in a temporary folder; the data swapped for the bundled sample, ``../shared``
for the real folder), ``short`` (a training run: the same command plus a few
steps' overrides) or ``skip`` with the reason. A new command in the docs that no rule
covers fails the test, naming it. The commands run in document order in one folder, so a
later command finds what an earlier one wrote (``runs/r56_l1/config.py``); a command that
appears twice runs once.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

from tests.conftest import SHARED
from tests.helpers import ROOT, sub_env
from thinjax.plan import plan_from_width

DOCS = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs"))
                              if n.endswith(".md"))
START = (r"(?:[A-Z_]+=\S+ )*(?:taskset -c \S+ )?(?:python3? |\.venv/bin/python |thinjax-|"
         r"make |bash |tensorboard |pip |unzip )")
# (pattern, action, reason): the first pattern that matches a command decides
RULES = [
    (r"^make (run|test)$", "skip", "the quick start: CI runs `make test` on a clean clone, "
     "and tests/test_main.py runs configs/default.py (what `make run` runs)"),
    (r"^unzip .*cifar10-jpeg\.zip", "skip", "unpacks 60,000 images; the tests unpack it once "
     "per worker (conftest) and the commands below run on the bundled sample"),
    (r"thinjax\.study ", "skip", "a study: hours of training (tests/test_study.py and "
     "tests/test_protocol.py run tiny studies end to end)"),
    (r"benchmarks/(?!plot_run)", "skip", "a benchmark: minutes of timing whose figures are "
     "in docs/performance.md, measured by hand with the CPU named"),
    (r"--config=CONFIG ", "skip", "a template (CONFIG, WORKDIR stand for your own)"),
    (r"(thinjax\.main|thinjax-train) .*--config=(configs/(quick_cifar10|thin_cifar|prune_)|"
     r"runs/)", "short", ""),
    (r"thinjax\.(cost|import_torch|evaluate|convert|zoo|export|plot)\b|thinjax-plot|"
     r"benchmarks/plot_run|tensorboard ", "run", ""),
]
SHORT = ["--config.train.total_steps=2", "--config.train.batch_size=16",
         "--config.train.eval_every_epochs=1000", "--config.data.eval_batch_size=500",
         "--config.train.async_checkpoints=False", "--config.train.checkpoint_every=2"]


def commands(path: str) -> list[str]:
    """The shell commands of a Markdown file, continuation lines joined, comments dropped."""
    text = open(os.path.join(ROOT, path)).read()
    blocks = [b for lang, b in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
              if lang in ("", "bash", "sh", "console", "shell")]
    if path.endswith("performance.md"):
        blocks += re.findall(r"(?:^    .*\n)+", text, re.M)
    out = []
    for b in blocks:
        lines, i = [ln.strip() for ln in b.splitlines()], 0
        while i < len(lines):
            ln = lines[i]
            while ln.endswith("\\") and i + 1 < len(lines):
                i += 1
                ln = ln[:-1].rstrip() + " " + lines[i]
            ln = re.sub(r"\s+#.*$", "", ln).strip()
            if re.match(START, ln):
                out.append(ln)
            i += 1
    return out


def rule(cmd: str) -> tuple[str, str]:
    for pattern, action, reason in RULES:
        if re.search(pattern, cmd):
            return action, reason
    raise AssertionError(f"no rule in tests/test_docs_commands.py covers the documented "
                         f"command {cmd!r}: add one (run, short or skip with a reason)")


def localise(cmd: str, tmp: str) -> list[str]:
    """The command as this test runs it (in `tmp`, where configs/ and benchmarks/ are
    links to the repository's): the bundled sample for the data, the real ../shared."""
    cmd = re.sub(r"(\$HOME|~|DIR)/data/cifar10-jpeg|DIR/cifar10-jpeg", "sample:cifar10", cmd)
    cmd = cmd.replace("../shared/", SHARED.rstrip("/") + "/").replace("=/tmp/", f"={tmp}/")
    argv = shlex.split(cmd)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _fresh_outputs(argv: list[str], tmp: str) -> None:
    """A command's output or workdir that an earlier command (of another file) made is
    removed first: each command runs as on a fresh folder."""
    for a in argv:
        m = re.match(r"--(output|workdir)=(.+)", a)
        if m:
            path = os.path.join(tmp, m.group(2))
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)


def test_every_documented_command_has_a_rule():
    found = [c for path in DOCS for c in commands(path)]
    assert len(found) > 40  # the extraction sees the docs' commands
    for cmd in found:
        action, reason = rule(cmd)
        assert action in ("run", "short") or reason


def test_every_documented_command_runs(tmp_path):
    """Each distinct command of README.md and docs/, in document order, in one folder."""
    tmp = str(tmp_path)
    for d in ("configs", "benchmarks"):
        os.symlink(os.path.join(ROOT, d), os.path.join(tmp, d))
    plan_from_width("resnet20", 16).save(os.path.join(tmp, "plan.json"))  # README's plan
    env = {**sub_env(), "PYTHONPATH": ROOT,
           "THINJAX_ZOO_DIR": os.path.join(SHARED, "checkpoints", "thinresnet-release")}
    done, skipped = set(), []
    for path in DOCS:
        for cmd in commands(path):
            action, reason = rule(cmd)
            needs_shared = "../shared" in cmd or "zoo:" in cmd or " zoo get" in cmd
            if cmd in done or action == "skip" or (needs_shared and not os.path.isdir(SHARED)):
                skipped.append(cmd)
                continue
            argv = localise(cmd, tmp)
            if action == "short":
                argv += SHORT + ([] if "--config.data.name" in cmd
                                 else ["--config.data.name=sample:cifar10"])
            if argv[0] == "tensorboard":
                argv = [sys.executable, "-c", "import tensorboard"]  # the docs' viewer
            _fresh_outputs(argv, tmp)
            r = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True,
                               timeout=600)
            assert r.returncode == 0, f"{path}: {cmd}\n{r.stderr[-2000:]}"
            done.add(cmd)
    assert len(done) >= (20 if os.path.isdir(SHARED) else 5), (done, skipped)
