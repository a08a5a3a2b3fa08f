"""A network from whatever a ``--checkpoint``, ``config.init_from`` or a study entry names:
a released network by name (``zoo:NAME``: fetched and checked by `thinjax.zoo`), else
anything `thinjax.checkpoint.load_model` opens (a thinjax checkpoint, workdir or convert
output, a PyTorch/safetensors/npz file).

This module sits above both: the zoo reads the release's files through `thinjax.interop`,
and `thinjax.checkpoint` knows nothing of the zoo.
"""

from __future__ import annotations

import os

from thinjax import checkpoint, zoo
from thinjax.plan import Plan
from thinjax.trace.example import ExampleNet


def resolve(spec: str) -> str:
    """``zoo:NAME`` -> its checked local file (downloaded when needed); a path as it is."""
    return zoo.resolve(spec) if spec.startswith("zoo:") else spec


def load_model(spec: str, use_ema: bool = False) -> tuple[Plan, dict, dict]:
    """(plan, {'params', 'batch_stats'}, meta) of `spec` (see the module docstring); a zoo
    network through the zoo's cache of converted networks."""
    if spec.startswith("zoo:"):
        plan, variables, path = zoo.load_entry(zoo.entry(spec))
        checkpoint.check_finite(variables, where=path)
        return plan, variables, {"source": os.path.abspath(path)}
    return checkpoint.load_model(spec, use_ema=use_ema)


def load_network(spec: str, use_ema: bool = False) -> tuple[Plan | ExampleNet, dict, dict]:
    """As `load_model`, for a ThinResNet (a plan) or an example network (`ExampleNet`)."""
    if spec.startswith("zoo:"):
        return load_model(spec, use_ema)
    return checkpoint.load_network(spec, use_ema=use_ema)
