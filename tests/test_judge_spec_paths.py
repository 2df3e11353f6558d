"""One judge, three ways in: the command line, the stage-2 YAML and Python give one JudgeSpec,
one factory call and one cache identity."""

from __future__ import annotations

import argparse
import importlib

import pytest
import torch

from compressai_vlic.judges.cache import CachedJudge
from compressai_vlic.judges.compose import describe_judge
from compressai_vlic.judges.spec import ComposeSpec, JudgeSpec

BASE_URL = "http://127.0.0.1:9/v1"  # never contacted: building a judge makes no request


def _python(cache: str) -> JudgeSpec:
    return JudgeSpec(
        backend="openai",
        model="loopback-vlm",
        prompt_type="ab-choice",
        temperature=0.7,
        options={"base_url": BASE_URL, "api_key_env": "", "seed": 3},
        compose=ComposeSpec(order_type="symmetrize", votes=3, unanimous_with=["psnr"]),
        extra_options={"psnr": {"margin": 0.25}},
        cache=cache,
    )


def _command_line(command: str, argv: list[str]) -> JudgeSpec:
    """The spec as that command reads its own parser (the same one ``compressai-vlic`` runs)."""
    from compressai_vlic.cli.main import COMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return JudgeSpec.from_args(parser.parse_args(argv))


def _judge_flags(cache: str) -> list[str]:
    return [
        "--judge-type", "openai", "--judge-model", "loopback-vlm",
        "--judge-prompt-type", "ab-choice", "--judge-temperature", "0.7",
        "--judge-option", f"base_url={BASE_URL}", "--judge-option", "api_key_env=",
        "--judge-option", "seed=3", "--judge-option", "psnr.margin=0.25",
        "--order-type", "symmetrize", "--votes", "3", "--unanimous-with", "psnr",
        "--cache", cache,
    ]  # fmt: skip


def _yaml(cache: str) -> JudgeSpec:
    """The stage-2 module's ``judge:`` block, parsed as LightningCLI parses it (jsonargparse)."""
    jsonargparse = pytest.importorskip("jsonargparse")
    pytest.importorskip("pytorch_lightning")
    from compressai_vlic_lightning import Stage2Module

    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(Stage2Module, "model")
    config = parser.parse_string(
        f"""
model:
  quality: test
  judge:
    backend: openai
    model: loopback-vlm
    prompt_type: ab-choice
    temperature: 0.7
    options: {{base_url: "{BASE_URL}", api_key_env: "", seed: 3}}
    compose: {{order_type: symmetrize, votes: 3, unanimous_with: [psnr]}}
    extra_options: {{psnr: {{margin: 0.25}}}}
    cache: {cache}
"""
    )
    module = parser.instantiate(config).model
    assert isinstance(module.judge_spec, JudgeSpec)
    return module.judge_spec


def test_command_line_yaml_and_python_build_the_same_judge(tmp_path):
    cache = str(tmp_path / "judgments.sqlite")
    python = _python(cache)
    specs = {
        "python": python,
        "judge": _command_line("judge", _judge_flags(cache)),
        "compare": _command_line("compare", ["images/", "-o", "out/", *_judge_flags(cache)]),
        "demo": _command_line("demo", _judge_flags(cache)),
        "yaml": _yaml(cache),
        "round trip": JudgeSpec.from_config(python.to_config()),
    }
    for where, spec in specs.items():
        assert spec == python, where
    ref = torch.rand(3, 16, 16)
    a, b = (ref * 0.9).clamp(0, 1), (ref * 0.5).clamp(0, 1)
    identities, keys, descriptions = set(), set(), set()
    for spec in specs.values():
        base = spec.build_base()
        assert isinstance(base, CachedJudge)  # one cache wrapper, from the spec's cache field
        identities.add(repr(sorted(base.cache_identity().items())))
        keys.add(base.key(ref, a, b))
        judge = spec.build()
        assert judge.name == "unanimous(ensemble3(symmetrize(openai:loopback-vlm)),psnr)"
        descriptions.add(repr(describe_judge(judge)))
        base.judge.close()
    assert len(identities) == len(keys) == len(descriptions) == 1
    identity = python.build_base().cache_identity()
    assert identity["model"] == "loopback-vlm" and identity["sampling"]["temperature"] == 0.7
    assert identity["sampling"]["seed"] == 3


def test_older_spellings_map_into_the_same_spec(tmp_path):
    cache = str(tmp_path / "judgments.sqlite")
    old_flags = [
        "--judge", "openai", "--judge-model", "loopback-vlm", "--judge-base-url", BASE_URL,
        "--judge-api-key-env", "", "--judge-arg", "prompt_type=ab-choice",
        "--judge-arg", "temperature=0.7", "--judge-arg", "seed=3",
        "--judge-arg", "psnr.margin=0.25", "--symmetrize", "--votes", "3",
        "--unanimous-with", "psnr", "--cache", cache,
    ]  # fmt: skip
    assert _command_line("judge", old_flags) == _python(cache)
    legacy = JudgeSpec.from_module_args(
        {
            "judge_type": "openai",
            "judge_kwargs": {
                "model": "loopback-vlm",
                "prompt_type": "ab-choice",
                "temperature": 0.7,
                "base_url": BASE_URL,
                "api_key_env": "",
                "seed": 3,
            },
            "judge_compose": {"order_type": "symmetrize", "votes": 3, "unanimous_with": ["psnr"]},
        }
    )
    python = _python(cache)
    assert legacy == JudgeSpec(**{**vars(python), "extra_options": {}, "cache": None})
    with pytest.raises(Exception, match="judge once"):
        JudgeSpec.from_module_args({"judge": {"backend": "psnr"}, "judge_type": "lpips"})
    # the same judge in both spellings (a resumed run) is one judge
    both = JudgeSpec.from_module_args({"judge": {"backend": "psnr"}, "judge_type": "psnr"})
    assert both == JudgeSpec.from_module_args({"judge_type": "psnr"})


def test_compare_takes_symmetrisation_and_votes():
    spec = _command_line(
        "compare",
        ["images/", "-o", "out/", "--judge-type", "psnr", "--symmetrize", "--votes", "3"],
    )
    assert spec.compose == ComposeSpec(order_type="symmetrize", votes=3)
    assert spec.build().name == "ensemble3(symmetrize(psnr))"
