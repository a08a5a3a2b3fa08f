"""Device mesh and shardings (the pjit model): batches split along 'data', parameters
replicated; the 'model' axis is there for parameter sharding to come (size 1 by default).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from thinjax.errors import ConfigError


def initialize_distributed(force: bool = False) -> None:
    """jax.distributed.initialize() on multi-host jobs (a coordinator address in the
    environment, SLURM with several tasks, a multi-host TPU slice on GKE, or
    THINJAX_DISTRIBUTED=1, which launch/tpu_vm.sh sets: GCE TPU VMs are detected by JAX from
    their metadata server, not from the environment); no-op otherwise.

    JAX reads JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS itself and detects SLURM and
    Cloud TPU; without a cluster manager (launch/gpu_multinode.sh) the process count and
    index come from JAX_NUM_PROCESSES and JAX_PROCESS_ID, which thinjax passes on."""
    env = os.environ
    multi = force or env.get("THINJAX_DISTRIBUTED") == "1" \
        or bool(env.get("JAX_COORDINATOR_ADDRESS")) \
        or int(env.get("SLURM_NTASKS", "1")) > 1 \
        or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if multi and not jax.distributed.is_initialized():
        kw = {k: int(env[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                           ("process_id", "JAX_PROCESS_ID")) if env.get(v)}
        jax.distributed.initialize(**kw)


def make_mesh(model_axis: int = 1) -> Mesh:
    devices = np.asarray(jax.devices())
    n = devices.size
    if n % model_axis:
        raise ConfigError(f"{n} devices cannot form a mesh with a 'model' axis of {model_axis}")
    return Mesh(devices.reshape(n // model_axis, model_axis), ("data", "model"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of the batch -> one global array sharded along 'data'."""
    sh = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, v) for k, v in local.items()}
