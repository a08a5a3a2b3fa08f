"""thinjax: width-scaled ResNets (ThinResNets) and structured channel pruning in JAX/Flax.

Importing thinjax (or any of its library modules) changes no process setting and no
environment variable; the commands tune the process (`thinjax.commands`, `thinjax.cpu`).

The Python front door (`thinjax.api`, loaded on first use so that ``import thinjax`` stays
light): ``thinjax.create_model``, ``thinjax.list_models``, ``thinjax.prune_model`` and the
``thinjax.Network`` they return; see docs/python_api.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Network", "Pruning", "__version__", "create_model", "list_models", "prune_model"]
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:  # for type checkers only: at run time __getattr__ loads them
    from thinjax.api import Network, Pruning, create_model, list_models, prune_model


def __getattr__(name: str):
    """``thinjax.create_model`` etc.: thinjax.api, imported on first use."""
    if name in _API:
        from thinjax import api  # JAX, Flax and the zoo: only when the front door is used
        return getattr(api, name)
    raise AttributeError(f"module 'thinjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
