"""Generic loader for CompressAI plugins declared through entry points.

CompressAI reads no entry points, so this module copies them into the dictionaries its CLIs use.
Any installed distribution can declare, in its own ``pyproject.toml``::

    [project.entry-points."compressai.zoo"]           # name -> zoo factory(quality, metric, pretrained, progress)
    [project.entry-points."compressai.architectures"] # name -> CompressionModel subclass (from_state_dict)
    [project.entry-points."compressai.criteria"]      # name -> loss class

Entries are registered as lazy proxies: nothing behind them is imported until it is used, so the
start-up hook that calls :func:`register_entry_points` stays cheap.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ZOO_GROUP = "compressai.zoo"
ARCHITECTURE_GROUP = "compressai.architectures"
CRITERION_GROUP = "compressai.criteria"

_registered: dict[str, set[str]] = {}


class LazyEntryPoint:
    """Stands in for an entry point's object and loads it on first use."""

    def __init__(self, entry_point: EntryPoint):
        self._entry_point = entry_point
        self._target: Any = None

    @property
    def target(self) -> Any:
        if self._target is None:
            self._target = self._entry_point.load()
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.target(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.target, name)

    def __repr__(self) -> str:
        return f"LazyEntryPoint({self._entry_point.value!r})"


class LazyArchitecture(LazyEntryPoint):
    """Lazy model class as CompressAI's CLIs use it.

    ``update_model`` calls a non-class entry with no arguments to get the class;
    ``eval_model`` calls ``.from_state_dict`` on it directly. Both work through this proxy.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            return self.target
        return self.target(*args, **kwargs)


def _entries(group: str) -> list[EntryPoint]:
    return list(entry_points(group=group))


def register_entry_points() -> dict[str, list[str]]:
    """Register every plugin model and criterion with CompressAI; returns the names per group.

    Safe to call many times. Names CompressAI already defines are never overwritten.
    """
    import compressai.zoo as zoo
    import compressai.zoo.image as zoo_image
    from compressai import registry

    added: dict[str, list[str]] = {ZOO_GROUP: [], ARCHITECTURE_GROUP: [], CRITERION_GROUP: []}
    for ep in _entries(ZOO_GROUP):
        if ep.name in zoo.image_models and ep.name not in _registered.get(ZOO_GROUP, set()):
            warnings.warn(f"plugin model {ep.name!r} clashes with a CompressAI model; skipped", stacklevel=2)
            continue
        proxy = LazyEntryPoint(ep)
        zoo.image_models[ep.name] = proxy
        zoo.models[ep.name] = proxy
        added[ZOO_GROUP].append(ep.name)
    for ep in _entries(ARCHITECTURE_GROUP):
        if ep.name in zoo_image.model_architectures and ep.name not in _registered.get(
            ARCHITECTURE_GROUP, set()
        ):
            continue
        proxy = LazyArchitecture(ep)
        zoo_image.model_architectures[ep.name] = proxy
        registry.MODELS.setdefault(ep.name, proxy)
        added[ARCHITECTURE_GROUP].append(ep.name)
    for ep in _entries(CRITERION_GROUP):
        registry.CRITERIONS.setdefault(ep.name, LazyArchitecture(ep))
        added[CRITERION_GROUP].append(ep.name)
    for group, names in added.items():
        _registered.setdefault(group, set()).update(names)
    return added
