"""Argument types and output helpers shared by several commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def split_fractions(text: str) -> tuple[float, float, float]:
    """``--split-fractions 0.8,0.1,0.1``: three non-negative train,val,test fractions summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"split fractions must be numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"split fractions need three values (train,val,test), got {text!r}")
    if min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"split fractions must be non-negative and sum to 1, got {text!r}")
    return values


def write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """Write ``arrays`` to ``path`` (.npz, no pickled objects) through a temporary file and a rename."""
    import numpy as np

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out
