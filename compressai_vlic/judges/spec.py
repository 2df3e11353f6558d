"""A judge is one typed config: :class:`JudgeSpec` (backend, options, ``compose``, cache).

Every way in builds a ``JudgeSpec`` and calls :meth:`JudgeSpec.build`, so the same options mean
the same judge everywhere:

- YAML: the stage-2 module's ``judge:`` block (jsonargparse builds the dataclass);
- the command line: :meth:`JudgeSpec.add_arguments` adds ``--judge-type``, ``--judge-option``,
  ``--judge-model``, ``--cache`` and the composition flags to a parser, and
  :meth:`JudgeSpec.from_args` reads them back (every command that takes a judge shares both);
- Python::

    spec = JudgeSpec(backend="openai", model="Qwen/Qwen2.5-VL-7B-Instruct",
                     options={"base_url": "http://localhost:8000/v1"},
                     compose=ComposeSpec(order_type="symmetrize", votes=3,
                                         unanimous_with=["lpips"]))
    judge = spec.build()

``backend`` is a judge name registered in the ``compressai_vlic.judges`` entry-point group (see
:func:`compressai_vlic.judges.available_judges`) or ``"package.module:factory"``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from compressai_vlic.errors import ConfigError
from compressai_vlic.options import check_option, key_value

if TYPE_CHECKING:  # pragma: no cover
    from compressai_vlic.judges.types import Judge

__all__ = ["DEFAULT_JUDGE", "ComposeSpec", "JudgeSpec", "judge_kwargs"]

#: The offline default judge: a full-reference metric, no network, no weights.
DEFAULT_JUDGE = "ssimulacra2"

OrderType = Literal["as-given", "symmetrize"]
CombineOrderType = Literal["sum", "agree"]
MajorityType = Literal["plurality", "strict"]
WeightedType = Literal["choice", "score"]

# Typed fields that are also keywords of the backend factory (passed only when set).
_BACKEND_FIELDS = ("model", "prompt_type", "temperature", "max_tokens")
# Spellings kept for one release: the stage-2 module's keys and the demo's flags.
_LEGACY_KEYS = ("judge_type", "judge_kwargs", "judge_compose")


@dataclass
class ComposeSpec:
    """VLIC's noise control around a base judge, applied in the paper's order: weighted ensemble,
    then symmetrisation, then self-ensemble, then unanimity.

    Args:
        order_type: "as-given" or "symmetrize" (judge both orders, cancelling position bias).
        combine_type: how two orders combine, "sum" (VLIC) or "agree".
        votes: self-ensemble of this many votes, majority wins, ties abstain.
        majority_type: "plurality" or "strict" (a choice needs more than half of all votes).
        unanimous_with: other judge types that must agree, else abstain (VLIC: lpips).
        weighted: judge type -> weight of a weighted ensemble with the base judge.
        base_weight: the base judge's weight in that ensemble.
        weighted_type: "choice" (scale-free) or "score" (only when the scales match).
    """

    order_type: OrderType = "as-given"
    combine_type: CombineOrderType = "sum"
    votes: int = 1
    majority_type: MajorityType = "plurality"
    unanimous_with: list[str] = field(default_factory=list)
    weighted: dict[str, float] = field(default_factory=dict)
    base_weight: float = 1.0
    weighted_type: WeightedType = "choice"

    def __post_init__(self) -> None:
        check_option("order_type", self.order_type, OrderType)
        check_option("combine_type", self.combine_type, CombineOrderType)
        check_option("majority_type", self.majority_type, MajorityType)
        check_option("weighted_type", self.weighted_type, WeightedType)
        if self.votes < 1:
            raise ConfigError(f"votes must be >= 1, got {self.votes}")

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what a config has to say)."""
        default = ComposeSpec()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def judge_kwargs(
    judge_type: str, pairs: list[tuple[str, Any]], base: bool = True
) -> dict[str, Any]:
    """Keywords for one judge: ``TYPE.KEY=VALUE`` goes to that judge type only; a plain
    ``KEY=VALUE`` goes to the main judge(s) (``base``), not to --unanimous-with/--weighted ones.

    Args:
        judge_type: the judge the keywords are for.
        pairs: ``(key, value)`` pairs from ``--judge-option``.
        base: whether ``judge_type`` is a main judge (plain keys apply to it).
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key.startswith(judge_type + "."):
            out[key[len(judge_type) + 1 :]] = value
        elif "." not in key and base:
            out[key] = value
    return out


def _check_prefixes(pairs: list[tuple[str, Any]], judge_types: list[str]) -> None:
    """Reject ``TYPE.KEY=VALUE`` pairs whose TYPE is none of the run's judges (a likely typo)."""
    for key, _ in pairs:
        if "." in key and not any(key.startswith(t + ".") for t in judge_types):
            raise ConfigError(
                f"--judge-option {key}=...: {key.rpartition('.')[0]!r} is not one of the judges "
                f"of this run ({', '.join(judge_types)})"
            )


