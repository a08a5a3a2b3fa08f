"""Issue 11, "Nothing lost": a rerun that would change the run is refused, unreadable and
non-finite checkpoints are handled, ``--overwrite`` cannot delete a user's folder, and
every bad input is one clear line.

The issue's nine cases and the tests that cover them:

  1. a changed model wipes the run: `test_changed_config_is_refused_before_anything_is_written`
     (thinjax.config.check_rerun) and `test_commands_as_a_user` (``thinjax.main`` with
     another width on a recorded workdir: exit 2, every file untouched)
  2. a corrupt newest checkpoint leaves the run stuck:
     `test_sigkill_mid_run_then_resume_equals_uninterrupted` (a newest step missing a data
     file and a garbage step after it: both set aside, the run resumes from the step
     before and finishes)
  3. NaN weights kept as "last good": tests/test_train.py::test_non_finite_loss_stops_with_the_step
     (lr 1e30: the step is not applied, no checkpoint) and
     `test_non_finite_weights_are_never_saved_or_evaluated`
  4. ``--overwrite`` deletes whatever it is pointed at:
     `test_overwrite_replaces_only_thinjax_outputs_and_never_the_input`
  5. duplicate metrics after a resume: `test_sigkill_mid_run_then_resume_equals_uninterrupted`
  6. accepted nonsense (negative epochs, a target above the cost, input size 0):
     `test_nonsense_is_refused_before_any_work`
  7. tracebacks for a read-only workdir/output and a missing config file:
     `test_commands_as_a_user` (run as user nobody through setpriv/runuser when root)
  8. leftovers after a failed start: `test_commands_as_a_user` (a missing data folder, a
     class-count mismatch, a bad batch size) and `test_undo_created_keeps_what_was_there`
  9. wrong advice for a malicious .pt: `test_pickle_with_code_is_refused_without_unsafe_advice`
     and tests/test_interop.py::test_corrupt_and_unsafe_files_are_refused

Also: SIGKILL of an iterative pruning run mid-run after its checkpoint at step 12 (written
after the network materialised), then resume, ends with the uninterrupted
run's network and weights bit for bit
(`test_sigkill_mid_run_then_resume_equals_uninterrupted`).
"""

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

import thinjax
from tests.helpers import ROOT, main_cmd, run, sub_env, wait_for_checkpoint
from thinjax import fs
from thinjax.checkpoint import export_model, load_model
from thinjax.commands import cli, export, import_torch
from thinjax.commands import cost as cost_cmd
from thinjax.commands import evaluate as evaluate_command
from thinjax.commands import prune as convert
from thinjax.config import base_config, check_rerun, validate
from thinjax.cost import count
from thinjax.errors import CheckpointError, ConfigError, NonFiniteLoss
from thinjax.plan import Plan, plan_from_width
from thinjax.train.keeper import CheckpointKeeper

ASSET = os.path.join(os.path.dirname(thinjax.__file__), "assets",
                     "resnet20_width4_cifar10_ema.safetensors")
STEPS = ["--config.train.total_steps=20"]  # checkpoints and log lines every 4 steps (TINY)
# iterative pruning to half the MACs, events at steps 4 and 8 (78 steps per epoch)
PRUNE = ["--config.model.width=8", "--config.prune.schedule=iterative",
         "--config.prune.num_events=2", "--config.prune.start_epoch=0.05",
         "--config.prune.every_epochs=0.05", "--config.prune.target=0.5"]


def call(command, args: list[str], flag_values=None) -> tuple[int, str]:
    """(exit status, stderr) of a command run in this process as its command line would."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.call(command.main, args, flag_values or command.FLAGS)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def snapshot(path) -> dict:
    """Every file under `path` with its bytes and modification time."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


def metric_steps(workdir, key: str = "train_loss") -> list[int]:
    """The steps of the metrics.jsonl lines that hold `key`."""
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [m["step"] for m in lines if key in m]


# -- 1: a changed config ---------------------------------------------------------------


def record(workdir, cfg) -> None:
    """A workdir as a first start leaves it: the resolved config and plan."""
    os.makedirs(workdir, exist_ok=True)
    fs.write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=1))
    plan_from_width(cfg.model.name, cfg.model.width).save(os.path.join(workdir, "plan.json"))


