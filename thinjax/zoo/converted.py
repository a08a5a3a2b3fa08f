"""The zoo's networks converted once: (plan, variables) kept in the cache's ``converted/``
folder (`thinjax.cache`) as ``<sha256 of the release file>.safetensors``, so that a later
load reads neither the ``.pt`` nor its pickle, and skips the conversion (which traces the
network's init to learn its shapes).

A cached file is used only when it proves itself: its metadata names this format and the
release file's sha256 (its name's), and a sha256 over that metadata and every array (name,
dtype, shape, bytes), kept beside them, agrees with what is read back. Anything else
(absent, truncated, damaged, another format or source) is logged, converted again from the
release file and written anew: a temporary file, renamed into place. A cache that cannot
be written only means converting again next time.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from flax import traverse_util

from thinjax import cache, kept
from thinjax.interop.torch import import_checkpoint
from thinjax.plan import Plan

log = logging.getLogger(__name__)
FORMAT = "thinjax-zoo-converted/1"


def path_of(sha256: str) -> str:
    """Where the conversion of the release file with this sha256 is kept."""
    return os.path.join(cache.converted_dir(), f"{sha256}.safetensors")


def load(source: str, sha256: str) -> tuple[Plan, dict]:
    """(plan, variables) of the release file `source`, whose content has this sha256 (the
    caller has checked it): from the cache, else converted and then kept there."""
    path = path_of(sha256)
    hit = read(path, sha256)
    if hit is not None:
        return hit
    plan, variables = import_checkpoint(source)
    write(path, sha256, plan, variables)
    return plan, variables


def read(path: str, sha256: str) -> tuple[Plan, dict] | None:
    """The conversion kept at `path`, or None when there is none to trust."""
    if not os.path.isfile(path):
        return None
    try:
        meta, flat = kept.read(path)
        if meta.get("format") != FORMAT or meta.get("source_sha256") != sha256:
            raise ValueError("not this release file's conversion")
        plan = Plan.from_dict(json.loads(meta["plan"]))
    except kept.ERRORS as e:
        log.warning("thinjax: ignoring the converted network %s (%s: %s); converting the "
                    "release file again", path, type(e).__name__, e)
        return None
    return plan, traverse_util.unflatten_dict(flat, sep="/")


def write(path: str, sha256: str, plan: Plan, variables: dict) -> None:
    """Keeps (plan, variables) at `path`, atomically; best effort (a warning on failure)."""
    flat = {k: np.ascontiguousarray(v)
            for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
    meta = {"format": FORMAT, "source_sha256": sha256, "plan": plan.to_json()}
    try:
        kept.write(path, flat, meta, sha256[:16])
    except kept.ERRORS as e:
        log.warning("thinjax: cannot keep the converted network in %s (%s); it is converted "
                    "again next time", os.path.dirname(path), e)