def _weight(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected JUDGE_TYPE=WEIGHT, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected JUDGE_TYPE=WEIGHT, got {text!r}") from None


# One flag per field: (flag, hidden aliases, argparse keywords, help). ``dest`` is the field name.
_BACKEND_FLAGS: dict[str, tuple[str, tuple[str, ...], dict[str, Any], str]] = {
    "backend": (
        "--judge-type",
        ("--judge",),
        {},
        f"registered judge name (default {DEFAULT_JUDGE}: offline; psnr, ms_ssim, lpips, dists, "
        "openai, hf, student, ...) or package.module:factory",
    ),
    "model": ("--judge-model", (), {}, "VLM name at the endpoint, Hub id or folder"),
    "prompt_type": ("--judge-prompt-type", (), {}, "prompt template (vlic-score, ab-choice, ...)"),
    "temperature": ("--judge-temperature", (), {"type": float}, "sampling temperature"),
    "max_tokens": ("--judge-max-tokens", (), {"type": int}, "answer length limit"),
    "options": (
        "--judge-option",
        ("--judge-arg",),
        {"type": key_value, "action": "append", "metavar": "[TYPE.]KEY=VALUE"},
        "keyword of the judge factory (repeatable), e.g. base_url=..., margin=0.5; prefix "
        "TYPE. to address one judge (lpips.net_type=vgg)",
    ),
    "cache": (
        "--cache",
        (),
        {"metavar": "PATH"},
        "persistent judgment cache (SQLite): answers are reused across runs",
    ),
}
_COMPOSE_FLAGS: dict[str, tuple[dict[str, Any], str]] = {
    "order_type": (
        {"choices": ("as-given", "symmetrize")},
        "symmetrize: judge (A,B) and (B,A) and combine (cancels position bias)",
    ),
    "combine_type": ({"choices": ("sum", "agree")}, "how the two orders combine (default sum)"),
    "votes": ({"type": int}, "self-ensemble: majority over N votes (ties abstain)"),
    "majority_type": ({"choices": ("plurality", "strict")}, "default plurality"),
    "unanimous_with": (
        {"action": "append", "metavar": "JUDGE_TYPE"},
        "also ask this judge; keep the label only if all agree (e.g. lpips)",
    ),
    "weighted": (
        {"type": _weight, "action": "append", "metavar": "JUDGE_TYPE=WEIGHT"},
        "weighted ensemble of the base judge (weight --base-weight) and these judges",
    ),
    "base_weight": ({"type": float}, "the base judge's weight (default 1)"),
    "weighted_type": ({"choices": ("choice", "score")}, "default choice"),
}
# Hidden flags that set something else: (flag, dest, argparse keywords).
_ALIASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--symmetrize", "order_type", {"action": "store_const", "const": "symmetrize"}),
    ("--judge-base-url", "judge_base_url", {}),
    ("--judge-api-key-env", "judge_api_key_env", {}),
)