def test_changed_config_is_refused_before_anything_is_written(tmp_path, capsys):
    cfg = base_config()
    cfg.model.width = 4
    record(tmp_path, cfg)
    before = snapshot(tmp_path)
    for key, value, named in [("model", ("width", 8), "model.width: 4 -> 8"),
                              ("train", ("batch_size", 64), "train.batch_size: 128 -> 64"),
                              ("prune", ("schedule", "oneshot"), "prune.schedule"),
                              ("seed", None, "seed: 0 -> 1")]:
        new = base_config()
        new.model.width = 4
        if value is None:
            new[key] = 1
        else:
            new[key][value[0]] = value[1]
        with pytest.raises(ConfigError) as e:
            check_rerun(str(tmp_path), new, plan_from_width("resnet20", new.model.width))
        assert named in str(e.value) and "new --workdir" in str(e.value), str(e.value)
    assert snapshot(tmp_path) == before
    # logging, evaluation and checkpoint frequency may change; the length with a warning
    new = base_config()
    new.model.width = 4
    new.train.log_every, new.train.checkpoint_every, new.data.eval_batch_size = 7, 9, 100
    new.train.total_steps = 20
    check_rerun(str(tmp_path), new, plan_from_width("resnet20", 4))
    assert "train.total_steps: 0 -> 20" in capsys.readouterr().err


# -- 2 and 5, and the SIGKILL resume -----------------------------------------------------


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """An iterative pruning run (events at steps 4 and 8) killed (SIGKILL) after its
    checkpoint at step 12, the first written after the network materialised; then two
    later checkpoints that cannot be restored (a copy of step 12 missing a data file, and
    a folder of garbage: case 2); resumed: it restores step 12's smaller network and ends
    bit for bit where an uninterrupted run (run beside it, in the same environment) ends,
    logs each step once (case 5), and keeps the unreadable steps aside."""
    ref, wd = tmp_path / "straight", tmp_path / "killed"
    pipes = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env=sub_env())
    straight = subprocess.Popen(main_cmd(ref, *STEPS, *PRUNE, "--json"), **pipes)
    killed = subprocess.Popen(main_cmd(wd, *STEPS, *PRUNE), **pipes)
    wait_for_checkpoint(wd, killed, 12)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]
    _check_iterative_run(ref, out)
    # the kill came mid-run: past the checkpoint at step 12, before the end
    ck = wd / "checkpoints"
    saved = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
    assert killed.returncode == -signal.SIGKILL and 12 in saved and max(saved) < 20
    assert not (wd / "results.json").exists() and 20 not in metric_steps(wd)
    assert "masks" in load_model(str(ck / "8"))[2]  # pruned, not yet materialised
    assert load_model(str(ck / "12"))[2]["materialized"]
    newest = max(saved)
    shutil.copytree(ck / str(newest), ck / str(newest + 1))
    data = ck / str(newest + 1) / "state" / "ocdbt.process_0" / "d"
    os.remove(max(data.iterdir(), key=lambda f: f.stat().st_size))  # the largest array file
    garbage = ck / str(newest + 2)
    os.makedirs(garbage / "meta")
    os.makedirs(garbage / "state")
    (garbage / "state" / "garbage").write_bytes(b"\x00not a checkpoint")
    (garbage / "commit_success.txt").write_text("ok")
    r = run(wd, *STEPS, *PRUNE)
    for step in (newest + 2, newest + 1):
        assert f"checkpoint step {step} cannot be restored" in r.stderr, r.stderr[-3000:]
        assert (wd / "checkpoints-unreadable" / str(step) / "state").is_dir()
    assert f"step {newest}\n" in r.stdout
    # no traceback through thinjax (tensorstore's reads that were still in flight when the
    # failed restore closed orbax's event loop may print "Event loop is closed" tracebacks)
    assert not [x for x in r.stderr.splitlines() if "/thinjax/" in x and 'File "' in x]
    assert metric_steps(wd) == metric_steps(ref) == [4, 8, 12, 16, 20]
    assert metric_steps(wd, "prune_macs") == metric_steps(ref, "prune_macs") == [4, 8]
    assert json.load(open(wd / "results.json"))["steps"] == 20
    for ema in (False, True):
        plan_ref, v_ref, m_ref = load_model(str(ref), use_ema=ema)
        plan, v, m = load_model(str(wd), use_ema=ema)
        assert m["step"] == m_ref["step"] == 20 and plan == plan_ref
        for a, b in zip(_leaves(v_ref), _leaves(v)):
            np.testing.assert_array_equal(a, b)


