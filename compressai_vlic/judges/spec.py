"""One way to build a judge: a typed :class:`JudgeSpec`, from command-line flags or a config dict.

The dataset builder (``compressai-vlic judge``), the audit, ``compare``, the demo job and the
stage-2 Lightning module all describe their judge with a ``JudgeSpec`` and call :meth:`build`, so
the same options mean the same judge everywhere::

    spec = JudgeSpec(backend="openai", model="Qwen/Qwen2.5-VL-7B-Instruct",
                     options={"base_url": "http://localhost:8000/v1"},
                     order_type="symmetrize", votes=3, unanimous_with=["lpips"])
    judge = spec.build()

``backend`` is a registered judge name (see :func:`compressai_vlic.judges.available_judges`,
third-party judges register through the ``compressai_vlic.judges`` entry-point group) or
``"package.module:factory"``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressai_vlic.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.judges.types import Judge

__all__ = ["DEFAULT_JUDGE", "JudgeSpec", "check_judge_arg_prefixes", "judge_kwargs"]

#: The offline default judge: a full-reference metric, no network, no weights.
DEFAULT_JUDGE = "ssimulacra2"

# Typed fields that are also keywords of the backend factory (passed only when set).
_BACKEND_FIELDS = ("model", "prompt_type", "temperature", "max_tokens")
# Fields of the composition (:class:`compressai_vlic.judges.compose.ComposeSpec`).
_COMPOSE_FIELDS = (
    "order_type",
    "combine_type",
    "votes",
    "majority_type",
    "unanimous_with",
    "weighted",
    "base_weight",
    "weighted_type",
)


def judge_kwargs(
    judge_type: str, pairs: list[tuple[str, Any]], base: bool = True
) -> dict[str, Any]:
    """Keywords for one judge: ``TYPE.KEY=VALUE`` goes to that judge type only; a plain
    ``KEY=VALUE`` goes to the main judge(s) (``base``), not to --unanimous-with/--weighted ones."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key.startswith(judge_type + "."):
            out[key[len(judge_type) + 1 :]] = value
        elif "." not in key and base:
            out[key] = value
    return out


def check_judge_arg_prefixes(pairs: list[tuple[str, Any]], judge_types: list[str]) -> None:
    """Reject ``TYPE.KEY=VALUE`` pairs whose TYPE is none of the run's judges (a likely typo)."""
    for key, _ in pairs:
        if "." in key and not any(key.startswith(t + ".") for t in judge_types):
            raise ConfigError(
                f"--judge-arg {key}=...: {key.rpartition('.')[0]!r} is not one of the judges of this "
                f"run ({', '.join(judge_types)})"
            )


def maybe_cached(judge: Judge, cache: str | Path | None) -> Judge:
    """Wrap ``judge`` in a persistent cache when a path is given and the judge has an identity."""
    if cache is None:
        return judge
    if not callable(getattr(judge, "cache_identity", None)):
        print(
            f"notice: --cache: judge {getattr(judge, 'name', judge)!r} cannot be cached (it has no "
            "cache_identity()); it runs uncached",
            file=sys.stderr,
        )
        return judge
    from compressai_vlic.judges.cache import CachedJudge

    return CachedJudge(judge, cache)


