"""Every command in README.md and docs/*.md runs as written, on the bundled sample.

The commands are read from the Markdown (fenced shell blocks; docs/performance.md's
indented ones), in document order, and each must match one rule of `RULES`: ``run`` (as
written, in a temporary folder; the data swapped for the bundled sample, ``../shared``
for the real folder), ``short`` (a training run: the same command plus a few
steps' overrides) or ``skip`` with the reason. A new command in the docs that no rule
covers fails the test, naming it. The commands run in document order in one folder, so a
later command finds what an earlier one wrote (``runs/r56_l1/config.py``); a command that
appears twice (as this test runs it: the same after the data is swapped) runs once.
"""

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import SHARED
from tests.helpers import ROOT, sub_env

DOCS = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs"))
                              if n.endswith(".md"))
START = (r"(?:[A-Z_]+=\S+ )*(?:taskset -c \S+ )?(?:python3? |\.venv/bin/python |thinjax-|"
         r"make |bash |tensorboard |pip |unzip )")
# (pattern, action, reason): the first pattern that matches a command decides
RULES = [
    (r"^pip install", "skip", "an install: CI installs from a clean clone with `make`"),
    (r"^make (run|test|docs)$", "skip", "the quick start: CI runs `make test` on a clean clone, "
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
EVAL = ["--split=test[:200]", "--batch_size=200"]
# Python blocks that are fragments of something else, not scripts
# a study config's body (docs/study.md); a block the docs mark as a fragment
PY_SKIP = r"c\.\w+ = |# \(a fragment"
# what a `short` run adds: two steps, a 200-image evaluation; `run` commands on the sample
# evaluate 200 of its 1,000 test images (EVAL)
SHORT = ["--config.train.total_steps=2", "--config.train.batch_size=16",
         "--config.train.eval_every_epochs=1000", "--config.data.eval_batch_size=200",
         "--config.data.eval_split=test[:200]",
         "--config.train.async_checkpoints=False", "--config.train.checkpoint_every=2"]


def items(path: str) -> list[tuple[str, str]]:
    """The shell commands (``("sh", line)``, continuation lines joined, comments dropped)
    and the Python blocks (``("py", block)``) of a Markdown file, in document order."""
    text = open(os.path.join(ROOT, path)).read()
    found = [(m.group(1), m.group(2)) for m in
             re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]
    if path.endswith("performance.md"):
        found += [("", b) for b in re.findall(r"(?:^    .*\n)+", text, re.M)]
    out = []
    for lang, b in found:
        if lang == "python":
            out.append(("py", b))
        elif lang in ("", "bash", "sh", "console", "shell"):
            out += [("sh", c) for c in _shell_lines(b)]
    return out


def _shell_lines(block: str) -> list[str]:
    lines, i, out = [ln.strip() for ln in block.splitlines()], 0, []
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


def commands(path: str) -> list[str]:
    return [c for kind, c in items(path) if kind == "sh"]


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
    cmd = cmd.replace("=/tmp/", f"={tmp}/").replace("../shared/", SHARED.rstrip("/") + "/")
    argv = shlex.split(cmd)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0].startswith("thinjax-"):  # a console script of the install being tested
        argv[0] = os.path.join(os.path.dirname(sys.executable), argv[0])
    return argv


def _outputs(argv: list[str]) -> list[str]:
    """The paths a command writes (its --output and --workdir), as written."""
    return [m.group(2) for a in argv if (m := re.match(r"--(output|workdir)=(.+)", a))]


def _reads_missing(argv: list[str], missing: set) -> bool:
    """True when a flag's value (or a Python block's quoted path) names the output of an
    earlier command that was skipped because ../shared is absent
    (``--config=runs/r56_l1/config.py``, ``InferenceSession("r56.onnx")``)."""
    own = {f"--{k}={m}" for m in missing for k in ("output", "workdir")}
    if argv[1:2] == ["-c"]:  # a Python block: the path quoted in its text
        return any(re.search(rf"[\"']{re.escape(m)}[\"'/]", argv[2]) for m in missing)
    values = [a.split("=", 1)[-1] for a in argv if a not in own]
    return any(v == m or v.startswith(m + "/") for v in values for m in missing)


def _fresh_outputs(argv: list[str], tmp: str) -> None:
    """A command's output or workdir that an earlier command (of another file) made is
    removed first, with an export's plan beside it: each runs as on a fresh folder."""
    for out in _outputs(argv):
        path = os.path.join(tmp, out)
        for p in (path, os.path.splitext(path)[0] + ".plan.json"):
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)


