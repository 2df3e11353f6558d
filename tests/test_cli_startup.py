"""`--help` of every command answers at once: its parser is built without importing torch.

Each command runs in a fresh interpreter and the test asserts on what it imported, not on wall
time, so it holds on a loaded machine (``benchmarks/startup.py`` measures the times). The light
packages resolve their public names on first use (PEP 562) and still export all of them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compressai_vlic_lightning.cli import ABLATE, EXPORT, PLAN

from compressai_vlic.cli.main import COMMANDS, PASSTHROUGH

REPO = Path(__file__).resolve().parents[1]
# What a parser must not need: torch and the frameworks built on it.
HEAVY = ("torch", "pytorch_lightning", "compressai", "transformers")

# Runs ENTRY.main([*ARGV, "--help"]); prints whether a usage was printed and the heavy modules.
_PROBE = """
import contextlib, importlib, io, json, sys
entry, argv = sys.argv[1], sys.argv[2:]
text = io.StringIO()
with contextlib.redirect_stdout(text):
    try:
        status = importlib.import_module(entry).main([*argv, "--help"])
    except SystemExit as exc:
        status = exc.code
loaded = sorted(m for m in {HEAVY} if m in sys.modules)
print(json.dumps({{"status": status or 0, "usage": "usage" in text.getvalue(), "heavy": loaded}}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONWARNINGS", "COMPRESSAI_PLUGINS"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "lightning")])
    return env


def _run(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _subcommands(name: str) -> list[str]:
    """The sub-commands a command's parser declares (``judge audit``, ``adaptor train``...)."""
    if name in PASSTHROUGH:
        return []
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return [
        choice
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action.choices
    ]


def _vlic_commands() -> list[list[str]]:
    out: list[list[str]] = [[]]
    for name in COMMANDS:
        out += [[name], *([name, sub] for sub in _subcommands(name))]
    return out


# `fit`, `validate` and `test` are LightningCLI's: their parsers are read from the model classes.
CASES = [("compressai_vlic.cli.main", argv) for argv in _vlic_commands()] + [
    ("compressai_vlic_lightning.cli", argv) for argv in ([], [PLAN], [ABLATE], [EXPORT])
]


@pytest.mark.parametrize(
    ("entry", "argv"),
    CASES,
    ids=[
        " ".join(["compressai-vlic" + ("-train" if "lightning" in e else ""), *a]) for e, a in CASES
    ],
)
def test_help_imports_no_torch(entry, argv):
    result = json.loads(_run(_PROBE.format(HEAVY=HEAVY), entry, *argv))
    assert result == {"status": 0, "usage": True, "heavy": []}, result


def test_every_command_and_sub_command_is_probed():
    probed = {" ".join(argv) for entry, argv in CASES if entry == "compressai_vlic.cli.main"}
    assert set(COMMANDS) <= probed
    assert {"judge audit", "adaptor train", "student train", "weights fetch"} <= probed


LAZY_PACKAGES = (
    "compressai_vlic.evaluation",
    "compressai_vlic.metrics",
    "compressai_vlic.judges.audit",
)


def test_lazy_packages_import_light_and_export_every_name():
    code = f"""
import importlib, sys
for name in {LAZY_PACKAGES}:
    importlib.import_module(name)
print(sorted(m for m in {HEAVY} if m in sys.modules))
"""
    assert _run(code).strip() == "[]"
    for name in LAZY_PACKAGES:
        package = importlib.import_module(name)
        for attr in package.__all__:
            assert getattr(package, attr) is not None, f"{name}.{attr}"
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018


def test_builtin_metrics_register_on_first_use_of_the_registry():
    """The metrics package no longer imports them on import; the registry does, whatever the
    import path, and a metric registered later still overrides a built-in name."""
    code = """
from compressai_vlic.metrics.base import _REGISTRY, available_metrics, get_metric, register_metric
assert not _REGISTRY
print(",".join(available_metrics()))
register_metric("psnr", lambda device="cpu": "mine")
print(get_metric("psnr"))
"""
    names, psnr = _run(code).split()
    assert {"psnr", "ms_ssim", "ssimulacra2", "lpips", "dists"} <= set(names.split(","))
    assert psnr == "mine"
