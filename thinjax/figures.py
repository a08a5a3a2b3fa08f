"""Writing a figure: a PNG and an SVG beside each other, with the same bytes for the same
figure (no date in the metadata, fixed SVG ids, so a rebuilt report changes no file that
did not change) and the SVG's text kept as text (searchable, selectable)."""

from __future__ import annotations

import os

EXTENSIONS = ("png", "svg")


def save(fig, stem: str, dpi: int, tight: bool = False) -> list[str]:
    """`fig` written to ``stem.png`` and ``stem.svg`` (folders made); their paths."""
    import matplotlib  # heavy: loaded only when a figure is written
    if os.path.dirname(stem):
        os.makedirs(os.path.dirname(stem), exist_ok=True)
    paths = [f"{stem}.{ext}" for ext in EXTENSIONS]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "thinjax"}):
        for p in paths:
            fig.savefig(p, dpi=dpi, bbox_inches="tight" if tight else None,
                        metadata={"Date": None} if p.endswith(".svg") else None)
    return paths
