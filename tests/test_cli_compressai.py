"""CompressAI's own CLIs on a tiny VLIC checkpoint, as a user runs them (subprocesses).

`python -m compressai.utils.eval_model ... -a vlic` only works through the installed start-up
hook; `compressai-vlic eval/update` must work with the hook off (COMPRESSAI_PLUGINS=0).
eval_model computes MS-SSIM, which needs more than 160 px per side, so the crops are ~170 px.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from PIL import Image

from compressai_vlic.cli._codec import load_model
from compressai_vlic.image_io import load_image
from compressai_vlic.models.vlic import VLIC

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, photos) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compressai_cli")
    images = root / "images"
    images.mkdir()
    Image.fromarray(photos["astronaut"][40:208, 150:326]).save(images / "astronaut.png")
    Image.fromarray(photos["coffee"][100:261, 200:396]).save(images / "coffee.png")
    checkpoint = root / "vlic_test.pth.tar"
    torch.save(load_model(quality="test").state_dict(), checkpoint)
    return {"root": root, "images": images, "checkpoint": checkpoint}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"COMPRESSAI_PLUGINS", "PYTHONPATH"}
    }
    full_env["PYTHONPATH"] = str(REPO)  # this checkout's code; hook and entry points installed
    full_env.update(env)
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stderr[-3000:]}"
    return proc


def _console_script() -> str:
    path = shutil.which("compressai-vlic", path=str(Path(sys.executable).parent))
    assert path, "compressai-vlic is not installed: run `pip install --no-deps .`"
    return path


def _eval_results(stdout: str, description: str) -> dict[str, list[float]]:
    output = json.loads(stdout[stdout.index("{") :])
    assert output["name"] == "vlic-mse"
    assert output["description"] == f"Inference ({description})"
    results = output["results"]
    assert set(results) >= {"psnr-rgb", "ms-ssim-rgb", "bpp"}
    assert all(len(v) == 1 for v in results.values())  # one checkpoint
    return {k: v[0] for k, v in results.items()}


def _photo(path: Path) -> torch.Tensor:
    return load_image(path).tensor[None]


EVAL_MODEL = [sys.executable, "-m", "compressai.utils.eval_model", "checkpoint"]


@pytest.mark.slow
def test_literal_eval_model_real_bitstreams(setup):
    images, checkpoint = str(setup["images"]), str(setup["checkpoint"])
    proc = _run([*EVAL_MODEL, images, "-a", "vlic", "-p", checkpoint], setup["root"])
    results = _eval_results(proc.stdout, "ans")
    # eval_model pads to multiples of 64 and counts only the bytes in `strings`: the same bytes
    # this process writes for the padded photos.
    model = load_model(quality="test")
    expected_bpp = []
    for path in sorted(setup["images"].iterdir()):
        x = _photo(path)
        pad, _ = compute_padding(x.shape[-2], x.shape[-1], min_div=64)
        data = model.compress(F.pad(x, pad))["strings"][0][0]
        expected_bpp.append(len(data) * 8 / (x.shape[-1] * x.shape[-2]))
    assert results["bpp"] == pytest.approx(np.mean(expected_bpp), rel=0.02)
    assert 3 < results["psnr-rgb"] < 60


@pytest.mark.slow
def test_literal_eval_model_entropy_estimation(setup):
    images, checkpoint = str(setup["images"]), str(setup["checkpoint"])
    proc = _run(
        [*EVAL_MODEL, images, "-a", "vlic", "-p", checkpoint, "--entropy-estimation"],
        setup["root"],
    )
    results = _eval_results(proc.stdout, "entropy estimation")
    # forward() on the unpadded photo: bpp is the prior's cross-entropy of its tokens.
    model = load_model(quality="test")
    expected_bpp = []
    for path in sorted(setup["images"].iterdir()):
        x = _photo(path)
        with torch.no_grad():
            _, enc = model.encode_image(x)
            bits = float(model.token_nll_bits(enc.indices).sum())
        expected_bpp.append(bits / x[0, 0].numel())
    assert results["bpp"] == pytest.approx(np.mean(expected_bpp), rel=0.02)


@pytest.mark.slow
def test_literal_update_model_exports_a_hashed_weights_only_checkpoint(setup):
    out = setup["root"] / "exported"
    update_model = [sys.executable, "-m", "compressai.utils.update_model"]
    _run(
        [*update_model, "--architecture", "vlic", str(setup["checkpoint"]), "-d", str(out)],
        setup["root"],
    )
    (exported,) = out.iterdir()
    match = re.fullmatch(r"vlic_test-([0-9a-f]{8})\.pth\.tar", exported.name)
    assert match, exported.name
    assert hashlib.sha256(exported.read_bytes()).hexdigest()[:8] == match.group(1)
    state = torch.load(exported, map_location="cpu", weights_only=True)
    net = VLIC.from_state_dict(state)
    reference = torch.load(setup["checkpoint"], map_location="cpu", weights_only=True)
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert net.config.name == "vlic-test"


@pytest.mark.slow
def test_console_eval_and_update_work_with_the_hook_off(setup):
    cli = _console_script()
    images, checkpoint = str(setup["images"]), str(setup["checkpoint"])
    proc = _run(
        [cli, "eval", "checkpoint", images, "-a", "vlic", "-p", checkpoint, "--entropy-estimation"],
        setup["root"],
        COMPRESSAI_PLUGINS="0",
    )
    assert _eval_results(proc.stdout, "entropy estimation")["bpp"] > 0
    out = setup["root"] / "exported_off"
    proc = _run(
        [cli, "update", str(setup["checkpoint"]), "-a", "vlic", "-n", "vlic-test", "-d", str(out)],
        setup["root"],
        COMPRESSAI_PLUGINS="0",
    )
    (exported,) = out.iterdir()
    assert re.fullmatch(r"vlic-test-[0-9a-f]{8}\.pth\.tar", exported.name)
    assert proc.stdout.strip() == f"wrote {exported}"
    VLIC.from_state_dict(torch.load(exported, map_location="cpu", weights_only=True))
