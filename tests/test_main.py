import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(*args):
    return subprocess.run([sys.executable, "-m", "thinjax.main", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_default_job_builds_counts_imports_and_evaluates(tmp_path):
    r = main("--config=configs/eval_release.py", f"--workdir={tmp_path}", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    saved = json.load(open(tmp_path / "results.json"))
    assert out == saved
    assert out["params"] == 17_534 and out["macs"] == 2_633_888
    assert out["eval"]["count"] == 1000 and 65 < out["eval"]["top1"] < 85
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["model"]["name"] == "resnet20" and cfg["data"]["name"] == "sample:cifar10"


def test_overrides_are_checked(tmp_path):
    r = main("--config=configs/eval_release.py", f"--workdir={tmp_path}", "--config.model.width=8")
    assert r.returncode == 2
    assert "differs from the configured one" in r.stderr
    r = main("--config=configs/eval_release.py", f"--workdir={tmp_path}", "--config.model.widht=8")
    assert r.returncode == 2
    assert ("unknown config key 'model.widht'; did you mean 'model.width'? valid keys here: "
            in r.stderr)
    assert "model.width" in r.stderr and "model.base_width" in r.stderr


def test_every_config_file_loads_and_validates():
    import glob
    import importlib.util

    from thinjax.config import validate
    from thinjax.plan import plan_from_width
    files = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                   if not os.path.basename(f).startswith("study_"))  # tests/test_study.py
    configs = []  # (file, module, config-string argument): a parametrised file's VARIANTS
    for f in files:
        spec = importlib.util.spec_from_file_location("cfg", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        configs += [(f, mod, arg) for arg in getattr(mod, "VARIANTS", (None,))]
    assert len(configs) >= 18
    for f, mod, arg in configs:
        assert "Command" in (mod.__doc__ or "") and "Expected" in mod.__doc__, f
        cfg = mod.get_config() if arg is None else mod.get_config(arg)
        validate(cfg)
        plan_from_width(cfg.model.name, cfg.model.width, cfg.model.num_classes,
                        cfg.model.base_width)
        if cfg.prune.schedule != "none":  # the pruning section is consistent too
            from thinjax.prune import schedule
            from thinjax.prune.pruner import target_from_config
            target_from_config(cfg.prune)
            assert schedule.events(cfg.prune, 390, int(cfg.train.epochs * 390)), f


def test_typed_settings_cover_the_config_schema_key_for_key():
    """thinjax.settings' dataclasses hold every key of the schema and nothing else: the
    typed settings round-trip to the same JSON as the ConfigDict they came from."""
    import json

    from thinjax import settings
    from thinjax.config import base_config
    cfg = base_config()
    assert settings.from_config(cfg).to_dict() == json.loads(cfg.to_json_best_effort())