def _check_iterative_run(workdir, stdout: str) -> None:
    """The uninterrupted run pruned twice to half the MACs and ends materialised."""
    assert stdout.count("prune event") == 2 and "materialised: continuing on" in stdout
    res = json.loads(stdout.strip().splitlines()[-1])
    dense = count(plan_from_width("resnet20", 8), 32)
    assert [e["step"] for e in res["prune_events"]] == [4, 8]
    assert abs(res["macs"] / dense.macs - 0.5) < 0.01 and res["dense_macs"] == dense.macs
    plan, _, meta = load_model(str(workdir))
    assert plan == Plan.from_dict(res["plan"]) and count(plan).macs == res["macs"]
    assert meta["materialized"] and "masks" not in meta


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


# -- 3: non-finite weights -----------------------------------------------------------------


def test_non_finite_weights_are_never_saved_or_evaluated(tmp_path):
    plan, v, _ = load_model(ASSET)
    bad = {"params": dict(v["params"]), "batch_stats": v["batch_stats"]}
    bad["params"]["head"] = {k: np.full_like(x, np.nan) for k, x in v["params"]["head"].items()}
    # the keeper refuses to save it, and nothing is written
    keeper = CheckpointKeeper(str(tmp_path / "run"), 3, False, 0, async_save=False)
    state = types.SimpleNamespace(params=bad["params"], batch_stats=v["batch_stats"],
                                  ema_params=v["params"], ema_batch_stats=v["batch_stats"])
    with pytest.raises(NonFiniteLoss, match="no longer finite; nothing was saved"):
        keeper.save(4, state, {"plan": plan.to_dict()})
    assert keeper.mngr.all_steps() == []
    keeper.close()
    # a checkpoint holding NaN (written by an older version, say) is refused: exit 2
    export_model(str(tmp_path / "nan"), plan, bad)
    code, err = call(evaluate_command, [f"--checkpoint={tmp_path / 'nan'}",
                                        "--data=sample:cifar10"])
    assert code == 2 and "params/head/" in err and "non-finite values" in err, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_model(str(tmp_path / "nan"))


# -- 4: --overwrite ----------------------------------------------------------------------


