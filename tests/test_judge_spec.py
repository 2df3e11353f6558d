"""JudgeSpec: one way to build a judge, from flags or a config; third-party judges by entry point."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges import factory
from compressai_vlic.judges.compose import ComposeSpec, compose, describe_judge
from compressai_vlic.judges.factory import make_judge
from compressai_vlic.judges.spec import JudgeSpec

ROOT = Path(__file__).resolve().parents[1]


def _judge_args(argv: list[str]) -> argparse.Namespace:
    from compressai_vlic.cli.judge import add_judge_arguments

    parser = argparse.ArgumentParser()
    add_judge_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.filterwarnings("ignore:ms_ssim")
def test_from_args_builds_the_judge_the_flags_describe():
    args = _judge_args(
        [
            "--judge-type", "psnr", "--symmetrize", "--votes", "3",
            "--unanimous-with", "ms_ssim", "--judge-arg", "margin=0.5",
            "--judge-arg", "ms_ssim.scale=0.05",
        ]
    )  # fmt: skip
    spec = JudgeSpec.from_args(args)
    assert spec.backend == "psnr" and spec.options == {"margin": 0.5}
    assert spec.extra_options == {"ms_ssim": {"scale": 0.05}}
    expected = compose(
        make_judge("psnr", margin=0.5),
        ComposeSpec(order_type="symmetrize", votes=3, unanimous_with=["ms_ssim"]),
        lambda t: make_judge(t, scale=0.05),
    )
    judge = spec.build()
    assert describe_judge(judge) == describe_judge(expected)
    assert judge.name == "unanimous(ensemble3(symmetrize(psnr)),ms_ssim)"
    x = torch.rand(3, 32, 32)
    a, b = (x + 0.02 * torch.randn_like(x)).clamp(0, 1), (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert judge.compare(x, a, b).choice == expected.compare(x, a, b).choice


def test_from_config_takes_field_names_and_the_stage2_spelling():
    legacy = JudgeSpec.from_config(
        {
            "judge_type": "openai",
            "judge_kwargs": {"model": "m", "base_url": "http://127.0.0.1:1/v1", "temperature": 0.3},
            "judge_compose": {"order_type": "symmetrize"},
        }
    )
    fields = JudgeSpec.from_config(
        {
            "backend": "openai",
            "model": "m",
            "temperature": 0.3,
            "options": {"base_url": "http://127.0.0.1:1/v1"},
            "compose": {"order_type": "symmetrize"},
        }
    )
    assert legacy == fields
    assert legacy.model == "m" and legacy.temperature == 0.3  # typed, not buried in options
    assert legacy.backend_kwargs() == {
        "base_url": "http://127.0.0.1:1/v1",
        "model": "m",
        "temperature": 0.3,
    }
    with pytest.raises(ConfigError, match="unknown judge option"):
        JudgeSpec.from_config({"backend": "psnr", "vote": 3})
    with pytest.raises(ConfigError, match="votes"):
        JudgeSpec(compose={"votes": 0})
    with pytest.raises(ConfigError, match="given twice"):
        JudgeSpec(model="a", options={"model": "b"})


def test_cache_wraps_judges_with_an_identity_only(tmp_path):
    from compressai_vlic.judges.cache import CachedJudge

    metric = JudgeSpec(backend="psnr", cache=str(tmp_path / "c.sqlite")).build()
    assert not isinstance(metric, CachedJudge)  # a metric is cheaper than a cache lookup
    vlm = JudgeSpec(
        backend="openai",
        model="m",
        options={"base_url": "http://127.0.0.1:9/v1", "api_key_env": None},
        cache=str(tmp_path / "c.sqlite"),
    ).build()
    assert isinstance(vlm, CachedJudge)


PLUGIN = """
from compressai_vlic.judges.metric_judge import psnr_judge


def brighter_judge(**kwargs):
    judge = psnr_judge(**kwargs)
    judge.name = "third-party"
    return judge
"""


def test_third_party_judges_register_through_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "vlic_third_party_judge.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(
        "third_party", "vlic_third_party_judge:brighter_judge", factory.ENTRY_POINT_GROUP
    )
    seen = []

    def fake_entry_points(group):
        seen.append(group)
        return [ep] if group == factory.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(factory, "entry_points", fake_entry_points)
    assert "third_party" in factory.available_judges()
    judge = JudgeSpec(backend="third_party", compose={"order_type": "symmetrize"}).build()
    assert judge.name == "symmetrize(third-party)"
    assert seen and set(seen) == {factory.ENTRY_POINT_GROUP}
    monkeypatch.delitem(sys.modules, "vlic_third_party_judge")


def test_built_in_judges_are_the_entry_points_and_each_resolves(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][factory.ENTRY_POINT_GROUP]
    assert set(declared) <= set(factory.available_judges())  # one registry: the entry points
    assert not hasattr(factory, "LAZY_JUDGES")
    for name in declared:
        assert callable(factory.resolve_judge_type(name)), name
    with pytest.raises(ConfigError, match="unknown judge type"):
        factory.resolve_judge_type("no-such-judge")
    monkeypatch.setattr(factory, "entry_points", lambda group: [])  # metadata missing
    with pytest.raises(ConfigError, match="pip install -e"):
        factory.resolve_judge_type("psnr")


def test_training_configs_ship_in_the_wheel_and_resolve_from_the_source_tree(tmp_path, monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    import yaml
    from compressai_vlic_lightning import configs

    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["force-include"]["configs"] == "compressai_vlic/configs"
    assert configs.config_path("tiny_stage1") == ROOT / "configs" / "train" / "tiny_stage1.yaml"
    assert configs.parse_config("tiny_stage2")["model"]["class_path"].endswith("Stage2Module")
    # installed layout: <site-packages>/compressai_vlic/configs/train/*.yaml comes first
    package = tmp_path / "site" / "compressai_vlic"
    (package / "configs" / "train").mkdir(parents=True)
    (package / "configs" / "train" / "tiny_stage1.yaml").write_text("seed_everything: 7\n")
    monkeypatch.setattr(configs, "_PACKAGE", package)
    assert yaml.safe_load(configs.config_path("tiny_stage1").read_text()) == {"seed_everything": 7}
    with pytest.raises(ConfigError, match="not found"):
        configs.config_path("no_such_config")


def test_module_args_take_both_spellings_only_when_they_agree():
    """A resumed run merges the checkpoint's ``judge:`` into a YAML with the older keys."""
    legacy = {"judge_type": "metric", "judge_kwargs": {"metric": "psnr"}}
    spec = JudgeSpec.from_module_args(legacy)
    assert JudgeSpec.from_module_args({**legacy, "judge": spec.to_config()}) == spec
    other = JudgeSpec.from_module_args(
        {"judge_type": "metric", "judge_kwargs": {"metric": "lpips"}}
    )
    with pytest.raises(ConfigError, match="they differ"):
        JudgeSpec.from_module_args({**legacy, "judge": other.to_config()})