@dataclass
class JudgeSpec:
    """Everything that defines a judge: backend, model, prompt, sampling and composition.

    Args:
        backend: registered judge name or ``"module:factory"`` (default ``"ssimulacra2"``).
        model: VLM name at the endpoint / Hub id or folder (VLM backends only; default None).
        prompt_type: prompt template, e.g. ``"vlic-score"`` or ``"ab-choice"`` (default: the
            backend's own default).
        temperature: sampling temperature (default: the backend's).
        max_tokens: answer length limit (default: the backend's).
        options: other keywords of the backend factory (``base_url``, ``margin``, ...).
        order_type: ``"as-given"`` or ``"symmetrize"`` (judge both orders; default as-given).
        combine_type: how two orders combine, ``"sum"`` or ``"agree"`` (default sum).
        votes: self-ensemble of this many votes, majority wins (default 1).
        majority_type: ``"plurality"`` or ``"strict"`` (default plurality).
        unanimous_with: other judge types that must agree, else abstain (default none).
        weighted: judge type -> weight of a weighted ensemble with the base judge (default none).
        base_weight: the base judge's weight in that ensemble (default 1.0).
        weighted_type: ``"choice"`` or ``"score"`` (default choice).
        extra_options: judge type -> keywords for the judges named in ``unanimous_with`` and
            ``weighted`` (default none).
        cache: persistent SQLite judgment cache for judges with a cache identity (default None).
    """

    backend: str = DEFAULT_JUDGE
    model: str | None = None
    prompt_type: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    order_type: str = "as-given"
    combine_type: str = "sum"
    votes: int = 1
    majority_type: str = "plurality"
    unanimous_with: list[str] = field(default_factory=list)
    weighted: dict[str, float] = field(default_factory=dict)
    base_weight: float = 1.0
    weighted_type: str = "choice"
    extra_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: str | None = None

    def __post_init__(self) -> None:
        # Typed backend keywords given inside ``options`` become the typed fields.
        options = dict(self.options)
        for name in _BACKEND_FIELDS:
            if name in options:
                if getattr(self, name) is not None:
                    raise ConfigError(f"judge {name!r} given twice (as a field and in options)")
                setattr(self, name, options.pop(name))
        self.options = options
        self.compose_spec()  # validates the composition fields

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> JudgeSpec:
        """From a config dict (YAML, LightningCLI): the field names, plus the stage-2 module's
        ``judge_type`` / ``judge_kwargs`` / ``judge_compose`` spelling."""
        config = dict(config)
        legacy = {}
        if "judge_type" in config:
            legacy["backend"] = config.pop("judge_type")
        if "judge_kwargs" in config:
            legacy["options"] = dict(config.pop("judge_kwargs") or {})
        if "judge_compose" in config:
            legacy.update(config.pop("judge_compose") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"unknown judge option(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
            )
        clash = sorted(set(config) & set(legacy))
        if clash:
            raise ConfigError(f"judge option(s) {', '.join(clash)} given twice")
        return cls(**legacy, **config)

    @classmethod
    def from_args(cls, args: argparse.Namespace, backend: str | None = None) -> JudgeSpec:
        """From the ``compressai-vlic judge`` flags (``--judge-type``, ``--judge-arg``,
        ``--symmetrize``, ``--votes``, ...); ``backend`` overrides ``--judge-type``."""
        if backend is None:
            backend = args.judge_type
            if isinstance(backend, list):  # `judge audit` takes several; the first by default
                backend = backend[0] if backend else DEFAULT_JUDGE
        backend = backend or DEFAULT_JUDGE
        pairs = list(getattr(args, "judge_arg", []) or [])
        weighted = dict(getattr(args, "weighted", []) or [])
        unanimous = list(getattr(args, "unanimous_with", []) or [])
        return cls(
            backend=backend,
            options=judge_kwargs(backend, pairs),
            order_type=getattr(args, "order_type", "as-given"),
            combine_type=getattr(args, "combine_type", "sum"),
            votes=getattr(args, "votes", 1),
            majority_type=getattr(args, "majority_type", "plurality"),
            unanimous_with=unanimous,
            weighted=weighted,
            base_weight=getattr(args, "base_weight", 1.0),
            weighted_type=getattr(args, "weighted_type", "choice"),
            extra_options={t: judge_kwargs(t, pairs, base=False) for t in [*unanimous, *weighted]},
            cache=getattr(args, "cache", None),
        )

    # ------------------------------------------------------------------ building

    def backend_kwargs(self) -> dict[str, Any]:
        """Keywords of the backend factory: ``options`` plus the typed fields that are set."""
        kwargs = dict(self.options)
        for name in _BACKEND_FIELDS:
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def compose_spec(self) -> Any:
        """The composition part as a :class:`~compressai_vlic.judges.compose.ComposeSpec`."""
        from compressai_vlic.judges.compose import ComposeSpec

        return ComposeSpec(
            order_type=self.order_type,
            combine_type=self.combine_type,
            votes=self.votes,
            majority_type=self.majority_type,
            unanimous_with=list(self.unanimous_with),
            weighted=dict(self.weighted),
            base_weight=self.base_weight,
            weighted_type=self.weighted_type,
        )

    def build_base(self) -> Judge:
        """The backend judge alone (cached when ``cache`` is set), without composition."""
        from compressai_vlic.judges.compose import make_base_judge

        return maybe_cached(make_base_judge(self.backend, **self.backend_kwargs()), self.cache)

    def make_extra(self, judge_type: str) -> Judge:
        """A judge named in ``unanimous_with`` / ``weighted``, with its ``extra_options``."""
        from compressai_vlic.judges.compose import make_base_judge

        judge = make_base_judge(judge_type, **self.extra_options.get(judge_type, {}))
        return maybe_cached(judge, self.cache)

    def build(self) -> Judge:
        """The judge: the backend, then weighted ensemble, symmetrisation, votes, unanimity."""
        from compressai_vlic.judges.compose import compose

        return compose(self.build_base(), self.compose_spec(), self.make_extra)

    def judge_types(self) -> list[str]:
        """Every judge type this spec builds (the backend first)."""
        return [self.backend, *self.unanimous_with, *self.weighted]

    def with_backend(self, backend: str, options: Mapping[str, Any] | None = None) -> JudgeSpec:
        """The same composition around another backend."""
        return replace(self, backend=backend, options=dict(options or {}))
