"""Build any judge from a type string: ``make_judge("openai", model=..., base_url=...)``.

Where a judge type is looked up, in order: ``_REGISTRY`` (factories registered at import time
with ``@register_judge(name)``); ``LAZY_JUDGES``, the built-in table (``"module:attr"`` imported
only when that judge is asked for, so this module imports nothing heavy); the
``compressai_vlic.judges`` entry-point group, where any installed distribution registers its own
judges as CompressAI models are registered::

    [project.entry-points."compressai_vlic.judges"]
    my_vlm = "my_package.judges:MyVLMJudge"

and finally a literal ``"package.module:factory"``. The built-in table also answers when the
installed metadata predates a judge (e.g. running from a source checkout).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from compressai_vlic.errors import ConfigError

JudgeFactory = Callable[..., Any]
F = TypeVar("F", bound=JudgeFactory)

#: Entry-point group third-party judges register in (name -> class or factory returning a Judge).
ENTRY_POINT_GROUP = "compressai_vlic.judges"

_REGISTRY: dict[str, JudgeFactory] = {}

# name -> "module:attr" (a class or a function returning a Judge), imported on first use.
LAZY_JUDGES: dict[str, str] = {
    "openai": "compressai_vlic.judges.openai_judge:OpenAIJudge",
    "hf": "compressai_vlic.judges.hf_judge:HFJudge",
    # full-reference metric judges (offline); ssimulacra2 is the offline default
    "ssimulacra2": "compressai_vlic.judges.metric_judge:ssimulacra2_judge",
    "psnr": "compressai_vlic.judges.metric_judge:psnr_judge",
    "ms_ssim": "compressai_vlic.judges.metric_judge:ms_ssim_judge",
    "lpips": "compressai_vlic.judges.metric_judge:lpips_judge",
    "dists": "compressai_vlic.judges.metric_judge:dists_judge",
    "metric": "compressai_vlic.judges.metric_judge:metric_judge",
    # reference-free attribute judges (offline): colourfulness, RMS contrast, or either by option
    "colorfulness": "compressai_vlic.judges.attribute_judge:colorfulness_judge",
    "rms_contrast": "compressai_vlic.judges.attribute_judge:rms_contrast_judge",
    "attribute": "compressai_vlic.judges.attribute_judge:AttributeJudge",
}


def register_judge(name: str) -> Callable[[F], F]:
    """Decorator: make a judge class or factory function available to :func:`make_judge`."""

    def deco(obj: F) -> F:
        _REGISTRY[name] = obj
        return obj

    return deco


def entry_point_judges() -> dict[str, str]:
    """Judges declared in the ``compressai_vlic.judges`` entry-point group: name -> "module:attr"."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_judges() -> list[str]:
    return sorted(set(_REGISTRY) | set(LAZY_JUDGES) | set(entry_point_judges()))


def resolve_judge_type(judge_type: str) -> JudgeFactory:
    """The class/function behind a judge type (a registered name or ``"module:attr"``)."""
    if judge_type in _REGISTRY:
        return _REGISTRY[judge_type]
    target = LAZY_JUDGES.get(judge_type)
    if target is None:
        target = entry_point_judges().get(judge_type)
    if target is None and ":" in judge_type:
        target = judge_type  # a user-supplied "package.module:factory"
    if target is None:
        raise ConfigError(
            f"unknown judge type {judge_type!r}; choose one of {', '.join(available_judges())} "
            "or give 'package.module:factory'"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"judge type {judge_type!r}: cannot import {module_name} ({exc})"
        ) from exc
    if judge_type in _REGISTRY:  # the module registered itself on import
        return _REGISTRY[judge_type]
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"judge type {judge_type!r}: {module_name} has no {attr!r}") from exc


def make_judge(judge_type: str, cache_path: str | Path | None = None, **kwargs: Any) -> Any:
    """Build a judge; with ``cache_path`` it is wrapped in a persistent :class:`CachedJudge`."""
    factory = resolve_judge_type(judge_type)
    try:
        judge = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"judge type {judge_type!r}: bad options ({exc})") from exc
    if cache_path is not None:
        from compressai_vlic.judges.cache import CachedJudge

        judge = CachedJudge(judge, cache_path)
    return judge