@dataclass
class JudgeSpec:
    """Everything that defines a judge: backend, model, prompt, sampling, composition, cache.

    Args:
        backend: registered judge name or ``"module:factory"`` (default ``"ssimulacra2"``).
        model: VLM name at the endpoint / Hub id or folder (VLM backends only).
        prompt_type: prompt template, e.g. ``"vlic-score"`` (default: the backend's).
        temperature: sampling temperature (default: the backend's).
        max_tokens: answer length limit (default: the backend's).
        options: other keywords of the backend factory (``base_url``, ``margin``, ...).
        compose: VLIC's noise control around the backend (default: none).
        extra_options: judge type -> keywords for the judges named in ``compose.unanimous_with``
            and ``compose.weighted``.
        cache: persistent SQLite judgment cache for judges with a cache identity.
    """

    backend: str = DEFAULT_JUDGE
    model: str | None = None
    prompt_type: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    compose: ComposeSpec = field(default_factory=ComposeSpec)
    extra_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.compose, Mapping):
            self.compose = ComposeSpec(**self.compose)
        # Typed backend keywords given inside ``options`` become the typed fields.
        options = dict(self.options)
        for name in _BACKEND_FIELDS:
            if name in options:
                if getattr(self, name) is not None:
                    raise ConfigError(f"judge {name!r} given twice (as a field and in options)")
                setattr(self, name, options.pop(name))
        self.options = options
        if self.cache is not None:
            self.cache = str(self.cache)

    # ------------------------------------------------------------------ from YAML / dicts

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> JudgeSpec:
        """From a config dict: the field names, or the stage-2 module's older spelling
        ``judge_type`` / ``judge_kwargs`` / ``judge_compose`` (kept for one release).

        Args:
            config: the ``judge:`` block, or a dict with the older keys.
        """
        config = dict(config)
        legacy = {}
        if config.get("judge_type") is not None:
            legacy["backend"] = config["judge_type"]
        if config.get("judge_kwargs"):
            legacy["options"] = dict(config["judge_kwargs"])
        if config.get("judge_compose"):
            legacy["compose"] = dict(config["judge_compose"])
        for key in _LEGACY_KEYS:
            config.pop(key, None)
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
    def from_module_args(cls, init_args: Mapping[str, Any]) -> JudgeSpec:
        """The judge of a stage-2 module's arguments: its ``judge:`` block, or the older
        ``judge_type`` / ``judge_kwargs`` / ``judge_compose`` keys (not both).

        Args:
            init_args: the module's keyword arguments (a YAML ``model.init_args`` block).
        """
        block = init_args.get("judge")
        legacy = {k: init_args[k] for k in _LEGACY_KEYS if init_args.get(k) is not None}
        if block is None:
            return cls.from_config(legacy)
        if isinstance(block, JudgeSpec):
            spec = block
        elif isinstance(block, Mapping):
            spec = cls.from_config(block)
        else:
            raise ConfigError(f"judge: expected a mapping of JudgeSpec fields, got {block!r}")
        # Both spellings at once are accepted only when they agree: a resumed run merges the
        # checkpoint's saved ``judge:`` into a YAML that may use the older keys.
        if legacy and cls.from_config(legacy) != spec:
            raise ConfigError(
                f"give the judge once: judge: or {', '.join(legacy)}, not both (they differ)"
            )
        return spec

    def to_config(self) -> dict[str, Any]:
        """The spec as a plain dict (YAML, hyper-parameters); ``from_config`` reads it back."""
        return asdict(self)

    # ------------------------------------------------------------------ from the command line

    @staticmethod
    def add_arguments(
        parser: argparse.ArgumentParser, multi: bool = False, compose: bool = True
    ) -> None:
        """The judge flags of every command that takes a judge, one per field of the spec.

        Every flag defaults to None (unset), so :meth:`from_args` can lay the command line over
        a spec from a config. Older spellings (``--judge-arg``, ``--symmetrize``, ``--judge``,
        ``--judge-base-url``, ``--judge-api-key-env``) are accepted without being shown.

        Args:
            parser: the command's parser.
            multi: ``--judge-type`` may be repeated (the audit compares several judges).
            compose: add the composition flags (off where the command composes by itself).
        """
        group = parser.add_argument_group("judge")
        for name, (flag, hidden, kwargs, text) in _BACKEND_FLAGS.items():
            kwargs = dict(kwargs)
            if name == "backend" and multi:
                kwargs["action"] = "append"
                text = "judge to run (repeat to compare several); " + text
            group.add_argument(flag, dest=_dest(name), default=None, help=text, **kwargs)
            for alias in hidden:
                group.add_argument(alias, dest=_dest(name), help=argparse.SUPPRESS, **kwargs)
        if compose:
            for name, (kwargs, text) in _COMPOSE_FLAGS.items():
                flag = "--" + name.replace("_", "-")
                group.add_argument(flag, dest=name, default=None, help=text, **kwargs)
        for flag, dest, kwargs in _ALIASES:
            if compose or dest != "order_type":
                group.add_argument(flag, dest=dest, help=argparse.SUPPRESS, **kwargs)

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        backend: str | None = None,
        base: JudgeSpec | None = None,
    ) -> JudgeSpec:
        """The spec the flags of :meth:`add_arguments` describe, laid over ``base``.

        Args:
            args: the parsed command line.
            backend: overrides ``--judge-type`` (the audit builds one spec per judge type).
            base: the spec unset flags keep (default: :class:`JudgeSpec`'s defaults).
        """
        base = base or cls()
        given = getattr(args, "judge_type", None)
        types = list(given) if isinstance(given, list) else [given] if given else []
        backend = backend or (types[0] if types else base.backend)
        same = backend == base.backend
        pairs = list(getattr(args, "judge_option", None) or [])
        compose = {
            n: getattr(args, n) for n in _COMPOSE_FLAGS if getattr(args, n, None) is not None
        }
        if "weighted" in compose:
            compose["weighted"] = dict(compose["weighted"])
        compose_spec = replace(base.compose, **compose)
        extra = [*compose_spec.unanimous_with, *compose_spec.weighted]
        _check_prefixes(pairs, [backend, *extra, *types])
        options = {**(base.options if same else {}), **judge_kwargs(backend, pairs)}
        for dest, key in (("judge_base_url", "base_url"), ("judge_api_key_env", "api_key_env")):
            if getattr(args, dest, None) is not None:
                options[key] = getattr(args, dest)
        typed = {n: getattr(base, n) for n in _BACKEND_FIELDS} if same else {}
        for name in _BACKEND_FIELDS:
            if name in options:  # --judge-option model=... replaces the config's model
                typed[name] = options.pop(name)
            if getattr(args, _dest(name), None) is not None:
                typed[name] = getattr(args, _dest(name))
        return replace(
            base,
            backend=backend,
            **{n: typed.get(n) for n in _BACKEND_FIELDS},
            options=options,
            compose=compose_spec,
            extra_options={
                t: {**base.extra_options.get(t, {}), **judge_kwargs(t, pairs, base=False)}
                for t in extra
            },
            cache=getattr(args, "cache", None) or base.cache,
        )

    # ------------------------------------------------------------------ building

    def backend_kwargs(self) -> dict[str, Any]:
        """Keywords of the backend factory: ``options`` plus the typed fields that are set."""
        kwargs = dict(self.options)
        for name in _BACKEND_FIELDS:
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def build_base(self) -> Judge:
        """The backend judge alone (cached when ``cache`` is set), without composition."""
        from compressai_vlic.judges.factory import make_judge

        return make_judge(self.backend, cache_path=self.cache, **self.backend_kwargs())

    def make_extra(self, judge_type: str) -> Judge:
        """A judge named in ``compose.unanimous_with`` / ``compose.weighted``, with its
        ``extra_options`` (cached like the backend).

        Args:
            judge_type: the judge's registered name.
        """
        from compressai_vlic.judges.factory import make_judge

        return make_judge(
            judge_type, cache_path=self.cache, **self.extra_options.get(judge_type, {})
        )

    def build(self) -> Judge:
        """The judge: the backend, then weighted ensemble, symmetrisation, votes, unanimity."""
        from compressai_vlic.judges.compose import compose

        return compose(self.build_base(), self.compose, self.make_extra)

    def judge_types(self) -> list[str]:
        """Every judge type this spec builds (the backend first)."""
        return [self.backend, *self.compose.unanimous_with, *self.compose.weighted]

    def with_backend(self, backend: str, options: Mapping[str, Any] | None = None) -> JudgeSpec:
        """The same composition around another backend.

        Args:
            backend: the other backend.
            options: its factory keywords.
        """
        return replace(
            self,
            backend=backend,
            options=dict(options or {}),
            **{n: None for n in _BACKEND_FIELDS},
        )


def _dest(name: str) -> str:
    """The argparse ``dest`` of a backend field (prefixed, so no command's own flag clashes)."""
    return {"backend": "judge_type", "options": "judge_option", "cache": "cache"}.get(
        name, "judge_" + name
    )
