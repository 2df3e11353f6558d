"""What a new user meets in the first hour: help that names the shipped model, CompressAI's eval
on a folder with a small image, shipped configs by name, no third-party noise, clear errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image

from compressai_vlic.cli import decode, encode
from compressai_vlic.cli._codec import load_model
from compressai_vlic.cli.main import main as vlic_main

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONWARNINGS", "COMPRESSAI_PLUGINS"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "lightning")])
    return env


@pytest.mark.parametrize("command", [encode, decode])
def test_quality_help_names_the_shipped_tiny_model(command):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "'tiny'" in text and "shipped" in text
    # `test` is not offered as a "tiny" model a user should pick
    assert "tiny untrained" not in text and "noise" in text


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("eval_first_hour")
    images = root / "images"
    images.mkdir()
    Image.fromarray(photos["coffee"][100:270, 200:380]).save(images / "big.png")  # 170 x 180
    Image.fromarray(photos["astronaut"][:100, :100]).save(images / "small.png")  # 100 x 100
    checkpoint = root / "vlic_test.pth.tar"
    torch.save(load_model(quality="test").state_dict(), checkpoint)
    return images, checkpoint


def _eval_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_eval_wrapper_reports_and_skips_an_image_too_small_for_ms_ssim(eval_folder, capsys):
    images, checkpoint = eval_folder
    args = ["eval", "checkpoint", str(images), "-a", "vlic", "-p", str(checkpoint)]
    assert vlic_main([*args, "--entropy-estimation"]) == 0
    out, err = capsys.readouterr()
    assert "small.png: 100x100 px" in err and "161" in err
    assert "Traceback" not in err
    results = _eval_json(out)["results"]
    assert results["bpp"][0] > 0 and results["psnr-rgb"][0] > 0 and "ms-ssim-rgb" in results


def test_eval_wrapper_takes_quality_names_and_every_error_names_the_integers(eval_folder, capsys):
    images, _ = eval_folder
    base = ["eval", "pretrained", str(images), "-a", "vlic", "--entropy-estimation"]
    assert vlic_main([*base, "-q", "tiny"]) == 0
    out, _ = capsys.readouterr()
    assert _eval_json(out)["results"]["bpp"][0] > 0
    for bad in ("3", "test", "best"):
        assert vlic_main([*base, "-q", bad]) != 0
        err = capsys.readouterr().err
        assert "0 (tiny), 1, 2" in err, err
        assert "Traceback" not in err


def test_plan_takes_a_shipped_config_by_name_from_another_folder(tmp_path, monkeypatch, capsys):
    from compressai_vlic_lightning.cli import main as train_main

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert train_main(["plan", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"paper_q1_stage1", "tiny_stage1"} <= set(listed)
    assert train_main(["plan", "--config", "no_such_config"]) == 2
    assert "paper_q1_stage1" in capsys.readouterr().err  # the error lists the shipped configs
    assert train_main(["plan", "--config", "tiny_stage1", "--gpu-memory", "4", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert Path(report["config"]).name == "tiny_stage1.yaml" and report["fits"]
    # the repository-relative path a README shows works from elsewhere too
    assert train_main(["plan", "--config", "configs/train/tiny_stage1.yaml", "--json"]) == 0
    # `fit --config NAME` gets the shipped file; other values reach LightningCLI unchanged
    from compressai_vlic_lightning.cli import _config_names

    argv = _config_names(["--config", "tiny_stage1", "--config=nope.yaml", "--x", "tiny_stage1"])
    assert Path(argv[1]).is_file() and Path(argv[1]).name == "tiny_stage1.yaml"
    assert argv[2:] == ["--config=nope.yaml", "--x", "tiny_stage1"]


def test_plain_encode_prints_no_warning(tmp_path, photos):
    Image.fromarray(photos["rocket"][:64, :64]).save(tmp_path / "a.png")
    cmd = [sys.executable, "-m", "compressai_vlic.cli.main", "encode", "a.png", "-o", "a.vlic"]
    proc = subprocess.run(
        [*cmd, "--quality", "tiny", "--threads", "1"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "warn" not in proc.stderr, proc.stderr
    assert (tmp_path / "a.vlic").stat().st_size > 0


def test_console_encode_prints_no_warning_even_with_hidden_deprecations_shown(tmp_path, photos):
    """`compressai-vlic encode` as a user types it (the console script): nothing on stderr that
    is a warning, also with the deprecation warnings Python hides by default shown."""
    cli = shutil.which("compressai-vlic", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("the compressai-vlic console script is not installed")
    Image.fromarray(photos["chelsea"][:48, :40]).save(tmp_path / "a.png")
    for setting in ("", "default"):
        env = {**_env(), **({"PYTHONWARNINGS": setting} if setting else {})}
        out = f"a{setting}.vlic"
        proc = subprocess.run(
            [cli, "encode", "a.png", "-o", out, "--quality", "test", "--threads", "1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr and "warn" not in proc.stderr, (setting, proc.stderr)
        assert (tmp_path / out).stat().st_size > 0


def test_weights_fetch_prints_the_outcome_not_the_failed_attempts(monkeypatch, tmp_path, capsys):
    import lpips

    from compressai_vlic.metrics import weights

    monkeypatch.setenv("COMPRESSAI_VLIC_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def unreachable(url, target, timeout):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights, "_download", unreachable)
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    fetch = ["weights", "fetch", "lpips-alex", "--file", f"lpips-alex={heads}"]
    assert vlic_main([*fetch, "--sources", "url", "file"]) == 0
    err = capsys.readouterr().err
    assert "urlopen error" not in err and "verified" in err
    (tmp_path / "cache" / "lpips-v0.1-alex.pth").unlink()
    assert vlic_main([*fetch, "--sources", "url", "file", "--verbose"]) == 0
    assert "urlopen error" in capsys.readouterr().err  # the attempts, when asked for
    # a weight no source has: the reasons are shown with the failure
    assert vlic_main(["weights", "fetch", "lpips-vgg", "--sources", "url"]) == 1
    assert "urlopen error" in capsys.readouterr().err


def test_prepare_photos_held_out_without_its_package_says_what_to_install(tmp_path):
    script = str(REPO / "scripts" / "prepare_photos.py")
    proc = subprocess.run(
        [sys.executable, script, "--held-out", "out", "--debian-root", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "mate-backgrounds" in proc.stderr and "apt-get" in proc.stderr
    assert not (tmp_path / "out").exists()


_HELP_PROBE = """
import contextlib, io, sys
from compressai_vlic.cli.main import main
from compressai_vlic_lightning.cli import main as train_main
calls = [(main, []), (main, ["encode"]), (main, ["decode"]), (main, ["eval"]), (main, ["update"]),
         (main, ["demo"]), (train_main, []), (train_main, ["plan"]), (train_main, ["export"])]
for fn, argv in calls:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            fn([*argv, "--help"])
    except SystemExit:
        pass
    assert "usage" in out.getvalue(), argv
    heavy = sorted({"torch", "pytorch_lightning", "compressai"} & set(sys.modules))
    print(fn.__module__, argv, heavy)
"""


def test_help_imports_no_torch():
    """`--help` answers at once: its parsers are built without torch, Lightning or CompressAI."""
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 9 and all(line.endswith("[]") for line in lines), proc.stdout
