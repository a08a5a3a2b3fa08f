"""thinjax: width-scaled ResNets (ThinResNets) and structured channel pruning in JAX/Flax.

Importing thinjax (or any of its library modules) changes no process setting and no
environment variable; the commands tune the process (`thinjax.commands`, `thinjax.cpu`).
"""

__version__ = "0.1.0"
