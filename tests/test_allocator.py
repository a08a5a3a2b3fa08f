"""thinjax.allocator: glibc malloc settings that keep XLA:CPU's per-step buffers mapped."""

import os
import subprocess
import sys

import pytest

from thinjax import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None or not sys.platform.startswith("linux"),
                           reason="needs Linux with glibc")

# Two convolutions whose intermediate activations (2 x 32 MB) live in XLA's temporary
# buffer, allocated at every call as a training step's is; prints the page faults of each
# of 8 calls after 2 warm-up calls.
FAULTS = """
import resource
from thinjax import cpu
cpu.enable()
import jax, jax.numpy as jnp
from thinjax.allocator import malloc_status
def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
f = jax.jit(lambda x, k: conv(jax.nn.relu(conv(x, k)), k).sum())
x, k = jnp.ones((128, 64, 64, 16)), jnp.ones((3, 3, 16, 16)) / 100
for _ in range(2):
    f(x, k).block_until_ready()
faults = []
for _ in range(8):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, k).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(malloc_status())
print(*faults)
"""


def _faults(opt_out: str) -> tuple[str, list[int]]:
    env = {**os.environ, allocator.OPT_OUT: opt_out, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip().splitlines()
    return out[-2], [int(v) for v in out[-1].split()]


@glibc
def test_tuning_removes_the_page_faults_of_a_fresh_buffer_per_call():
    off_status, untuned = _faults("1")
    assert off_status == f"{allocator.OPT_OUT} is set"
    # without: every call maps 64 MB afresh, ~16,400 faults of 4 KiB each time
    assert min(untuned) > 8_000, untuned
    # with: calls reuse heap pages (0-3 faults a call once the heap has settled). On a loaded
    # machine a buffer can still be in use when the next call allocates, so the heap may grow
    # for a few calls first. Once in CI (2 test workers on a 2-core AMD EPYC) all 8 tuned calls
    # faulted ~16,384 times (not reproduced in isolation or beside the running CPU study,
    # cause unknown; every earlier CI run passed): a fresh process measures again, up to 3 in
    # all; a tuning that does not work fails all 3
    tries = []
    for _ in range(3):
        status, tuned = _faults("0")
        assert status == "applied", status
        tries.append(tuned)
        if min(tuned) < min(untuned) / 20:
            return
    pytest.fail(f"no call reused the heap in 3 processes: {tries}; untuned {untuned}")


def test_skipped_where_jax_may_not_run_on_the_cpu(monkeypatch):
    assert allocator._skip_reason({allocator.OPT_OUT: "1"}) == f"{allocator.OPT_OUT} is set"
    assert "not cpu alone" in allocator._skip_reason({"JAX_PLATFORMS": "tpu"})
    assert "not cpu alone" in allocator._skip_reason({"JAX_PLATFORMS": "cuda,cpu"})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._skip_reason({}) == "not Linux (darwin)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_an_installed_accelerator_plugin_leaves_malloc_alone(monkeypatch):
    monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("json",))  # any importable module
    assert allocator._skip_reason({}) == "an accelerator plugin is installed (json)"
    assert allocator._skip_reason({"JAX_PLATFORMS": "cpu"}) is None  # cpu named explicitly
