"""Prune any Flax linen network: channel groups traced from its computation.

`trace` follows the forward pass's jaxpr and finds the channels that must go together;
`prune` scores, allocates and materialises them as thinjax does for a plan. See
docs/prune_any_model.md. NNX modules: `trace_nnx`, `prune_nnx` (thinjax.trace.nnx_trace).
"""

from thinjax.trace.api import Report, compute_masks, mask_variables, materialize, prune
from thinjax.trace.network import Trace, TracedNet, trace
from thinjax.trace.rebuild import Pruned, register_layer

__all__ = ["Pruned", "Report", "Trace", "TracedNet", "compute_masks", "mask_variables",
           "materialize", "prune", "register_layer", "trace"]
NNX = ("mask_nnx", "materialize_nnx", "prune_nnx", "trace_nnx", "variables_of")
__all__ += list(NNX)


def __getattr__(name: str):
    """The NNX functions, imported on first use: flax.nnx imports optax (start-up of every
    command that loads a checkpoint)."""
    if name in NNX:
        from thinjax.trace import nnx_trace
        return getattr(nnx_trace, name)
    raise AttributeError(f"module 'thinjax.trace' has no attribute {name!r}")
