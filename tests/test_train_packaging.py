"""Training packaging: pytorch-lightning only, the lightning/ folder shadows nothing, configs are real."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from importlib import import_module
from itertools import chain
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_code_builds_on_pytorch_lightning_only():
    """One Lightning distribution: `pytorch-lightning`; nothing imports the `lightning` package."""
    import ast

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *chain(*project["optional-dependencies"].values())]
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in declared}
    assert "pytorch-lightning" in names and "lightning" not in names
    offenders = []
    for path in [*ROOT.glob("compressai_vlic/**/*.py"), *ROOT.glob("lightning/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            offenders += [f"{path}: {m}" for m in mods if m.split(".")[0] == "lightning"]
    assert not offenders


def test_import_lightning_from_repo_root_is_the_pypi_package():
    assert not (ROOT / "lightning" / "__init__.py").exists()
    try:  # the distribution, not find_spec: the repo's lightning/ folder is a namespace portion
        importlib.metadata.distribution("lightning")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("PyPI's lightning is not installed (it is no dependency)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import lightning; print(lightning.__file__)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    path = Path(out.stdout.strip())
    assert "site-packages" in path.parts, path
    assert ROOT / "lightning" not in path.parents


def test_training_package_imports_from_source_and_console_script_declared():
    import compressai_vlic_lightning

    assert (
        Path(compressai_vlic_lightning.__file__).parent
        == ROOT / "lightning" / "compressai_vlic_lightning"
    )
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'compressai-vlic-train = "compressai_vlic_lightning.cli:main"' in pyproject


def _check_init_args(class_path: str, init_args: dict) -> None:
    module, _, name = class_path.rpartition(".")
    cls = getattr(import_module(module), name)
    params = inspect.signature(cls.__init__).parameters
    accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = set(init_args or {}) - set(params)
    assert accepts_kwargs or not unknown, f"{class_path}: unknown options {sorted(unknown)}"


@pytest.mark.parametrize(
    "config", sorted((ROOT / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_training_config_names_real_classes_and_options(config):
    import pytorch_lightning as pl
    from compressai_vlic_lightning.configs import parse_config

    cfg = parse_config(config)  # as `fit` parses it: an unknown option is an error
    trainer_params = inspect.signature(pl.Trainer.__init__).parameters
    assert set(cfg["trainer"]) - {"logger", "callbacks"} <= set(trainer_params)
    for section in ("model", "data"):
        _check_init_args(cfg[section]["class_path"], cfg[section].get("init_args", {}))
    for cb in cfg["trainer"]["callbacks"] or []:
        _check_init_args(cb["class_path"], cb.get("init_args", {}))
    _check_init_args(cfg["trainer"]["logger"]["class_path"], cfg["trainer"]["logger"]["init_args"])
    init = cfg["model"]["init_args"]
    if init.get("judge_type"):
        from compressai_vlic.judges.factory import resolve_judge_type

        factory = resolve_judge_type(init["judge_type"])
        params = inspect.signature(factory).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            assert set(init.get("judge_kwargs") or {}) <= set(params)
    if init.get("judge_compose"):
        from compressai_vlic.judges.compose import ComposeSpec

        ComposeSpec(**init["judge_compose"])


def test_literal_options_are_validated_by_lightning_cli_and_argparse(capsys):
    from compressai_vlic_lightning import Stage1Module, Stage2Module
    from compressai_vlic_lightning.cli import main
    from compressai_vlic_lightning.perceptual import PerceptualType
    from jsonargparse import ArgumentParser

    from compressai_vlic.errors import ConfigError
    from compressai_vlic.options import check_option, choices

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Stage1Module, "model")
    assert (
        parser.parse_args(["--model.perceptual_type", "ms_ssim"]).model.perceptual_type == "ms_ssim"
    )
    with pytest.raises(Exception, match="perceptual_type"):
        parser.parse_args(["--model.perceptual_type", "bogus"])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Stage2Module, "model")
    with pytest.raises(Exception, match="freeze_type"):
        parser.parse_args(["--model.freeze_type", "decoder"])
    # argparse gets its choices from the same type
    with pytest.raises(SystemExit):
        main(["export", "in.ckpt", "out.pth.tar", "--weights-type", "bogus"])
    assert "choose from 'ema', 'raw'" in capsys.readouterr().err
    assert choices(PerceptualType) == ("lpips", "ms_ssim", "student", "none")
    with pytest.raises(ConfigError, match=r"unknown perceptual_type 'x'; choose from 'lpips'"):
        check_option("perceptual_type", "x", PerceptualType)
