"""thinjax.prune.spec.PruneSpec: one typed pruning spec from a config's prune section, the
prune command's flags and a study entry; its errors name the field."""

import pytest

from thinjax import studies as study
from thinjax.commands import prune as convert
from thinjax.config import base_config, validate
from thinjax.errors import ConfigError
from thinjax.prune.spec import PruneSpec, from_config


def _command_spec(args):
    convert.FLAGS.unparse_flags()
    convert.FLAGS(["thinjax-convert", "--checkpoint=c", "--output=o", *args])
    try:
        return convert.spec_from_flags()
    finally:
        convert.FLAGS.unparse_flags()


def test_a_config_section_the_command_and_a_study_entry_build_equal_specs():
    c = base_config()
    c.prune.update(criterion="fpgm", allocation="uniform", round_to=8, target_kind="macs",
                   target=12_500_000.0)
    from_cfg = from_config(c.prune)
    from_cmd = _command_spec(["--criterion=fpgm", "--allocation=uniform", "--round_to=8",
                              "--target_kind=macs", "--target=12500000"])
    from_study = study.entry_spec({"name": "x", "criterion": "fpgm", "allocation": "uniform",
                                   "round_to": 8}, "macs", 12_500_000)
    assert from_cfg == from_cmd == from_study
    assert from_cfg.goal().kind == "macs" and from_cfg.goal().value == 12_500_000.0
    # and back: the flags a study passes to a training run rebuild the same spec
    flags_back = dict(f.removeprefix("--config.prune.").split("=", 1)
                      for f in from_cfg.to_flags())
    assert from_config(flags_back) == from_cfg


def test_no_target_means_the_checkpoint_masks_and_half_a_target_is_refused():
    assert _command_spec([]) is None
    with pytest.raises(ConfigError, match="give both --target_kind and --target"):
        _command_spec(["--target=0.5"])


@pytest.mark.parametrize("key,value,words", [
    ("criterion", "l3", "config.prune.criterion='l3': unknown pruning criterion"),
    ("schedule", "weekly", "config.prune.schedule='weekly': unknown; use one of none"),
    ("round_to", 0, "config.prune.round_to=0: must be a finite number >= 1"),
    ("target", 1.5, "config.prune.target=1.5: target macs_fraction=1.5: must be in"),
    ("every_epochs", 0.0, "config.prune.every_epochs=0.0: must be > 0"),
])
def test_errors_name_the_field(key, value, words):
    c = base_config()
    c.prune[key] = value
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith(words), str(e.value)


def test_the_command_names_its_flag_and_unknown_keys_are_listed():
    with pytest.raises(ConfigError, match=r"^--criterion='nope': unknown pruning criterion"):
        _command_spec(["--criterion=nope", "--target_kind=ratio", "--target=0.5"])
    with pytest.raises(ConfigError, match="config.prune: unknown key.*criterion"):
        from_config({"critrion": "l1"})


def test_defaults_are_the_config_schema_defaults():
    assert from_config(base_config().prune) == PruneSpec()
    assert PruneSpec().to_flags() == []


@pytest.mark.parametrize("spec", [
    PruneSpec(criterion="fpgm", fpgm_p=2, allocation="uniform", round_to=8,
              target_kind="macs", target=12_500_000.0),
    PruneSpec(criterion="taylor", taylor_batches=3, score_members="all", reduce="max",
              normalization="none", target_kind="ratio", target=0.3,
              allow_block_removal=True),
    PruneSpec(allocation="explicit", group_ratios=(("stage1.*", 0.25), ("stage2", 0.5)),
              target_kind="params_fraction", target=0.6),
])
def test_a_one_shot_spec_spelled_as_prune_command_flags_builds_the_same_spec(spec):
    """How a study hands a one-shot pruning to the prune command (thinjax.jobs)."""
    assert _command_spec(spec.to_command_flags()) == spec
