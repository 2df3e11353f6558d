"""`benchmarks/gpu_check.py --dry-run`: the GPU check's whole path on the tiny config (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    for stage in ("stage1", "stage2"):
        assert report[stage]["step_s"] > 0 and report[stage]["model_tflop_per_step"] > 0
    assert report["decode"]["one_tile_s_per_tile"] > 0
    assert report["coding"]["cpu_roundtrip_identical"] is True
    assert report["coding"]["cross_device"].startswith("skipped")
