"""The core install is enough for CompressAI's literal ``eval_model checkpoint -a vlic``.

A subprocess runs with every distribution outside the closure of the core requirements hidden
(tests/core_only/sitecustomize.py), plus the extras' packages that CompressAI pulls in but never
imports for evaluation. What the extras provide then fails with the command that installs them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from PIL import Image

from compressai_vlic.zoo import vlic

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
requirements = pytest.importorskip("packaging.requirements")

REPO = Path(__file__).resolve().parents[1]
# In the extras, but CompressAI itself requires and imports them when eval_model starts.
IMPORTED_BY_COMPRESSAI = {"scipy", "pytorch-msssim"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: list[str]) -> set[str]:
    """Installed distributions the core requirements pull in (markers and extras evaluated)."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [requirements.Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        wanted = {""} | set(req.extras)
        if all((name, e) in seen for e in wanted):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.update((name, e) for e in wanted)
        names.add(name)
        for text in dist.requires or []:
            sub = requirements.Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return names


def _blocked() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _closure(project["dependencies"])
    extras = {
        _norm(requirements.Requirement(r).name)
        for extra, reqs in project["optional-dependencies"].items()
        if extra != "test"
        for r in reqs
    }
    installed = {_norm(d.metadata["Name"]) for d in metadata.distributions()}
    dists = (installed - core - {"compressai-vlic"}) | (extras & core - IMPORTED_BY_COMPRESSAI)
    modules = sorted(
        m
        for m, owners in metadata.packages_distributions().items()
        if owners and all(_norm(o) in dists for o in owners) and not m.startswith("_")
    )
    return {"distributions": sorted(dists), "modules": modules}


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("core_only")
    blocked = _blocked()
    for module in ("pytorch_lightning", "openai", "torchmetrics", "torch_fidelity", "matplotlib"):
        assert module in blocked["modules"], module
    (root / "blocked.json").write_text(json.dumps(blocked))
    env = {k: v for k, v in os.environ.items() if k not in {"COMPRESSAI_PLUGINS", "PYTHONPATH"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "core_only"), str(REPO)])
    env["VLIC_BLOCKED_JSON"] = str(root / "blocked.json")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _python(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_blocked_packages_are_gone_and_extras_say_how_to_get_them(core_env):
    probe = (
        "import importlib.util, importlib.metadata as md\n"
        "for m in ('pytorch_lightning', 'openai', 'torchmetrics', 'ssimulacra2', 'skimage', 'sklearn'):\n"
        "    assert importlib.util.find_spec(m) is None, m\n"
        "try:\n"
        "    md.version('openai')\n"
        "    raise SystemExit('openai metadata visible')\n"
        "except md.PackageNotFoundError:\n"
        "    pass\n"
        "from compressai_vlic.errors import MissingDependencyError\n"
        "for stmt in ('from compressai_vlic_lightning import Stage1Module',\n"
        "             'import compressai_vlic.judges.openai_judge',\n"
        "             'from compressai_vlic.evaluation.plots import _pyplot; _pyplot()'):\n"
        "    try:\n"
        "        exec(stmt)\n"
        "    except MissingDependencyError as exc:\n"
        "        print(exc)\n"
    )
    env = {**core_env, "PYTHONPATH": core_env["PYTHONPATH"] + os.pathsep + str(REPO / "lightning")}
    proc = _python(env, "-c", probe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    for line, extra in zip(lines, ("train", "judges", "eval")):
        assert line.endswith(f"pip install 'compressai-vlic[{extra}]'"), line


@pytest.mark.slow
def test_literal_eval_model_runs_on_the_core_install(core_env, tmp_path, photos):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photos["astronaut"][40:208, 150:326]).save(images / "astronaut.png")
    checkpoint = tmp_path / "vlic_test.pth.tar"
    torch.manual_seed(0)
    torch.save(vlic("test").state_dict(), checkpoint)
    args = ["-m", "compressai.utils.eval_model", "checkpoint", str(images), "-a", "vlic"]
    proc = _python(core_env, *args, "-p", str(checkpoint), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert output["name"] == "vlic-mse"
    assert output["results"]["bpp"][0] > 0 and output["results"]["psnr-rgb"][0] > 3


@pytest.mark.slow
def test_literal_eval_model_pretrained_reaches_the_shipped_tiny_model(core_env, tmp_path, photos):
    """`eval_model pretrained -a vlic -q 0`: CompressAI's integer quality 0 is the shipped "tiny"."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photos["chelsea"][60:236, 120:296]).save(images / "chelsea.png")
    args = ["-m", "compressai.utils.eval_model", "pretrained", str(images), "-a", "vlic", "-q", "0"]
    proc = _python(core_env, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = json.loads(proc.stdout[proc.stdout.index("{") :])
    bpp, psnr = output["results"]["bpp"][0], output["results"]["psnr-rgb"][0]
    # trained weights, not random ones (random weights give about 10 dB here)
    assert 0.02 < bpp < 0.5 and psnr > 20, output["results"]
