"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array            # optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    rng: jax.Array             # raw uint32 key data (serialisable)
    masks: Any = None          # channel-group masks while pruning ({} otherwise)

    def variables(self, ema: bool = False) -> dict:
        if ema:
            return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
        return {"params": self.params, "batch_stats": self.batch_stats}


def create(model, tx: optax.GradientTransformation, rng: jax.Array, input_shape,
           masks=None) -> TrainState:
    """A fresh state (call under jit with out_shardings to place it on a mesh)."""
    init_rng, rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros(input_shape, jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                      rng=jax.random.key_data(rng), masks=masks or {})


def from_variables(variables: dict, tx: optax.GradientTransformation,
                   rng: jax.Array, masks=None) -> TrainState:
    """A state that starts from given weights (fine-tuning, pruned networks)."""
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                      rng=jax.random.key_data(rng), masks=masks or {})
