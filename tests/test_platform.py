"""thinjax.platform: the XLA:CPU flags thinjax appends at import (opt-in), and the opt-out."""

import os
import subprocess
import sys

import pytest

from thinjax import platform

FLAG, VALUE = next(iter(platform.CPU_FLAGS.items()))
TOKEN = f"--{FLAG}={VALUE}"
known = pytest.mark.skipif(not platform.jaxlib_knows(FLAG), reason=f"jaxlib lacks --{FLAG}")


@pytest.fixture
def fresh(monkeypatch):
    """As in a process whose JAX backend has not started (this test process's may have: the
    suite runs other files first in the same worker)."""
    monkeypatch.setattr(platform, "_backend_started", lambda: False)


@known
def test_appends_and_keeps_user_flags(fresh):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", platform.OPT_IN: "1"}
    assert platform.apply_cpu_defaults(env) == {FLAG: "set"}
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", TOKEN]
    env = {platform.OPT_IN: "1"}
    platform.apply_cpu_defaults(env)
    assert env["XLA_FLAGS"] == TOKEN


def test_off_by_default(fresh):
    env = {"XLA_FLAGS": "--a=1"}
    assert "off by default" in platform.apply_cpu_defaults(env)[FLAG]
    assert env["XLA_FLAGS"] == "--a=1"


def test_user_value_wins_and_opt_outs(fresh):
    env = {"XLA_FLAGS": f"--{FLAG}=dot", platform.OPT_IN: "1"}
    assert platform.apply_cpu_defaults(env)[FLAG] == "user set it"
    assert env["XLA_FLAGS"] == f"--{FLAG}=dot"
    env = {"THINJAX_NO_CPU_FLAGS": "1", "XLA_FLAGS": "--a=1", platform.OPT_IN: "1"}
    assert "THINJAX_NO_CPU_FLAGS" in platform.apply_cpu_defaults(env)[FLAG]
    assert env["XLA_FLAGS"] == "--a=1"
    env = {"JAX_PLATFORMS": "tpu", platform.OPT_IN: "1"}
    assert "no cpu" in platform.apply_cpu_defaults(env)[FLAG]
    assert "XLA_FLAGS" not in env


@known
def test_too_late_once_a_backend_started(monkeypatch):
    monkeypatch.setattr(platform, "_backend_started", lambda: True)
    env = {"XLA_FLAGS": "--a=1", platform.OPT_IN: "1"}
    assert "backend" in platform.apply_cpu_defaults(env)[FLAG]
    assert env["XLA_FLAGS"] == "--a=1"


def test_opt_out_removes_what_a_parent_appended():
    env = {"XLA_FLAGS": f"--a=1 {TOKEN}", platform.MARKER: TOKEN, "THINJAX_NO_CPU_FLAGS": "1"}
    platform.apply_cpu_defaults(env)
    assert env["XLA_FLAGS"] == "--a=1" and platform.MARKER not in env


def test_unknown_flag_is_not_known():
    assert not platform.jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")


@known
def test_import_sets_the_flag_before_the_backend_starts():
    code = ("import os, thinjax, jax; from thinjax import platform as p; "
            "print(jax.device_count(), p.applied()[%r], os.environ['XLA_FLAGS'])" % FLAG)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           platform.OPT_IN: "1"}
    env.pop("THINJAX_NO_CPU_FLAGS", None)
    env.pop(platform.MARKER, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out[:2] == ["2", "set"] and TOKEN in out


def test_cpu_description_names_the_cpu():
    d = platform.cpu_description()
    assert "logical cores" in d and d.split(",")[0].strip()
