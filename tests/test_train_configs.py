"""The training configs: a config that starts from another one (``config: base.yaml`` plus dotted
keys) is read by ``compressai-vlic-train fit``, the planner and the demo as the base with exactly
those values changed."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
#: overlay -> the config it starts from
OVERLAYS = {
    "paper_q2_stage1": "paper_q1_stage1",
    "paper_q2_prior_refit": "paper_q1_prior_refit",
    "tiny_stage1_scratch": "tiny_stage1",
    "stage2_openai": "stage2_metric",
    "stage2_hf": "stage2_metric",
    "stage2_offline_dataset": "stage2_metric",
    "ablation_tiny_stage2_attempt2": "ablation_tiny_stage2",
}


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: tree}


def test_the_overlays_name_their_base():
    found = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "config" in raw:
            assert next(iter(raw)) == "config", f"{path.name}: config: must come first"
            assert (CONFIGS / raw["config"]).is_file(), path.name
            found[path.stem] = Path(raw["config"]).stem
    assert found == OVERLAYS


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_an_overlay_is_its_base_with_the_keys_it_names_changed(name):
    from compressai_vlic_lightning.configs import parse_config

    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    named = [k for k in raw if k != "config"]
    assert all("." in k for k in named), "an overlay changes single values (dotted keys)"
    base, overlay = _leaves(parse_config(OVERLAYS[name])), _leaves(parse_config(name))
    base.pop("config", None), overlay.pop("config", None)
    changed = {k for k in base.keys() | overlay.keys() if base.get(k) != overlay.get(k)}
    assert changed, name
    for key in changed:  # nothing changes but what the overlay names
        assert any(key == n or key.startswith(n + ".") for n in named), (name, key)
    for key in named:  # and what it names has its value
        if not isinstance(raw[key], (dict, list)):
            assert overlay[key] == raw[key], (name, key)


def test_the_training_cli_reads_an_overlay(monkeypatch):
    from compressai_vlic_lightning.cli import main

    monkeypatch.setattr(sys, "argv", ["compressai-vlic-train"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "paper_q2_stage1", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(out.getvalue())
    assert printed["model"]["init_args"]["quality"] == "2"
    assert printed["model"]["init_args"]["perceptual_weight"] == 0.1  # paper_q1_stage1's
    assert printed["trainer"]["precision"] == "bf16-mixed"
    assert printed["trainer"]["default_root_dir"] == "runs/vlic_q2_stage1"
