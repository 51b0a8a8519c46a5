"""The source checkout's comparison baselines (benchmarks/NAME.py, not installed), for the benchmarks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout this package runs from (its `benchmarks/` folder holds the baselines)."""


def baseline(name: str):
    """The comparison-baseline module ``benchmarks/NAME.py`` of the source checkout (not installed),
    loaded from its path as ``remix_ds_benchmarks.NAME`` so that no installed package named
    ``benchmarks`` can stand in for it; outside a checkout, a one-line error."""
    path = CHECKOUT / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"remix-ds bench: the comparison baselines are in benchmarks/ of a source checkout, "
                         f"not in the installed package (no {path}); run the benchmark "
                         f"from a git checkout installed with `pip install -e .`")
    qualified = f"remix_ds_benchmarks.{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[qualified]
