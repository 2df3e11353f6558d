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


class LazyEntryPoint:
    """Stands in for an entry point's object and loads it on first use."""

    def __init__(self, entry_point: EntryPoint):
        self._entry_point = entry_point
        self._target: Any = None

    @property
    def target(self) -> Any:
        if self._target is None:
            ep = self._entry_point
            try:
                self._target = ep.load()
            except Exception as exc:
                raise ImportError(
                    f"CompressAI plugin {ep.name!r} ({ep.value}, group {ep.group}) failed to load: "
                    f"{exc.__class__.__name__}: {exc}"
                ) from exc
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


def _is_ours(obj: Any, ep: EntryPoint) -> bool:
    """A proxy of ours, or the very object the entry point names (already imported)."""
    if isinstance(obj, LazyEntryPoint):
        return True
    module = getattr(obj, "__module__", None) or ""
    if not (module == ep.module or module.startswith(ep.module + ".")):
        return False  # not from the plugin's package: a clash (loads nothing)
    try:
        return ep.load() is obj  # that package is imported already: cheap
    except Exception:
        return False


def register_entry_points() -> dict[str, list[str]]:
    """Register every plugin model and criterion with CompressAI; returns the names added now.

    Safe to call many times (later calls add nothing). Names CompressAI already defines are
    never overwritten: a clashing plugin is skipped with a warning.
    """
    from compressai_vlic.thirdparty import import_compressai

    import_compressai()
    import compressai.zoo as zoo
    import compressai.zoo.image as zoo_image
    from compressai import registry

    added: dict[str, list[str]] = {ZOO_GROUP: [], ARCHITECTURE_GROUP: [], CRITERION_GROUP: []}
    for ep in _entries(ZOO_GROUP):
        if ep.name in zoo.image_models:
            if not _is_ours(zoo.image_models[ep.name], ep):
                _warn_clash(ep)
            continue
        proxy = LazyEntryPoint(ep)
        zoo.image_models[ep.name] = proxy
        zoo.models.setdefault(ep.name, proxy)
        added[ZOO_GROUP].append(ep.name)
    for ep in _entries(ARCHITECTURE_GROUP):
        if ep.name in zoo_image.model_architectures:
            if not _is_ours(zoo_image.model_architectures[ep.name], ep):
                _warn_clash(ep)
            continue
        # eval_model/update_model want the class (update_model calls non-classes with no
        # arguments to get it); the registry wants a constructor, so it gets a plain proxy
        # (unless the class is already imported: it registers itself with @register_model).
        zoo_image.model_architectures[ep.name] = LazyArchitecture(ep)
        if ep.name not in registry.MODELS:
            registry.register_model(ep.name)(LazyEntryPoint(ep))
        added[ARCHITECTURE_GROUP].append(ep.name)
    for ep in _entries(CRITERION_GROUP):
        if ep.name in registry.CRITERIONS:
            if not _is_ours(registry.CRITERIONS[ep.name], ep):
                _warn_clash(ep)
            continue
        registry.register_criterion(ep.name)(LazyEntryPoint(ep))
        added[CRITERION_GROUP].append(ep.name)
    return added


def _warn_clash(ep: EntryPoint) -> None:
    warnings.warn(
        f"CompressAI plugin {ep.name!r} ({ep.value}, group {ep.group}) clashes with a name "
        "CompressAI already defines; skipped",
        stacklevel=3,
    )
