"""Where thinjax keeps what it downloads, unpacks or builds: one root folder.

The root is ``$THINJAX_CACHE``, else ``$XDG_CACHE_HOME/thinjax``, else ``~/.cache/thinjax``.
Inside it:

  zoo/                     the model zoo's downloads and its ``verified.json``
                           (`thinjax.zoo`)
  converted/               the zoo's networks converted to (plan, variables), one
                           ``<sha256 of the release file>.safetensors`` each
                           (`thinjax.zoo.converted`)
  ops/                     the compiled oneDNN convolution library (`thinjax.ops.build`)
  jax-compile/<machine>/   JAX's persistent compilation cache, one folder per CPU type
                           (the commands turn it on: `thinjax.commands`)
  eval-inputs/             evaluation splits' preprocessed inputs, one
                           ``<key>.safetensors`` per split and view: a later evaluation
                           reads no image (`thinjax.split_cache`; THINJAX_NO_EVAL_CACHE=1:
                           off)
  cifar10_sample-<hash>/   the bundled CIFAR-10 sample, unpacked (`thinjax.folders`)

Everything there can be deleted: it is downloaded, unpacked or built again when needed.
``THINJAX_CACHE_DIR`` (the kernels' folder before there was one root) is no longer read:
a process that has it set logs one warning naming ``THINJAX_CACHE``.

`zoo_local_dir` is not part of the cache: ``$THINJAX_ZOO_DIR``, a local copy of the
release that the zoo reads instead of downloading. It is here, beside the zoo's cache, so
that every layer knows the zoo's folders (exports never write into them) without
importing the zoo.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_WARNED: list[bool] = []


def root() -> str:
    """The cache's root folder (see the module docstring); not created here."""
    if os.environ.get("THINJAX_CACHE_DIR") and not _WARNED:
        _WARNED.append(True)
        log.warning("thinjax: THINJAX_CACHE_DIR is no longer read; set THINJAX_CACHE (the "
                    "root of every thinjax cache, now %s) instead", _root())
    return _root()


def _root() -> str:
    if os.environ.get("THINJAX_CACHE"):
        return os.path.expanduser(os.environ["THINJAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "thinjax")


def zoo_dir() -> str:
    """The model zoo's download folder."""
    return os.path.join(root(), "zoo")


def converted_dir() -> str:
    """The zoo's converted networks' folder."""
    return os.path.join(root(), "converted")


def kernels_dir() -> str:
    """The compiled oneDNN kernels' folder."""
    return os.path.join(root(), "ops")


def compilation_dir(machine: str) -> str:
    """JAX's persistent compilation cache for the machine type `machine` (executables
    compiled for one CPU's features are refused by another: one folder per type)."""
    return os.path.join(root(), "jax-compile", machine)


def eval_inputs_dir() -> str:
    """The evaluation-input cache's folder."""
    return os.path.join(root(), "eval-inputs")


def zoo_local_dir() -> str | None:
    """``$THINJAX_ZOO_DIR`` (a local copy of the release: the zoo is then offline)."""
    d = os.environ.get("THINJAX_ZOO_DIR")
    return os.path.expanduser(d) if d else None
