"""What every thinjax command shares: absl flags, quiet logs, user errors, a JSON last line.

Imported by the command modules alone (thinjax.commands: train, study, evaluate, cost,
prune, import_torch, export, zoo, plot); library modules never import it. Every command

  * parses absl flags, spelt with underscores (``--data_dir``, ``--batch_size``,
    ``--input_size``, ``--target_kind``, ``--round_to``, ``--report_dir``); a bad flag is
    one ``error: ...`` line on stderr and exit status 2, as is any
    :class:`thinjax.errors.ThinjaxError` the command raises (anything else is a bug and
    shows its traceback);
  * logs at WARNING (absl, orbax, ...) unless ``--verbosity`` is given;
  * with ``--json``, prints its result as one JSON object on the last line, on the first
    process of a multi-process job only.

A command module that tests also call in-process (cost, zoo, prune, ...) defines its flags
in its own ``FLAGS = flags.FlagValues()``, which :func:`run` adds to absl's global flags
only when that command runs, so importing it defines no global flag. ``train`` and
``study`` define theirs globally, as ml_collections' config flags need (``train`` only
when it runs as the command).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as pylogging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from thinjax.errors import ThinjaxError, environment_fault, user_errors

JSON_HELP = "print the result as one JSON object on the last line"


class UsageError(ThinjaxError, ValueError):
    """A command line naming no valid subcommand, argument or input file."""


@dataclasses.dataclass(frozen=True)
class Finished:
    """A command's result with a non-zero exit status (a study in which some runs failed):
    printed with ``--json`` like any result, then the process exits with `status`."""
    result: dict[str, Any]
    status: int


Main = Callable[[list[str]], "dict[str, Any] | Finished | None"]


def define_json(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder[bool]:
    """Defines the shared ``--json`` flag in `flag_values`."""
    return flags.DEFINE_bool("json", False, JSON_HELP, flag_values=flag_values)


def is_main_process() -> bool:
    """False on every process but the first of a multi-process JAX job.

    A process that never imported jax is not part of one; asking jax otherwise would
    start its backend (and claim accelerators) just to print a result."""
    jax = sys.modules.get("jax")
    return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0


def _finish(main: Main, argv: list[str], flag_values: flags.FlagValues) -> int:
    """Runs `main` with user errors reported, prints its result as JSON if asked; the exit
    status."""
    with user_errors():
        result = main(argv)
    status = 0
    if isinstance(result, Finished):
        result, status = result.result, result.status
    if result is not None and "json" in flag_values and flag_values["json"].value \
            and is_main_process():
        print(json.dumps(result), flush=True)
    return status


def _flag_error(e: flags.Error) -> None:
    """Reports bad flags (several missing ones make several lines) as one 'error:' line,
    exit status 2."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):  # a config file's get_config failed
        lines = [lines[0], lines[-1]]  # ml_collections quotes its traceback: the error alone
    print("error: " + " ".join(lines), file=sys.stderr)
    sys.exit(2)


HELP_FLAGS = {f"{dash}{name}" for dash in ("-", "--")
              for name in ("help", "helpshort", "helpfull", "helpxml", "?")}


def _parse(argv: list[str]) -> list[str]:
    """absl's flag parsing, with bad flags reported as one 'error:' line, exit status 2,
    and help (which absl ends with status 1) ending with status 0."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _flag_error(e)
    except SyntaxError as e:  # a --config file that is not valid Python
        print(f"error: --config={e.filename}:{e.lineno}: {e.msg}: the config file is not "
              "valid Python; fix that line", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 1 and HELP_FLAGS.intersection(argv[1:]):
            sys.exit(0)
        raise


def _adopt(main: Main, command_flags: flags.FlagValues | None) -> None:
    """Adds a command's own flags to absl's, listed by ``--help`` as the program's, and
    gives a console script (whose ``__main__`` has no docstring) the command's."""
    module = sys.modules[main.__module__]
    own = list(flags.FLAGS.get_flags_for_module(module.__name__))
    if "json" in flags.FLAGS:  # defined by define_json, here: the command's all the same
        own.append(flags.FLAGS["json"])
    if command_flags is not None:
        flags.FLAGS.append_flag_values(command_flags)
        own += [f for fs in command_flags.flags_by_module_dict().values() for f in fs]
    listed = flags.FLAGS.get_flags_for_module(sys.argv[0])
    for f in dict.fromkeys(own):  # once each, in order
        if f not in listed:
            flags.FLAGS.register_flag_by_module(sys.argv[0], f)
    entry = sys.modules["__main__"]
    if not entry.__doc__:
        entry.__doc__ = module.__doc__


def _absl_main(main: Main, command_flags: flags.FlagValues | None, argv: list[str]) -> int:
    if not flags.FLAGS["verbosity"].present:  # library logs (orbax, ...) only if asked for
        logging.set_verbosity(logging.WARNING)
    if command_flags is not None:
        command_flags.mark_as_parsed()  # parsed as part of absl's flags
    return _finish(main, argv, flags.FLAGS)  # app.run exits with it


def run(main: Main, command_flags: flags.FlagValues | None = None) -> None:
    """A command's entry point: absl's ``app.run(main)`` with its flags (the global ones,
    plus `command_flags`), quiet logs, user errors as 'error:' lines, the JSON last line.

    `main(argv)` gets the positional arguments (``argv[0]`` the program) and returns the
    result to print with ``--json`` (or None, or a :class:`Finished` to exit non-zero)."""
    _adopt(main, command_flags)
    threading.excepthook = _quiet_environment_faults
    sys.unraisablehook = _quiet_closed_event_loop
    pylogging.getLogger("absl").addFilter(_not_an_environment_fault)
    app.run(functools.partial(_absl_main, main, command_flags), flags_parser=_parse)


def _not_an_environment_fault(record) -> bool:
    """Drops a library's log record of a write that failed on a full disk or a limit (the
    main thread's 'error:' line says it once)."""
    exc = record.exc_info[1] if record.exc_info else None
    return environment_fault(exc or Exception(record.getMessage())) is None


def _quiet_environment_faults(args) -> None:
    """A library's writer thread that fails on a full disk (or a file-size or open-file
    limit) has its error re-raised in the main thread, which prints the one 'error:'
    line; its own traceback is not printed. Anything else is, as by default."""
    if environment_fault(args.exc_value) is None:
        threading.__excepthook__(args)


def _quiet_closed_event_loop(unraisable) -> None:
    """Drops 'Event loop is closed' raised in tensorstore's callback threads after orbax
    closed its event loop, as happens when a save fails (full disk, file-size limit): one
    traceback per pending write, before the 'error:' line. Anything else prints as by
    default."""
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


def call(main: Main, args: Sequence[str], command_flags: flags.FlagValues) -> int:
    """Runs a command in this process as its command line would, for tests: parses `args`
    (without the program name) with the command's own flags, reset first, then `main`.
    Returns the exit status; bad flags or input raise SystemExit(2) after their 'error:'
    line."""
    command_flags.unparse_flags()
    try:
        argv = command_flags([sys.argv[0], *args])
    except flags.Error as e:
        _flag_error(e)
    return _finish(main, argv, command_flags)
