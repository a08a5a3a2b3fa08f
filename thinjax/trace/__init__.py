"""Prune any Flax linen network: channel groups traced from its computation.

`trace` follows the forward pass's jaxpr and finds the channels that must go together;
`prune` scores, allocates and materialises them as thinjax does for a plan. See
docs/prune_any_model.md.
"""

from thinjax.trace.api import Report, compute_masks, mask_variables, materialize, prune
from thinjax.trace.network import Trace, TracedNet, trace
from thinjax.trace.rebuild import Pruned, register_layer

__all__ = ["Pruned", "Report", "Trace", "TracedNet", "compute_masks", "mask_variables",
           "materialize", "prune", "register_layer", "trace"]