def _argv(kind: str, text: str, tmp: str) -> list[str] | None:
    """How the test runs an item; None: skipped (its rule's reason) or already run."""
    if kind == "py":
        if re.match(PY_SKIP, text):
            return None
        return [sys.executable, "-c", text]
    action, _ = rule(text)
    if action == "skip":
        return None
    argv = localise(text, tmp)
    if action == "run" and "--data=sample:cifar10" in argv and "--split" not in text:
        argv += EVAL
    if action == "short":
        argv += SHORT + ([] if "--config.data.name" in text
                         else ["--config.data.name=sample:cifar10"])
    return argv


def test_every_documented_command_has_a_rule():
    found = [c for path in DOCS for c in commands(path)]
    assert len(found) > 40  # the extraction sees the docs' commands
    for cmd in found:
        action, reason = rule(cmd)
        assert action in ("run", "short") or reason


@dataclasses.dataclass
class DocsRun:
    """What the documented commands share: one folder (configs/ and benchmarks/ linked in),
    its environment, the commands run so far (each distinct one runs once), the outputs of
    the commands skipped for want of ../shared (a command reading one is skipped too) and
    the Markdown files whose test ran."""
    tmp: str
    env: dict
    done: set = dataclasses.field(default_factory=set)
    missing: set = dataclasses.field(default_factory=set)
    files: list = dataclasses.field(default_factory=list)


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory) -> DocsRun:
    tmp = str(tmp_path_factory.mktemp("docs"))
    for d in ("configs", "benchmarks"):
        os.symlink(os.path.join(ROOT, d), os.path.join(tmp, d))
    env = {**sub_env(), "PYTHONPATH": ROOT,
           "THINJAX_ZOO_DIR": os.path.join(SHARED, "checkpoints", "thinresnet-release")}
    return DocsRun(tmp, env)


@pytest.mark.parametrize("path", DOCS)
def test_every_documented_command_runs(path, docs_folder):
    """Each distinct command and Python block of one Markdown file, in document order (the
    files in DOCS order), in one folder for all (the Python blocks run as written, as
    scripts); one test a file, so each has the suite's per-test time limit."""
    run = docs_folder
    tmp, done, missing = run.tmp, run.done, run.missing
    run.files.append(path)
    for kind, text in items(path):
        needs_shared = any(w in text for w in ("../shared", "zoo:", "zoo get",
                                                "pretrained=True", "zoo.load"))
        argv = _argv(kind, text, tmp)
        if argv is None or tuple(argv) in done:
            continue
        if (needs_shared and not os.path.isdir(SHARED)) or _reads_missing(argv, missing):
            missing.update(_outputs(argv))  # what it would have made is missing too
            continue
        _fresh_outputs(argv, tmp)
        t = time.perf_counter()
        r = subprocess.run(argv, cwd=tmp, env=run.env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"{path}: {text}\n{r.stderr[-2000:]}"
        print(f"{time.perf_counter() - t:5.1f} s  {path}: {text[:100]!r}")
        done.add(tuple(argv))
        missing.difference_update(_outputs(argv))  # made now: its readers run again


def test_the_documented_commands_ran(docs_folder):
    """After the files' tests (run before this one, in file order): enough ran."""
    run = docs_folder
    if len(run.files) < len(DOCS):
        pytest.skip(f"{len(run.files)} of the {len(DOCS)} files' tests ran before this one "
                    "(deselected): it counts the commands of all of them")
    assert len(run.done) >= (25 if os.path.isdir(SHARED) else 5), run.done


def test_a_command_reading_a_skipped_commands_output_is_skipped_too():
    """Without ../shared the command that makes runs/r56_l1 is skipped; the commands that
    read it must be skipped with it, and no other."""
    missing = {"runs/r56_l1"}
    main = ["python", "-m", "thinjax.main"]
    assert _reads_missing(main + ["--config=runs/r56_l1/config.py", "--workdir=runs/ft"], missing)
    assert _reads_missing(main + ["--config.init_from=runs/r56_l1"], missing)
    assert not _reads_missing(main + ["--config=configs/quick_cifar10.py"], missing)
    assert not _reads_missing(main + ["--workdir=runs/r56_l1"], missing)  # makes it anew
    assert not _reads_missing(main + ["--config=runs/r56_l10/config.py"], missing)
    py = [sys.executable, "-c"]
    assert _reads_missing(py + ['s = ort.InferenceSession("r56.onnx")'], {"r56.onnx"})
    assert not _reads_missing(py + ['s = ort.InferenceSession("r20.onnx")'], {"r56.onnx"})
