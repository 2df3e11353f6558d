"""Run several codecs over an image set at several rate points and measure them side by side.

Per (codec, rate point, image) the runner stores one row (real bytes, bpp, every full-reference
metric) and the reconstruction PNG in a cache keyed by the codec's identity, the rate point and
the image's pixels: adding a codec or a metric later recomputes only what is missing. Then it
adds distribution metrics per rate point (FID/KID/FD-DINO over HiFiC patches), the judge win-rate
against a reference codec at the closest bpp, and writes CompressAI-format JSON per codec.
A metric that cannot run here (missing weights) is dropped with one notice, never reported as 0.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressai_vlic.atomic import atomic_path, atomic_write_text
from compressai_vlic.errors import ConfigError, JudgeError, MetricUnavailableError, VLICError
from compressai_vlic.evaluation.codecs import Codec, CodedImage
from compressai_vlic.evaluation.options import DEFAULT_DISTRIBUTION_METRICS, DEFAULT_METRICS
from compressai_vlic.image_io import load_image, quantize_uint8, save_png
from compressai_vlic.judges.spec import JudgeSpec

# CompressAI's eval_model / plot name these two this way.
JSON_NAMES = {"psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb"}


@dataclass(frozen=True)
class ImageRow:
    """One image through one codec at one rate point."""

    codec: str
    rate_point: str
    image: str
    height: int
    width: int
    num_bytes: int
    bpp: float
    setting: str
    encode_s: float
    decode_s: float
    target_bpp: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgeScore:
    """Judge decisions of a codec point against the reference codec at the closest bpp."""

    reference: str  # "codec@rate_point"
    reference_bpp: float
    wins: int
    losses: int
    abstains: int
    failed: int = 0  # judge calls that got no answer: neither a win nor an abstention

    @property
    def win_rate(self) -> float | None:
        decided = self.wins + self.losses
        return self.wins / decided if decided else None


@dataclass(frozen=True)
class CurvePoint:
    """Averages over the image set for one codec at one rate point."""

    codec: str
    rate_point: str
    bpp: float
    num_images: int
    metrics: dict[str, float]
    distribution: dict[str, float] = field(default_factory=dict)
    judge: JudgeScore | None = None


@dataclass
class CompareSettings:
    """What to measure and how.

    ``judge`` is the win-rate's judge (None: no win-rate); ``judge_type`` / ``judge_options``
    are its older spelling, kept for one release.
    """

    metrics: Sequence[str] = DEFAULT_METRICS
    distribution_metrics: Sequence[str] = DEFAULT_DISTRIBUTION_METRICS
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    patch_size: int = 256
    judge: JudgeSpec | None = None
    judge_type: str | None = None
    judge_options: dict[str, Any] = field(default_factory=dict)
    reference_codec: str | None = None
    device: str = "cpu"
    crop: int | None = None
    progress: bool = True
    bpp_tolerance: float = 0.15
    # image file name -> further names it is known by (a folder codec matches any of them)
    image_names: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.judge is None and self.judge_type:
            self.judge = JudgeSpec(backend=self.judge_type, options=dict(self.judge_options))


@dataclass
class ComparisonResult:
    """Everything a run produced, plus what was skipped and why."""

    rows: list[ImageRow]
    points: list[CurvePoint]
    codecs: dict[str, Codec]
    skipped: dict[str, str]
    notices: list[str]
    output_dir: Path
    metric_names: list[str]
    distribution_names: list[str]
    higher_is_better: dict[str, bool]
    reconstructions: dict[tuple[str, str, str], Path]  # (codec, rate point, image) -> PNG
    originals: dict[str, torch.Tensor]  # image name -> (3, H, W) as compared (after cropping)
    failed_images: dict[str, str] = field(default_factory=dict)  # image -> why it was left out

    def curve(self, codec: str) -> list[CurvePoint]:
        """The codec's points sorted by bpp."""
        return sorted((p for p in self.points if p.codec == codec), key=lambda p: p.bpp)

    def value(self, point: CurvePoint, name: str) -> float | None:
        if name == "bpp":
            return point.bpp
        if name in point.metrics:
            return point.metrics[name]
        if name in point.distribution:
            return point.distribution[name]
        if name == "judge_win_rate" and point.judge is not None:
            return point.judge.win_rate
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _centre_crop(image: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return image
    h, w = image.shape[-2:]
    if h < size or w < size:
        return image
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


@dataclass(frozen=True)
class _Source:
    name: str
    key: str  # stem + pixel digest
    tensor: torch.Tensor
    names: tuple[str, ...] = ()  # what reconstructions on disk may be called (file name first)


def _load_sources(
    paths: Sequence[Path],
    crop: int | None,
    notify: Callable[[str], None],
    failed: dict[str, str] | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> list[_Source]:
    """Read the images; one that cannot be read goes into ``failed`` (name -> reason) when given,
    and the others are still compared."""
    sources = []
    for path in paths:
        try:
            loaded = load_image(path)
        except VLICError as exc:
            if failed is None:
                raise
            failed[path.name] = str(exc)
            notify(f"skipped {exc}")
            continue
        for note in loaded.conversions:
            notify(f"{path.name}: {note}")
        tensor = _centre_crop(loaded.tensor, crop)
        pixels = quantize_uint8(tensor).numpy().tobytes()
        key = f"{_slug(path.stem)}-{hashlib.sha256(pixels).hexdigest()[:12]}"
        names = (path.name, *(aliases or {}).get(path.name, []))
        sources.append(_Source(path.name, key, tensor, names))
    if not sources:
        shown = "; ".join(list((failed or {}).values())[:3])
        raise ConfigError("no images to compare" + (f" ({shown})" if shown else ""))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"image file names must be unique (rows are keyed by name): {names}")
    return sources


class ComparisonRunner:
    """Runs the comparison; see :func:`run_comparison`."""

    def __init__(
        self,
        codecs: Sequence[Codec],
        output_dir: str | Path,
        settings: CompareSettings | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or CompareSettings()
        names = [c.name for c in codecs]
        if len(set(names)) != len(names):
            raise ConfigError(f"codec names must be unique, got {names}")
        if self.settings.reference_codec and self.settings.reference_codec not in names:
            raise ConfigError(
                f"reference codec {self.settings.reference_codec!r} is not among {names}"
            )
        self.codecs = {c.name: c for c in codecs}
        self.output_dir = Path(output_dir)
        self.cache_dir = self.output_dir / "cache"
        self.notices: list[str] = []
        self._notify_fn = notify or (lambda text: print(f"notice: {text}", file=sys.stderr))
        self.skipped: dict[str, str] = {}
        self.higher_is_better: dict[str, bool] = {"bpp": False, "judge_win_rate": True}

    def _notify(self, text: str) -> None:
        self.notices.append(text)
        self._notify_fn(text)

    # ------------------------------------------------------------------ metrics
    def _build_metrics(self) -> dict[str, Any]:
        from compressai_vlic.metrics import get_metric

        built = {}
        for name in self.settings.metrics:
            try:
                metric = get_metric(
                    name, self.settings.device, **self.settings.metric_options.get(name, {})
                )
            except MetricUnavailableError as exc:
                self.skipped[name] = str(exc)
                self._notify(f"metric {name} skipped: {exc}")
                continue
            built[metric.name] = metric
            self.higher_is_better[metric.name] = metric.higher_is_better
        return built

    def _build_distribution(self) -> dict[str, Any]:
        from compressai_vlic.metrics import get_distribution_metric

        built = {}
        for name in self.settings.distribution_metrics:
            options = {
                "patch_size": self.settings.patch_size,
                **self.settings.metric_options.get(name, {}),
            }
            try:
                metric = get_distribution_metric(name, self.settings.device, **options)
            except MetricUnavailableError as exc:
                self.skipped[name] = str(exc)
                self._notify(f"metric {name} skipped: {exc}")
                continue
            built[metric.name] = metric
            self.higher_is_better[metric.name] = False
        return built

    # ------------------------------------------------------------------ cache
    def _entry(self, codec: Codec, rate_point: str, source: _Source) -> Path:
        folder = (
            self.cache_dir / f"{_slug(codec.name)}-{_digest(codec.cache_key)}" / _slug(rate_point)
        )
        return folder / source.key

    def _load_row(self, entry: Path) -> ImageRow | None:
        meta, png = entry.with_suffix(".json"), entry.with_suffix(".png")
        if not (meta.is_file() and png.is_file()):
            return None
        try:
            return ImageRow(**json.loads(meta.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None  # an interrupted write: recompute

    def _save_row(self, entry: Path, row: ImageRow) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry.with_suffix(".json"), json.dumps(asdict(row), indent=1))

    # ------------------------------------------------------------------ run
    def run(self, images: Sequence[str | Path]) -> ComparisonResult:
        paths = [Path(p) for p in images]
        failed_images: dict[str, str] = {}
        sources = _load_sources(
            paths, self.settings.crop, self._notify, failed_images, self.settings.image_names
        )
        for codec in self.codecs.values():
            unmatched = getattr(codec, "unmatched", None)
            if callable(unmatched):
                for point, extra in unmatched([s.names for s in sources]).items():
                    self._notify(
                        f"{codec.name}@{point}: {len(extra)} reconstruction(s) of images not in "
                        f"this set left unused (e.g. {', '.join(extra[:3])})"
                    )
        metrics = self._build_metrics()
        total = len(sources) * sum(len(c.rate_points) for c in self.codecs.values())
        from tqdm.auto import tqdm

        progress = tqdm(
            total=total,
            unit="img",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not self.settings.progress,
        )
        rows: list[ImageRow] = []
        recon: dict[tuple[str, str, str], Path] = {}
        computed = 0
        good: list[_Source] = []
        try:
            for source in sources:
                # an image counts only when every codec and metric succeeded on it, so every
                # curve averages over the same images
                mine: list[ImageRow] = []
                paths_of: dict[tuple[str, str, str], Path] = {}
                try:
                    for codec in self.codecs.values():
                        for rate_point in codec.rate_points:
                            where = f"{codec.name}@{rate_point}"
                            row, fresh = self._row(codec, rate_point, source, metrics)
                            computed += fresh
                            mine.append(row)
                            paths_of[(codec.name, rate_point, source.name)] = self._entry(
                                codec, rate_point, source
                            ).with_suffix(".png")
                            progress.set_description(f"{where} {source.name}", refresh=False)
                            progress.update()
                except (JudgeError, MetricUnavailableError):
                    raise
                except (VLICError, ValueError, RuntimeError, OSError, AssertionError) as exc:
                    text = (
                        str(exc) if isinstance(exc, VLICError) else f"{type(exc).__name__}: {exc}"
                    )
                    failed_images[source.name] = f"{where}: {text}"
                    self._notify(f"skipped {source.name}: {where}: {text}")
                    continue
                rows += mine
                recon.update(paths_of)
                good.append(source)
        finally:
            progress.close()
        if not good:
            shown = "; ".join(f"{k}: {v}" for k, v in list(failed_images.items())[:3])
            raise ConfigError(f"no image could be compared ({shown})")
        sources = good
        self._notify(f"{computed} of {total} codec runs computed, {total - computed} from cache")
        self._check_rates(rows)
        points = self._aggregate(rows, list(metrics))
        distribution = self._build_distribution()
        if distribution:
            points = self._add_distribution(points, sources, distribution)
        if self.settings.judge is not None:
            points = self._add_judge(points, sources)
        return ComparisonResult(
            rows=rows,
            points=points,
            codecs=self.codecs,
            skipped=self.skipped,
            notices=self.notices,
            output_dir=self.output_dir,
            metric_names=list(metrics),
            distribution_names=[
                n for n in distribution if any(n in p.distribution for p in points)
            ],
            higher_is_better=self.higher_is_better,
            reconstructions=recon,
            originals={s.name: s.tensor for s in sources},
            failed_images=failed_images,
        )

    def _row(
        self, codec: Codec, rate_point: str, source: _Source, metrics: dict[str, Any]
    ) -> tuple[ImageRow, bool]:
        entry = self._entry(codec, rate_point, source)
        row = self._load_row(entry)
        fresh = row is None
        if row is None:
            code_named = getattr(codec, "code_named", None)
            coded: CodedImage = (
                code_named(source.tensor, rate_point, source.names)
                if callable(code_named)
                else codec.code(source.tensor, rate_point)
            )
            h, w = source.tensor.shape[-2:]
            if coded.reconstruction.shape != source.tensor.shape:
                raise ConfigError(
                    f"{codec.name}@{rate_point} returned {tuple(coded.reconstruction.shape)} "
                    f"for a {tuple(source.tensor.shape)} image"
                )
            save_png(coded.reconstruction, entry.with_suffix(".png"))
            row = ImageRow(
                codec=codec.name,
                rate_point=rate_point,
                image=source.name,
                height=int(h),
                width=int(w),
                num_bytes=coded.num_bytes,
                bpp=coded.bpp,
                setting=coded.setting,
                encode_s=coded.encode_s,
                decode_s=coded.decode_s,
                target_bpp=coded.target_bpp,
            )
        missing = [name for name in metrics if name not in row.metrics]
        if missing:
            rec = load_image(entry.with_suffix(".png")).tensor
            values = dict(row.metrics)
            for name in missing:
                value = float(metrics[name](source.tensor[None], rec[None])[0])
                values[name] = value
            row = ImageRow(**{**asdict(row), "metrics": values})
            self._save_row(entry, row)
        elif fresh:
            self._save_row(entry, row)
        return row, fresh

    def _check_rates(self, rows: list[ImageRow]) -> None:
        tol = self.settings.bpp_tolerance
        for row in rows:
            if row.target_bpp is not None and abs(row.bpp - row.target_bpp) > tol * row.target_bpp:
                self._notify(
                    f"{row.codec}@{row.rate_point} on {row.image}: {row.bpp:.3f} bpp "
                    f"({row.setting}) is as close as this codec gets to {row.target_bpp:g} bpp"
                )

    def _aggregate(self, rows: list[ImageRow], metric_names: list[str]) -> list[CurvePoint]:
        points = []
        for codec in self.codecs.values():
            for rate_point in codec.rate_points:
                sel = [r for r in rows if r.codec == codec.name and r.rate_point == rate_point]
                means = {}
                for name in metric_names:
                    values = [r.metrics[name] for r in sel if name in r.metrics]
                    finite = [v for v in values if math.isfinite(v)]
                    if len(finite) < len(values):
                        self._notify(
                            f"{codec.name}@{rate_point}: {len(values) - len(finite)} image(s) "
                            f"with infinite {name} (lossless) left out of the mean"
                        )
                    if finite:
                        means[name] = float(np.mean(finite))
                points.append(
                    CurvePoint(
                        codec=codec.name,
                        rate_point=rate_point,
                        bpp=float(np.mean([r.bpp for r in sel])),
                        num_images=len(sel),
                        metrics=means,
                    )
                )
        return points

    def _add_distribution(
        self,
        points: list[CurvePoint],
        sources: list[_Source],
        metrics: dict[str, Any],
    ) -> list[CurvePoint]:
        out = []
        image_ids = _digest(",".join(s.key for s in sources))
        failed: set[str] = set()
        for point in points:
            codec = self.codecs[point.codec]
            values = dict(point.distribution)
            for name, metric in metrics.items():
                if name in failed:
                    continue
                options = json.dumps(
                    self.settings.metric_options.get(name, {}), sort_keys=True, default=str
                )
                cache = (
                    self._entry(codec, point.rate_point, sources[0]).parent
                    / f"_{name}-p{self.settings.patch_size}-{image_ids}-{_digest(options, 8)}.json"
                )
                if cache.is_file():
                    values[name] = float(json.loads(cache.read_text())["value"])
                    continue
                metric.reset()
                for source in sources:
                    rec = load_image(
                        self._entry(codec, point.rate_point, source).with_suffix(".png")
                    )
                    metric.update(source.tensor[None], rec.tensor[None])
                try:
                    value = metric.compute()
                except ConfigError as exc:
                    failed.add(name)
                    self.skipped[name] = str(exc)
                    self._notify(f"metric {name} skipped: {exc}")
                    continue
                cache.write_text(json.dumps({"value": value, "samples": metric.num_samples}))
                values[name] = value
            out.append(CurvePoint(**{**_shallow(point), "distribution": values}))
        return out

    def _add_judge(self, points: list[CurvePoint], sources: list[_Source]) -> list[CurvePoint]:
        from compressai_vlic.judges.types import Choice, JudgeRequest

        reference = self.settings.reference_codec
        if not reference:
            raise ConfigError("a judge win-rate needs a reference codec")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # VLM judges are cached: never pay twice for the same question.
        spec = self.settings.judge
        assert spec is not None
        judge = replace(spec, cache=spec.cache or str(self.cache_dir / "judgments.sqlite")).build()
        ref_points = [p for p in points if p.codec == reference]
        out = []
        for point in points:
            if point.codec == reference:
                out.append(point)
                continue
            closest = min(ref_points, key=lambda p: abs(math.log(p.bpp) - math.log(point.bpp)))
            requests = []
            for source in sources:
                a = load_image(
                    self._entry(self.codecs[point.codec], point.rate_point, source).with_suffix(
                        ".png"
                    )
                )
                b = load_image(
                    self._entry(self.codecs[reference], closest.rate_point, source).with_suffix(
                        ".png"
                    )
                )
                requests.append(
                    JudgeRequest(
                        source.tensor,
                        a.tensor,
                        b.tensor,
                        pair_id=f"{point.codec}@{point.rate_point}/{source.key}",
                    )
                )
            judgments = judge.compare_batch(requests)
            wins = sum(j.choice is Choice.A for j in judgments)
            losses = sum(j.choice is Choice.B for j in judgments)
            failed = sum(j.failed for j in judgments)
            if failed:
                self._notify(
                    f"judge calls failed for {failed} of {len(judgments)} pairs of "
                    f"{point.codec}@{point.rate_point} (not counted; rerun to ask again)"
                )
            score = JudgeScore(
                reference=f"{reference}@{closest.rate_point}",
                reference_bpp=closest.bpp,
                wins=wins,
                losses=losses,
                abstains=len(judgments) - wins - losses - failed,
                failed=failed,
            )
            if score.win_rate is None:
                self._notify(f"judge abstained on every pair for {point.codec}@{point.rate_point}")
            out.append(CurvePoint(**{**_shallow(point), "judge": score}))
        close = getattr(judge, "close", None)
        if callable(close):
            close()
        return out


def _shallow(point: CurvePoint) -> dict[str, Any]:
    return {f: getattr(point, f) for f in point.__dataclass_fields__}


def run_comparison(
    images: Sequence[str | Path],
    codecs: Sequence[Codec],
    output_dir: str | Path,
    settings: CompareSettings | None = None,
    notify: Callable[[str], None] | None = None,
) -> ComparisonResult:
    """Run codecs over images and write rows, CompressAI JSON and tables into ``output_dir``."""
    runner = ComparisonRunner(codecs, output_dir, settings, notify)
    result = runner.run(images)
    write_outputs(result, runner.settings.reference_codec)
    return result


# ---------------------------------------------------------------------- outputs
def compressai_json(result: ComparisonResult, codec: str) -> dict[str, Any]:
    """CompressAI's results format ({"name", "description", "results"}), sorted by bpp."""
    curve = result.curve(codec)
    names = ["bpp", *result.metric_names, *result.distribution_names]
    if any(p.judge is not None and p.judge.win_rate is not None for p in curve):
        names.append("judge_win_rate")
    results: dict[str, list[float]] = {}
    for name in names:
        values = [result.value(p, name) for p in curve]
        if all(v is not None for v in values):  # never a partial or NaN-padded list
            results[JSON_NAMES.get(name, name)] = [float(v) for v in values]  # type: ignore[arg-type]
    return {
        "name": codec,
        "description": result.codecs[codec].description,
        "results": results,
    }


def format_table(result: ComparisonResult, digits: int = 4) -> str:
    """A markdown table of the curve points (metrics that could not run are absent)."""
    columns = ["bpp", *result.metric_names, *result.distribution_names]
    has_judge = any(p.judge is not None for p in result.points)
    header = ["codec", "rate point", *columns]
    if has_judge:
        header.append("judge win-rate vs reference")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for codec in result.codecs:
        for point in result.curve(codec):
            cells = [codec, point.rate_point]
            for name in columns:
                value = result.value(point, name)
                cells.append("–" if value is None else f"{value:.{digits}g}")
            if has_judge:
                j = point.judge
                if j is None:
                    cells.append("(reference)" if codec == _reference(result) else "–")
                else:
                    rate = "–" if j.win_rate is None else f"{j.win_rate:.2f}"
                    cells.append(
                        f"{rate} ({j.wins}-{j.losses}, {j.abstains} abstain) vs {j.reference} "
                        f"({j.reference_bpp:.3g} bpp)"
                    )
            lines.append("| " + " | ".join(cells) + " |")
    arrows = ", ".join(
        f"{n} {'↑' if result.higher_is_better.get(n, True) else '↓'}" for n in columns[1:]
    )
    return "\n".join(lines) + f"\n\nBetter: {arrows}.\n"


def bd_table(result: ComparisonResult, reference: str, method: str = "pchip") -> str:
    """Markdown table of BD-rate (%) of every codec vs ``reference``, per metric.

    Cells say why a delta is missing (too few points, no overlap) and flag small overlaps.
    """
    import warnings

    from compressai_vlic.evaluation.bd import BDOverlapWarning, bd_rate

    if reference not in result.codecs:
        raise ConfigError(f"reference codec {reference!r} is not in this comparison")
    names = [*result.metric_names, *result.distribution_names]
    lines = [
        f"BD-rate vs {reference} ({method}; negative = fewer bits at equal quality)",
        "",
        "| codec | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    anchor = result.curve(reference)
    for codec in result.codecs:
        if codec == reference:
            continue
        test = result.curve(codec)
        cells = []
        for name in names:
            ra = [(p.bpp, result.value(p, name)) for p in anchor]
            rt = [(p.bpp, result.value(p, name)) for p in test]
            if any(v is None for _, v in ra + rt):
                cells.append("–")
                continue
            if min(len(ra), len(rt)) < 2:
                cells.append("n/a (one rate point)")
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", BDOverlapWarning)
                    res = bd_rate(*zip(*ra), *zip(*rt), method=method)
                flag = " (small overlap)" if caught else ""
                cells.append(f"{res.value:+.1f}%{flag}")
            except ConfigError as exc:
                cells.append("n/a (no overlap)" if "overlap" in str(exc) else f"n/a ({exc})")
        lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reference(result: ComparisonResult) -> str | None:
    for p in result.points:
        if p.judge is not None:
            return p.judge.reference.split("@")[0]
    return None


def write_outputs(result: ComparisonResult, reference: str | None = None) -> dict[str, Path]:
    """rows.jsonl/rows.csv, json/<codec>.json (CompressAI format), table.md, bd.md, skipped.json."""
    out = result.output_dir
    (out / "json").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    atomic_write_text(
        out / "rows.jsonl", "".join(json.dumps(asdict(row)) + "\n" for row in result.rows)
    )
    paths["rows_jsonl"] = out / "rows.jsonl"
    metric_names = result.metric_names
    with atomic_path(out / "rows.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        base = ["codec", "rate_point", "image", "height", "width", "num_bytes", "bpp", "setting"]
        writer.writerow([*base, *metric_names, "encode_s", "decode_s"])
        for row in result.rows:
            writer.writerow(
                [getattr(row, k) for k in base]
                + [row.metrics.get(m, "") for m in metric_names]
                + [f"{row.encode_s:.4f}", f"{row.decode_s:.4f}"]
            )
    paths["rows_csv"] = out / "rows.csv"
    for codec in result.codecs:
        path = out / "json" / f"{_slug(codec)}.json"
        atomic_write_text(path, json.dumps(compressai_json(result, codec), indent=2))
        paths[f"json:{codec}"] = path
    atomic_write_text(out / "table.md", format_table(result))
    paths["table"] = out / "table.md"
    if reference is not None:
        atomic_write_text(out / "bd.md", bd_table(result, reference))
        paths["bd"] = out / "bd.md"
    skipped = {**result.skipped, **{f"image:{k}": v for k, v in result.failed_images.items()}}
    atomic_write_text(out / "skipped.json", json.dumps(skipped, indent=2))
    return paths
