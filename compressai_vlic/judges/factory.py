"""The one factory of judges: ``make_judge("openai", model=..., base_url=...)``.

A judge type is looked up, in order, in ``_REGISTRY`` (factories registered at run time with
``@register_judge(name)``), in the ``compressai_vlic.judges`` entry-point group, where this
package declares its built-in judges (pyproject.toml) and any installed distribution declares
its own, as CompressAI models are registered::

    [project.entry-points."compressai_vlic.judges"]
    my_vlm = "my_package.judges:MyVLMJudge"

and finally as a literal ``"package.module:factory"``. Nothing is imported until a judge is
asked for, so this module imports nothing heavy.
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
    """Every judge name :func:`make_judge` knows."""
    return sorted(set(_REGISTRY) | set(entry_point_judges()))


def resolve_judge_type(judge_type: str) -> JudgeFactory:
    """The class/function behind a judge type (a registered name or ``"module:attr"``)."""
    if judge_type in _REGISTRY:
        return _REGISTRY[judge_type]
    target = entry_point_judges().get(judge_type)
    if target is None and ":" in judge_type:
        target = judge_type  # a user-supplied "package.module:factory"
    if target is None:
        raise ConfigError(
            f"unknown judge type {judge_type!r}; choose one of {', '.join(available_judges())} "
            "or give 'package.module:factory' (the built-in names come from the installed "
            "package's metadata: pip install -e . in a source checkout)"
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
    """Build a judge from its type and factory keywords.

    Args:
        judge_type: a registered name or ``"package.module:factory"``.
        cache_path: persistent judgment cache; judges with a cache identity are wrapped in it.
        **kwargs: keywords of the judge's factory.
    """
    factory = resolve_judge_type(judge_type)
    try:
        judge = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"judge type {judge_type!r}: bad options ({exc})") from exc
    from compressai_vlic.judges.cache import cached

    return cached(judge, cache_path)