def test_overwrite_replaces_only_thinjax_outputs_and_never_the_input(tmp_path):
    mine = tmp_path / "mine"  # a user's folder
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    prune = ["--target_kind=ratio", "--target=0.5"]
    cases = [
        (import_torch, [f"--checkpoint={ASSET}", f"--output={mine}", "--overwrite"],
         "is not a thinjax output directory"),
        (convert, [f"--checkpoint={ASSET}", f"--output={mine}", "--overwrite", *prune],
         "is not a thinjax output directory"),
        (export, [f"--checkpoint={ASSET}", "--format=torch", f"--output={mine}",
                  "--overwrite"], "is not a thinjax torch export"),
        (export, [f"--checkpoint={ASSET}", "--format=onnx",
                  f"--output={mine / 'thesis.tex'}", "--overwrite"],
         "is not a thinjax onnx export")]
    for command, args, message in cases:
        code, err = call(command, args)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(os.listdir(mine)) == ["thesis.tex"]
    # the input itself, a path inside it, a folder around it: refused, even with --overwrite
    out = tmp_path / "imported"
    assert call(import_torch, [f"--checkpoint={ASSET}", f"--output={out}"])[0] == 0
    before = snapshot(out)
    for output, how in [(out, "is the input"), (out / "model", "lies inside the input"),
                        (tmp_path, "contains the input")]:
        code, err = call(convert, [f"--checkpoint={out}", f"--output={output}",
                                   "--overwrite", *prune])
        assert code == 2 and how in err, err
    code, err = call(export, [f"--checkpoint={ASSET}", "--format=onnx",
                              f"--output={ASSET}", "--overwrite"])
    assert code == 2 and "is the input" in err
    assert snapshot(out) == before
    # a thinjax output is replaced (atomically: no temporary left beside it)
    pruned = tmp_path / "pruned"
    for _ in range(2):
        code, err = call(convert, [f"--checkpoint={out}", f"--output={pruned}",
                                   "--overwrite", *prune])
        assert code == 0, err
    assert os.path.isfile(pruned / fs.MARKER) and load_model(str(pruned))[0].stem_width == 2
    assert call(import_torch, [f"--checkpoint={ASSET}", f"--output={out}", "--overwrite"])[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["imported", "mine", "pruned"]
    # an older output without the marker is still recognised by its layout
    os.remove(pruned / fs.MARKER)
    assert fs.is_thinjax_output(str(pruned)) and not fs.is_thinjax_output(str(mine))


# -- 6: nonsense -------------------------------------------------------------------------


def test_nonsense_is_refused_before_any_work(tmp_path):
    for key, value, message in [("epochs", -3, "train.epochs=-3 trains for no step"),
                                ("epochs", 0, "train.epochs=0 trains for no step"),
                                ("total_steps", -5, "train.total_steps=-5: must be >= 0"),
                                ("batch_size", 0, "train.batch_size=0: must be a positive")]:
        cfg = base_config()
        cfg.train[key] = value
        with pytest.raises(ConfigError, match=message):
            validate(cfg)
    for size in ("0", "-32"):
        code, err = call(cost_cmd, ["--model=resnet20", f"--input_size={size}"])
        assert code == 2 and f"--input_size={size}: an input size is a number of pixels" in err
    out = tmp_path / "o"
    for kind, target in [("macs", 1e12), ("macs", 2_633_888), ("params", 17_534),
                         ("macs_fraction", 1.0), ("ratio", 0.0)]:
        code, err = call(convert, [f"--checkpoint={ASSET}", f"--output={out}",
                                   f"--target_kind={kind}", f"--target={target}"])
        assert code == 2 and "nothing to prune" in err, (kind, err)
    assert not out.exists()


# -- 7 and 8: as a user, end to end --------------------------------------------------------


def _config_file(base: str, name: str, change: str) -> str:
    """A config file: configs/default.py with one change (absl re-parses --config.KEY
    overrides only once per process)."""
    path = os.path.join(base, f"cfg_{name}.py")
    with open(path, "w") as f:
        f.write("from configs.default import get_config as default\n\n\n"
                f"def get_config():\n    c = default()\n    {change}\n    return c\n")
    return path


def user_checks(base: str) -> dict:
    """The command-line checks that `test_commands_as_a_user` runs in a subprocess as user
    nobody: {name: [exit status, stderr]} and directory listings, printed as JSON."""
    from absl import flags

    from thinjax.commands import train as train_main
    train_main.define_flags()
    ro, out = os.path.join(base, "ro"), {}
    train = lambda cfg, wd: call(train_main, [f"--config={cfg}", f"--workdir={wd}"],  # noqa: E731
                                 flags.FLAGS)
    if os.getuid() != 0:  # 7: read-only workdir and outputs
        out["main_ro"] = train("configs/default.py", ro)
        out["import_ro"] = call(import_torch, [f"--checkpoint={ASSET}",
                                               f"--output={ro}/imported"])
        out["convert_ro"] = call(convert, [f"--checkpoint={ASSET}", f"--output={ro}/p",
                                           "--target_kind=ratio", "--target=0.5"])
    # 8: failed starts in a new workdir and in one holding a user's file
    mine = os.path.join(base, "mine")
    for name, change in [("no_data", f"c.data.name = {base + '/nodata'!r}"),
                         ("classes", "c.model.num_classes = 5"),
                         ("batch", "c.train.batch_size = 3000")]:
        cfg = _config_file(base, name, change)
        out[name] = train(cfg, f"{base}/new")
        out[name + "_mine"] = train(cfg, mine)
    # 1, end to end: another width on a recorded run is refused, nothing touched
    rec = os.path.join(base, "rec")
    before = snapshot(rec)
    out["changed"] = train(_config_file(base, "thin", "c.model.width = 4"), rec)
    out["rec_untouched"] = snapshot(rec) == before
    out["no_config"] = train("nope.py", f"{base}/w")
    out["listing"] = sorted(n for n in os.listdir(base) if not n.startswith("cfg_") and
                            n != "home")
    out["mine"] = sorted(os.listdir(mine))
    return out


def _as_user() -> list[str] | None:
    """The command prefix that runs a process as user nobody, [] if not root, None if root
    and neither setpriv nor runuser exists."""
    if os.getuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    return None


def _private_folder(path: str) -> str | None:
    """The first folder from / to `path` that other users cannot enter, if any."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def test_commands_as_a_user():
    prefix = _as_user()
    private = _private_folder(ROOT) if prefix else None
    if private:
        pytest.skip(f"user nobody cannot enter {private}, above this checkout; clone it "
                    "under a folder others can enter to run the checks as another user")
    base = tempfile.mkdtemp(prefix="thinjax-robust-")  # tmp_path is private to root
    try:
        os.chmod(base, 0o777)
        os.makedirs(os.path.join(base, "ro"), mode=0o755)  # root's: read-only to nobody
        mine = os.path.join(base, "mine")
        os.makedirs(mine)
        open(os.path.join(mine, "notes.txt"), "w").write("mine")
        cfg = __import__("configs.default", fromlist=["x"]).get_config()
        record(os.path.join(base, "rec"), cfg)  # width 8, as configs/default.py
        for d in ("mine", "rec"):
            os.system(f"chmod -R a+rwX {os.path.join(base, d)}")
        code = f"import json, tests.test_robust as t; print(json.dumps(t.user_checks({base!r})))"
        os.makedirs(os.path.join(base, "home"))
        os.chmod(os.path.join(base, "home"), 0o777)
        env = dict(sub_env(), HOME=os.path.join(base, "home"))
        r = subprocess.run((prefix or []) + [sys.executable, "-c", code], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    one_line = lambda name: out[name][0] == 2 and out[name][1].count("\n") == 1 \
        and out[name][1].startswith("error: ") and "Traceback" not in out[name][1]  # noqa: E731
    assert one_line("no_config") and "cannot load the config file" in out["no_config"][1]
    assert "No such file" in out["no_config"][1]
    for name in ("no_data", "classes", "batch"):
        assert one_line(name) and one_line(name + "_mine"), out[name]
    assert "does not exist" in out["no_data"][1] and "5 classes" in out["classes"][1]
    assert out["listing"] == ["mine", "rec", "ro"] and out["mine"] == ["notes.txt"]
    assert one_line("changed") and "model.width: 8 -> 4" in out["changed"][1]
    assert out["rec_untouched"]
    if prefix is None:
        pytest.skip("read-only checks need a non-root user: root without setpriv or runuser")
    for name, path in [("main_ro", f"{base}/ro"), ("import_ro", f"{base}/ro"),
                       ("convert_ro", f"{base}/ro")]:
        assert one_line(name) and path in out[name][1] and "Permission denied" in out[name][1], \
            out[name]


def test_undo_created_keeps_what_was_there(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), fs.undo_created(str(tmp_path)):
        (tmp_path / "config.json").write_text("{}")
        (tmp_path / "checkpoints").mkdir()
        raise RuntimeError("the data folder is missing")
    assert os.listdir(tmp_path) == ["old.txt"]
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), fs.undo_created(str(new)):
        new.mkdir()
        (new / "metrics.jsonl").write_text("")
        raise RuntimeError
    assert not new.exists()
    with pytest.raises(RuntimeError), fs.undo_created(str(new), keep=lambda: True):
        new.mkdir()
        raise RuntimeError  # progress to keep
    assert new.exists()


# -- 9: a .pt carrying code ----------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/thinjax-pwned",))


def test_pickle_with_code_is_refused_without_unsafe_advice(tmp_path):
    pytest.importorskip("torch")
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    code, err = call(import_torch, [f"--checkpoint={evil}", f"--output={tmp_path / 'o'}"])
    assert code == 2 and "not a plain tensor checkpoint" in err, err
    assert "never executes code from checkpoints" in err and "weights_only" not in err
    assert not os.path.exists("/tmp/thinjax-pwned") and not (tmp_path / "o").exists()


def test_every_non_finite_raise_carries_a_phrase_the_study_reads():
    """The protocol tells a diverged run from a failed one by NonFiniteLoss.PHRASES in the
    train command's error line: each raise site's message holds one of them."""
    for rel in ("thinjax/train/loop.py", "thinjax/train/keeper.py"):
        src = open(os.path.join(ROOT, rel)).read()
        raises = src.count("raise NonFiniteLoss(")
        assert raises and sum(src.count(p) for p in NonFiniteLoss.PHRASES) >= raises, rel
