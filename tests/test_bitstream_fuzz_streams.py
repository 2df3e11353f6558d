"""A short run of benchmarks/fuzz_streams.py: hostile streams end typed, bounded in time and memory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_streams.py"


def _load():
    spec = importlib.util.spec_from_file_location("fuzz_streams", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_fuzz_run_has_no_crash_or_hang():
    fuzz = _load()
    with torch.random.fork_rng():
        report = fuzz.run_fuzz(36, seed=1, time_limit=60.0)
    totals = report.totals()
    assert report.total == 36
    assert totals["crash"] == 0 and totals["hang"] == 0, fuzz.format_report(report)
    # Without a recomputed checksum nothing gets past the container.
    for kind in ("bitflip", "truncate", "random"):
        assert report.counts[kind]["typed"] == 6, fuzz.format_report(report)
    # The reported attacks (16384x16384 in 41 bytes, overlap 24, 255 steps) are among the forged
    # headers and were refused: at most the other 3 forged headers decode (e.g. another seed).
    assert report.counts["forged_header"]["typed"] >= 3
    assert report.max_rss_mib < 1024
