"""Parameters and multiply-accumulates (MACs) of a plan: the command.

    python -m thinjax.cost --model=resnet50 --width=64 --input_size=224
    python -m thinjax.cost --plan=plan.json --input_size=32 --json   (or: thinjax-cost ...)

Counts follow torchvision / fvcore conventions (see the ``thinjax.cost`` library module).
"""

from __future__ import annotations

from absl import flags

from thinjax.commands import cli
from thinjax.commands.cli import UsageError
from thinjax.cost import check_input_size, count, format_cost
from thinjax.plan import ARCHS, Plan, plan_from_width

FLAGS = flags.FlagValues()  # this command's flags (thinjax.cli.run adds them when it runs)
_MODEL = flags.DEFINE_enum("model", None, sorted(ARCHS), "a regular ThinResNet",
                           flag_values=FLAGS)
_WIDTH = flags.DEFINE_integer("width", None, "width w (default 16 CIFAR, 64 ImageNet stem)",
                              flag_values=FLAGS)
_BASE_WIDTH = flags.DEFINE_integer(
    "base_width", None, "bottleneck inner width = planes*base_width/64 (default: = width)",
    flag_values=FLAGS)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "classifier outputs",
                                    flag_values=FLAGS)
_PLAN = flags.DEFINE_string("plan", None, "a plan JSON file instead of --model",
                            flag_values=FLAGS)
_INPUT_SIZE = flags.DEFINE_integer("input_size", None, "square input size (default 224 / 32 "
                                   "by stem)", flag_values=FLAGS)
_JSON = cli.define_json(FLAGS)


def main(argv: list[str]) -> dict:
    """``python -m thinjax.cost``: the cost of ``--model``/``--width`` or of ``--plan``."""
    if len(argv) > 1:
        raise UsageError(f"unexpected argument {argv[1]!r}; give --model or --plan")
    if _PLAN.value:
        try:
            plan, name = Plan.load(_PLAN.value), _PLAN.value
        except OSError as e:
            raise UsageError(f"--plan={_PLAN.value}: {e.strerror or e}") from e
    elif _MODEL.value:
        plan = plan_from_width(_MODEL.value, _WIDTH.value, _NUM_CLASSES.value,
                               _BASE_WIDTH.value)
        name = f"{_MODEL.value} w={plan.stem_width}"
    else:
        raise UsageError("give --model (with --width) or --plan")
    check_input_size(_INPUT_SIZE.value)
    c = count(plan, _INPUT_SIZE.value)
    print(format_cost(name, c))
    print(plan.describe())
    return {"name": name, **c.to_dict(), "plan": plan.to_dict()}


def cli_main() -> None:
    """The ``thinjax-cost`` console script and ``python -m thinjax.cost``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    cli_main()
