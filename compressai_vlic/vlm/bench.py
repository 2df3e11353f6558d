"""The rate-accuracy benchmark: how well a VLM understands images after each codec.

1. Every task image is read once (the package's reader and pixel limit) and stored as an 8-bit
   PNG named by its pixel digest, so an image shared by many questions (POPE) is coded once.
2. The codecs code the images at their rate points exactly as ``compressai-vlic compare`` does
   (:func:`~compressai_vlic.evaluation.compare.run_comparison`: real bitstreams, real bpp,
   matched rates for JPEG/WebP/AVIF, reconstructions cached by codec identity and pixels).
3. The VLM answers every question on the original image ("uncompressed", the ceiling) and on
   each reconstruction. Each answer is appended to ``answers.jsonl`` as soon as it arrives, so a
   killed run resumes where it stopped; answers that failed (no reply) are not written and are
   asked again on the next run.
4. Scores per (task, codec, rate point) with the real mean bpp and the drop from the ceiling go
   to ``summary.json`` / ``summary.csv`` (POPE, MME and OCRBench scored as VLMEvalKit scores
   them, see :mod:`compressai_vlic.vlm.scoring`); the BD-metric of every codec against the
   uncompressed level (:func:`bd_drop_rows`, the paper's Tables 2 and 16) and the Bjontegaard
   delta of the task score at equal rate of every codec against a reference codec to
   ``bd.json`` / ``bd.md`` (:func:`~compressai_vlic.evaluation.bd.bd_metric`, with its overlap
   checks); image-quality metrics of the same reconstructions and their Spearman correlation with
   the task scores to ``quality.md`` (:func:`quality_correlations`); rate-accuracy curves to
   ``rate_accuracy.png``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressai_vlic.atomic import atomic_path, atomic_write_text
from compressai_vlic.errors import ConfigError, ImageReadError
from compressai_vlic.evaluation.codecs import Codec
from compressai_vlic.image_io import load_image, save_png
from compressai_vlic.jsonl import JsonlAppender, read_jsonl
from compressai_vlic.judges.encoding import image_digest
from compressai_vlic.options import check_option
from compressai_vlic.vlm.answerers import Answer, Answerer, AnswerRequest
from compressai_vlic.vlm.options import ImageErrorsType, PlotType
from compressai_vlic.vlm.scoring import cider_scorer, metric_for, score_task
from compressai_vlic.vlm.tasks import Task, TaskItem, item_key

UNCOMPRESSED = "uncompressed"
ORIGINAL = "original"
PROMPT_VERSION = "vlm-bench.v1"
ANSWERS_FILE = "answers.jsonl"
SUMMARY_FILE = "summary.json"


# ----------------------------------------------------------------------------- prompts
def build_prompt(task_type: str, item: TaskItem) -> str:
    """The question as the VLM sees it (VLMEvalKit / LLaVA conventions per task type)."""
    q = item.question
    if task_type == "yes_no":
        return f"{q}\nPlease answer yes or no."
    if task_type == "multiple_choice":
        lines = [f"Hint: {item.hint}"] if item.hint else []
        lines.append(f"Question: {q}")
        lines.append("Options:")
        lines += [f"{k}. {v}" for k, v in sorted(item.options.items())]
        lines.append("Answer with the option's letter from the given choices directly.")
        return "\n".join(lines)
    if task_type in ("short_answer", "ocr"):
        return f"{q}\nAnswer the question using a single word or phrase."
    if task_type == "caption":
        return q or "Provide a one-sentence caption for the provided image."
    raise ConfigError(f"unknown task type {task_type!r}")


# ----------------------------------------------------------------------------- settings, rows
@dataclass
class BenchSettings:
    """How to run the benchmark.

    Args:
        reference_codec: the codec BD deltas are against (default None: the first codec).
        metrics: task type -> metric overrides, e.g. ``{"ocr": "exact_match"}`` (default: each
            type's default, see :mod:`compressai_vlic.vlm.scoring`).
        max_pixels: pixel limit of every task image (default None: the package's limit).
        image_errors: "raise" (default) stops at an unreadable, missing or oversized image;
            "skip" leaves its items out of every condition (listed in the summary).
        chunk_size: questions handed to the answerer at once (default 64); every answer is
            written as it arrives whatever the chunk size.
        bd_method: "pchip" (default) or "cubic" (see :func:`~compressai_vlic.evaluation.bd_metric`).
        device: torch device the codecs run on (default "cpu").
        progress: tqdm progress bars (default True).
        plot_type: "all" (default) writes ``rate_accuracy.png``; "none" writes no figure.
        quality_metrics: full-reference image-quality metrics of every reconstruction
            (default psnr, lpips, dists; any of ``compare``'s; a metric without its weights is
            skipped with a notice), averaged per task, codec and rate point.
        distribution_metrics: set metrics per codec and rate point over all the benchmark's
            images (default fid, on HiFiC patches of ``patch_size``; skipped with a notice when
            the images give too few patches).
        patch_size: HiFiC patch size of the distribution metrics (default 256).
    """

    reference_codec: str | None = None
    metrics: dict[str, str] = field(default_factory=dict)
    max_pixels: int | None = None
    image_errors: ImageErrorsType = "raise"
    chunk_size: int = 64
    bd_method: str = "pchip"
    device: str = "cpu"
    progress: bool = True
    plot_type: PlotType = "all"
    quality_metrics: Sequence[str] = ("psnr", "lpips", "dists")
    distribution_metrics: Sequence[str] = ("fid",)
    patch_size: int = 256


@dataclass(frozen=True)
class Condition:
    """What the VLM sees: the original image, or one codec at one rate point."""

    codec: str
    rate_point: str
    rate_level: int  # index of the rate point in the codec's list (0 for the original)
    codec_key: str  # the codec's cache identity ("" for the original)

    @property
    def label(self) -> str:
        return self.codec if self.codec == UNCOMPRESSED else f"{self.codec}@{self.rate_point}"


@dataclass(frozen=True)
class ScoreRow:
    """One (task, codec, rate point): the score over answered items and the real bpp."""

    task: str
    task_type: str
    metric: str
    codec: str
    rate_point: str
    rate_level: int
    bpp: float | None  # mean real bpp over the task's images (None for the original)
    score: float
    n: int  # answered items
    expected: int  # items that should have been answered
    unparsed: int  # answers no decision could be read from (scored 0)
    drop: float  # ceiling score - this score
    extra: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)  # image-quality metrics here

    @property
    def complete(self) -> bool:
        return self.n == self.expected


@dataclass(frozen=True)
class BDRow:
    """BD of the task score at equal rate, test codec vs anchor codec (None + note if none)."""

    task: str
    metric: str
    anchor: str
    test: str
    bd_score: float | None
    log_rate_interval: tuple[float, float] | None
    overlap: float | None
    note: str = ""


@dataclass
class BenchResult:
    """Everything a run produced."""

    rows: list[ScoreRow]
    bd: list[BDRow]
    drops: list[DropRow]
    correlations: list[CorrelationRow]
    output_dir: Path
    answerer: dict[str, Any]
    failed: int  # answers that failed this run (asked again on the next run)
    skipped_items: dict[str, str]  # "task/index" -> why it was left out
    notices: list[str]
    paths: dict[str, Path] = field(default_factory=dict)

    def row(self, task: str, codec: str, rate_point: str) -> ScoreRow:
        for r in self.rows:
            if (r.task, r.codec, r.rate_point) == (task, codec, rate_point):
                return r
        raise KeyError((task, codec, rate_point))


# ----------------------------------------------------------------------------- answers file
class AnswerLog:
    """Append-only JSONL of answers; a torn last line (a killed run) is ignored when read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[tuple[str, ...], dict[str, Any]] = {}
        for row in read_jsonl(path):
            try:
                self.rows[self.key(row)] = row
            except (KeyError, TypeError):
                continue  # a foreign line
        self._file = JsonlAppender(path, sync_each=False)  # synced per chunk and on close

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return (
            row["answerer"],
            row["task"],
            row["item"],
            row["codec"],
            row["codec_key"],
            row["rate_point"],
        )

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        return self.rows.get(key)

    def append(self, row: dict[str, Any]) -> None:
        # an answer that arrived after an interrupt is not written: it is asked again later
        if self._file.write(row):
            self.rows[self.key(row)] = row

    def sync(self) -> None:
        self._file.sync()

    def close(self) -> None:
        self._file.close()


def answerer_digest(identity: dict[str, Any]) -> str:
    payload = json.dumps({"answerer": identity, "prompt": PROMPT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the runner
def _progress(total: int, enabled: bool, unit: str) -> Any:
    """A tqdm bar on stderr; a silent one when disabled or empty (its calls do nothing)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not (enabled and total)
    )


class VLMBench:
    """Runs the benchmark; see :func:`run_vlm_bench`."""

    def __init__(
        self,
        tasks: Sequence[Task],
        codecs: Sequence[Codec],
        answerer: Answerer,
        output_dir: str | Path,
        settings: BenchSettings | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or BenchSettings()
        s = self.settings
        check_option("image_errors", s.image_errors, ImageErrorsType)
        check_option("plot_type", s.plot_type, PlotType)
        if s.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {s.chunk_size}")
        if not tasks:
            raise ConfigError("give at least one task file")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"task names must be unique (rename with NAME=PATH): {names}")
        codec_names = [c.name for c in codecs]
        if len(set(codec_names)) != len(codec_names) or UNCOMPRESSED in codec_names:
            raise ConfigError(
                f"codec names must be unique and not {UNCOMPRESSED!r}, got {codec_names}"
            )
        if s.reference_codec is not None and s.reference_codec not in codec_names:
            raise ConfigError(f"reference codec {s.reference_codec!r} is not among {codec_names}")
        self.tasks = list(tasks)
        self.metrics = {
            t.name: metric_for(t.task_type, s.metrics.get(t.task_type), t.name) for t in tasks
        }
        if "cider" in self.metrics.values():
            cider_scorer()  # missing scorer: fail now, not after every question was asked
        self.codecs = {c.name: c for c in codecs}
        self.answerer = answerer
        self.output_dir = Path(output_dir)
        self.images_dir = self.output_dir / "images"
        self._aliases: dict[str, list[str]] = {}
        # (codec, rate point, image key) -> metrics; (codec, rate point) -> set metrics
        self._quality: dict[tuple[str, str, str], dict[str, float]] = {}
        self._distribution: dict[tuple[str, str], dict[str, float]] = {}
        self.higher_is_better: dict[str, bool] = {}
        self.notices: list[str] = []
        self._notify_fn = notify or (lambda text: print(f"notice: {text}", file=sys.stderr))

    def _notify(self, text: str) -> None:
        self.notices.append(text)
        self._notify_fn(text)

    # ---------------------------------------------------------------- step 1: images
    def _materialise(self) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
        """(task, index) -> image key (the PNG's stem); skipped "task/index" -> reason."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        keys: dict[tuple[str, str], str] = {}
        skipped: dict[str, str] = {}
        total = sum(len(t) for t in self.tasks)
        progress = _progress(total, self.settings.progress, "img")
        try:
            for task in self.tasks:
                for item in task.items:
                    progress.set_description(f"read {task.name}", refresh=False)
                    progress.update()
                    try:
                        tensor = item.load_image(self.settings.max_pixels)
                    except ImageReadError as exc:
                        if self.settings.image_errors == "raise":
                            raise
                        skipped[f"{task.name}/{item.index}"] = str(exc)
                        self._notify(f"skipped {task.name} item {item.index}: {exc}")
                        continue
                    key = image_digest(tensor)[:24]
                    png = self.images_dir / f"{key}.png"
                    if not png.is_file():
                        save_png(tensor, png)
                    keys[(task.name, item.index)] = key
                    # a folder codec finds this image by its file stem or its row index
                    names = self._aliases.setdefault(f"{key}.png", [])
                    for name in (item.image_path.stem if item.image_path else None, item.index):
                        if name and name not in names:
                            names.append(name)
        finally:
            progress.close()
        if not keys:
            raise ConfigError("no task item has a readable image")
        return keys, skipped

    # ---------------------------------------------------------------- step 2: codecs
    def _code(
        self, image_keys: set[str]
    ) -> tuple[dict[tuple[str, str, str], tuple[float, Path]], set[str]]:
        """(codec, rate point, image key) -> (real bpp, reconstruction PNG); failed image keys."""
        if not self.codecs:
            return {}, set()
        from compressai_vlic.evaluation.compare import CompareSettings, run_comparison

        paths = [self.images_dir / f"{k}.png" for k in sorted(image_keys)]
        settings = CompareSettings(
            metrics=list(self.settings.quality_metrics),
            distribution_metrics=list(self.settings.distribution_metrics),
            patch_size=self.settings.patch_size,
            device=self.settings.device,
            progress=self.settings.progress,
            image_names={k: v for k, v in self._aliases.items() if k[:-4] in image_keys},
        )
        result = run_comparison(
            paths, list(self.codecs.values()), self.output_dir / "codecs", settings, self._notify
        )
        coded = {}
        for row in result.rows:
            key = Path(row.image).stem
            coded[(row.codec, row.rate_point, key)] = (
                row.bpp,
                result.reconstructions[(row.codec, row.rate_point, row.image)],
            )
            self._quality[(row.codec, row.rate_point, key)] = dict(row.metrics)
        for point in result.points:
            self._distribution[(point.codec, point.rate_point)] = dict(point.distribution)
        self.higher_is_better = {
            n: result.higher_is_better.get(n, True)
            for n in [*result.metric_names, *result.distribution_names]
        }
        failed = {Path(name).stem for name in result.failed_images}
        return coded, failed

    def conditions(self) -> list[Condition]:
        out = [Condition(UNCOMPRESSED, ORIGINAL, 0, "")]
        for codec in self.codecs.values():
            for level, point in enumerate(codec.rate_points):
                out.append(Condition(codec.name, point, level, codec.cache_key))
        return out

    # ---------------------------------------------------------------- step 3: answers
    def _answer_all(
        self,
        log: AnswerLog,
        digest: str,
        keys: dict[tuple[str, str], str],
        coded: dict[tuple[str, str, str], tuple[float, Path]],
    ) -> int:
        """Ask every missing question; returns how many answers failed."""
        conditions = self.conditions()
        todo: list[tuple[Condition, Task, TaskItem]] = []
        done = 0
        for condition in conditions:
            for task in self.tasks:
                for item in task.items:
                    if (task.name, item.index) not in keys:
                        continue
                    row_key = (
                        digest,
                        task.name,
                        item_key(item),
                        condition.codec,
                        condition.codec_key,
                        condition.rate_point,
                    )
                    if log.get(row_key) is not None:
                        done += 1
                    else:
                        todo.append((condition, task, item))
        if done:
            self._notify(f"{done} answers from {log.path.name}, {len(todo)} to ask")
        progress = _progress(len(todo), self.settings.progress, "q")
        failed = 0
        first_error: str | None = None
        try:
            for start in range(0, len(todo), self.settings.chunk_size):
                chunk = todo[start : start + self.settings.chunk_size]
                requests = []
                meta = []
                images: dict[Path, Any] = {}
                for condition, task, item in chunk:
                    image_key = keys[(task.name, item.index)]
                    if condition.codec == UNCOMPRESSED:
                        path, bpp = self.images_dir / f"{image_key}.png", None
                    else:
                        bpp, path = coded[(condition.codec, condition.rate_point, image_key)]
                    if path not in images:
                        images[path] = load_image(path, max_pixels=0).tensor
                    requests.append(
                        AnswerRequest(
                            image=images[path],
                            prompt=build_prompt(task.task_type, item),
                            condition=(condition.codec, condition.rate_level),
                        )
                    )
                    meta.append(
                        {
                            "answerer": digest,
                            "task": task.name,
                            "index": item.index,
                            "item": item_key(item),
                            "codec": condition.codec,
                            "codec_key": condition.codec_key,
                            "rate_point": condition.rate_point,
                            "rate_level": condition.rate_level,
                            "image": image_key,
                            "bpp": bpp,
                        }
                    )

                def record(i: int, answer: Answer, meta: list = meta) -> None:
                    nonlocal failed, first_error
                    progress.set_description(meta[i]["codec"], refresh=False)
                    progress.update()
                    if answer.failed:
                        failed += 1
                        first_error = first_error or answer.error
                        return
                    log.append({**meta[i], "answer": answer.text, "cached": answer.cached})

                self.answerer.answer_batch(requests, on_result=record)
                log.sync()
        finally:
            progress.close()
        if failed:
            self._notify(
                f"{failed} answer(s) failed (e.g. {first_error}); they are left out of the "
                "scores and asked again when the same command runs again"
            )
        return failed

    # ---------------------------------------------------------------- step 4: scores
    def _scores(
        self,
        log: AnswerLog,
        digest: str,
        keys: dict[tuple[str, str], str],
        coded: dict[tuple[str, str, str], tuple[float, Path]],
    ) -> list[ScoreRow]:
        rows: list[ScoreRow] = []
        for task in self.tasks:
            metric = self.metrics[task.name]
            items = [it for it in task.items if (task.name, it.index) in keys]
            image_keys = sorted({keys[(task.name, it.index)] for it in items})
            ceiling: float | None = None
            for condition in self.conditions():
                answers, refs, options, categories, groups = [], [], [], [], []
                for item in items:
                    row = log.get(
                        (
                            digest,
                            task.name,
                            item_key(item),
                            condition.codec,
                            condition.codec_key,
                            condition.rate_point,
                        )
                    )
                    if row is None:
                        continue
                    answers.append(row["answer"])
                    refs.append(item.answers)
                    options.append(item.options)
                    categories.append(item.category)
                    groups.append(keys[(task.name, item.index)])  # the image, by its pixels
                result = score_task(
                    task.task_type, metric, answers, refs, options, categories, groups
                )
                quality: dict[str, float] = {}
                if condition.codec == UNCOMPRESSED:
                    bpp = None
                    ceiling = result.score
                else:
                    point = (condition.codec, condition.rate_point)
                    for name in self.higher_is_better:
                        values = [
                            self._quality.get((*point, k), {}).get(name, math.nan)
                            for k in image_keys
                        ]
                        finite = [v for v in values if math.isfinite(v)]
                        if finite:
                            quality[name] = float(np.mean(finite))
                        elif name in self._distribution.get(point, {}):
                            quality[name] = self._distribution[point][name]
                    bpp = float(
                        np.mean(
                            [
                                coded[(condition.codec, condition.rate_point, k)][0]
                                for k in image_keys
                            ]
                        )
                    )
                rows.append(
                    ScoreRow(
                        task=task.name,
                        task_type=task.task_type,
                        metric=metric,
                        codec=condition.codec,
                        rate_point=condition.rate_point,
                        rate_level=condition.rate_level,
                        bpp=bpp,
                        score=result.score,
                        n=result.n,
                        expected=len(items),
                        unparsed=result.unparsed,
                        drop=(ceiling - result.score) if ceiling is not None else 0.0,
                        extra=result.extra,
                        quality=quality,
                    )
                )
        return rows

    # ---------------------------------------------------------------- run
    def run(self) -> BenchResult:
        keys, skipped = self._materialise()
        coded, failed_images = self._code(set(keys.values()))
        if failed_images:
            for (task, index), key in list(keys.items()):
                if key in failed_images:
                    del keys[(task, index)]
                    skipped[f"{task}/{index}"] = "a codec failed on its image"
            if not keys:
                raise ConfigError("every image failed in some codec; nothing to benchmark")
        identity = self.answerer.cache_identity()
        digest = answerer_digest(identity)
        log = AnswerLog(self.output_dir / ANSWERS_FILE)
        try:
            failed = self._answer_all(log, digest, keys, coded)
        finally:
            log.close()
        rows = self._scores(log, digest, keys, coded)
        bd = bd_task_scores(rows, self.settings.reference_codec, self.settings.bd_method)
        result = BenchResult(
            rows=rows,
            bd=bd,
            drops=bd_drop_rows(rows, self.settings.bd_method),
            correlations=quality_correlations(rows, self.higher_is_better),
            output_dir=self.output_dir,
            answerer=identity,
            failed=failed,
            skipped_items=skipped,
            notices=self.notices,
        )
        result.paths = write_outputs(result, self.tasks)
        if self.settings.plot_type == "all" and self.codecs:
            result.paths["plot"] = plot_rate_accuracy(
                result, self.output_dir / "rate_accuracy.png", list(self.codecs.values())
            )
        return result


def run_vlm_bench(
    tasks: Sequence[Task],
    codecs: Sequence[Codec],
    answerer: Answerer,
    output_dir: str | Path,
    settings: BenchSettings | None = None,
    notify: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every task on the original images and through every codec's rate points, score the
    answers and write summary, BD and plot files into ``output_dir`` (see the module docstring).

    Args:
        tasks: from :func:`compressai_vlic.vlm.tasks.load_task`.
        codecs: from :func:`compressai_vlic.evaluation.make_codec` (the ``compare`` specs).
        answerer: an :class:`~compressai_vlic.vlm.answerers.OpenAIAnswerer`,
            :class:`~compressai_vlic.vlm.answerers.HFAnswerer` or a cached one.
        output_dir: where images, reconstructions, answers and results go (reused on resume).
        settings: see :class:`BenchSettings` (default: its defaults).
        notify: called with each notice (default: print to stderr).
    """
    return VLMBench(tasks, codecs, answerer, output_dir, settings, notify).run()


# ----------------------------------------------------------------------------- BD of task scores
def bd_task_scores(
    rows: Sequence[ScoreRow], reference: str | None = None, method: str = "pchip"
) -> list[BDRow]:
    """BD of the task score at equal rate of every codec vs ``reference`` (default: the first
    codec), per task: the mean score difference over the shared log-bpp range
    (:func:`~compressai_vlic.evaluation.bd.bd_metric`, positive = the test codec keeps more of
    the VLM's accuracy at the same rate). A missing delta carries its reason in ``note``."""
    from compressai_vlic.evaluation.bd import BDOverlapWarning, bd_metric

    out: list[BDRow] = []
    codecs = list(dict.fromkeys(r.codec for r in rows if r.codec != UNCOMPRESSED))
    if len(codecs) < 2:
        return out
    anchor = reference or codecs[0]
    if anchor not in codecs:
        raise ConfigError(f"reference codec {anchor!r} is not among {codecs}")
    for task in dict.fromkeys(r.task for r in rows):

        def curve(codec: str, task: str = task) -> list[ScoreRow]:
            return sorted(
                (r for r in rows if r.task == task and r.codec == codec and r.bpp is not None),
                key=lambda r: r.bpp or 0.0,
            )

        base = curve(anchor)
        metric = base[0].metric if base else ""
        for test in codecs:
            if test == anchor:
                continue
            points = curve(test)
            if min(len(base), len(points)) < 2:
                out.append(
                    BDRow(task, metric, anchor, test, None, None, None, "needs 2+ rate points")
                )
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", BDOverlapWarning)
                    res = bd_metric(
                        [r.bpp for r in base],  # type: ignore[misc]
                        [r.score for r in base],
                        [r.bpp for r in points],  # type: ignore[misc]
                        [r.score for r in points],
                        method=method,
                    )
            except ConfigError as exc:
                note = "no overlap" if "overlap" in str(exc) else str(exc)
                out.append(BDRow(task, metric, anchor, test, None, None, None, note))
                continue
            note = "small overlap" if any(w.category is BDOverlapWarning for w in caught) else ""
            out.append(
                BDRow(task, metric, anchor, test, res.value, res.interval, res.overlap, note)
            )
    return out


# ----------------------------------------------------------------------------- quality vs score
@dataclass(frozen=True)
class CorrelationRow:
    """Spearman rank correlation, over a task's codec points, of the task score with one
    image-quality metric (the paper's Finding 5); None + note with fewer than 3 points."""

    task: str
    quality_metric: str
    higher_is_better: bool
    n: int
    spearman: float | None
    p_value: float | None
    note: str = ""


def quality_correlations(
    rows: Sequence[ScoreRow], higher_is_better: dict[str, bool]
) -> list[CorrelationRow]:
    """:class:`CorrelationRow` per task and quality metric over every (codec, rate point) of the
    task (the uncompressed ceiling is left out). A metric where lower is better (LPIPS, DISTS,
    FID) that tracks the score has a negative rho."""
    from scipy.stats import spearmanr

    out: list[CorrelationRow] = []
    for task in dict.fromkeys(r.task for r in rows):
        points = [r for r in rows if r.task == task and r.codec != UNCOMPRESSED]
        for name, higher in higher_is_better.items():
            pairs = [(r.score, r.quality[name]) for r in points if name in r.quality]
            if len(pairs) < 3:
                out.append(CorrelationRow(task, name, higher, len(pairs), None, None,
                                          "needs 3+ codec points"))  # fmt: skip
                continue
            scores, values = zip(*pairs)
            if len(set(scores)) < 2 or len(set(values)) < 2:
                out.append(CorrelationRow(task, name, higher, len(pairs), None, None,
                                          "constant: no ranking"))  # fmt: skip
                continue
            res = spearmanr(scores, values)
            out.append(CorrelationRow(task, name, higher, len(pairs), float(res.statistic),
                                      float(res.pvalue)))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- BD vs uncompressed
@dataclass(frozen=True)
class DropRow:
    """BD-metric of one codec against the uncompressed level (the paper's Tables 2 and 16): the
    mean drop of the task score from the ceiling over the codec's own log-bpp range
    (positive = compression costs score); None + note when it has fewer than 2 rate points."""

    task: str
    metric: str
    codec: str
    ceiling: float
    bd_drop: float | None
    log_rate_interval: tuple[float, float] | None
    note: str = ""


def curve_mean(bpps: Sequence[float], scores: Sequence[float], method: str = "pchip") -> float:
    """Mean of the score curve fitted against log-bpp (PCHIP or cubic, as the BD deltas) over
    the curve's own log-bpp range."""
    from compressai_vlic.evaluation.bd import bd_metric

    zero = [0.0] * len(scores)
    return bd_metric(bpps, zero, bpps, scores, method=method).value


def bd_drop_rows(rows: Sequence[ScoreRow], method: str = "pchip") -> list[DropRow]:
    """:class:`DropRow` per task and codec: ``ceiling - curve_mean(bpp, score)``."""
    out: list[DropRow] = []
    for task in dict.fromkeys(r.task for r in rows):
        mine = [r for r in rows if r.task == task]
        ceiling = next((r for r in mine if r.codec == UNCOMPRESSED), None)
        if ceiling is None:
            continue
        for codec in dict.fromkeys(r.codec for r in mine if r.codec != UNCOMPRESSED):
            curve = sorted(
                (r for r in mine if r.codec == codec and r.bpp is not None),
                key=lambda r: r.bpp or 0.0,
            )
            if len(curve) < 2:
                out.append(DropRow(task, ceiling.metric, codec, ceiling.score, None, None,
                                   "needs 2+ rate points"))  # fmt: skip
                continue
            bpps = [r.bpp for r in curve]
            try:
                mean = curve_mean(bpps, [r.score for r in curve], method)  # type: ignore[arg-type]
            except ConfigError as exc:  # two rate points with one bpp
                out.append(
                    DropRow(task, ceiling.metric, codec, ceiling.score, None, None, str(exc))
                )
                continue
            interval = (math.log(min(bpps)), math.log(max(bpps)))  # type: ignore[type-var]
            out.append(
                DropRow(task, ceiling.metric, codec, ceiling.score, ceiling.score - mean, interval)
            )
    return out


# ----------------------------------------------------------------------------- outputs
CSV_COLUMNS = [
    "task", "task_type", "metric", "codec", "rate_point", "rate_level", "bpp", "score", "n",
    "expected", "unparsed", "drop",
]  # fmt: skip
EXTRA_COLUMNS = ["precision", "recall", "f1", "yes_ratio"]


def _md_table(rows: Sequence[ScoreRow]) -> str:
    lines = [
        "| task | metric | codec | rate point | bpp | score | drop | n | unparsed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bpp = "–" if r.bpp is None else f"{r.bpp:.4g}"
        n = f"{r.n}" if r.complete else f"{r.n} of {r.expected}"
        lines.append(
            f"| {r.task} | {r.metric} | {r.codec} | {r.rate_point} | {bpp} | {r.score:.4f} | "
            f"{r.drop:+.4f} | {n} | {r.unparsed} |"
        )
    return "\n".join(lines) + "\n"


def _quality_md(rows: Sequence[ScoreRow], correlations: Sequence[CorrelationRow]) -> str:
    names = list(dict.fromkeys(n for r in rows for n in r.quality))
    lines = [
        "| task | codec | rate point | bpp | score | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        if r.codec == UNCOMPRESSED:
            continue
        cells = ["–" if n not in r.quality else f"{r.quality[n]:.4g}" for n in names]
        bpp = "–" if r.bpp is None else f"{r.bpp:.4g}"
        lines.append(
            f"| {r.task} | {r.codec} | {r.rate_point} | {bpp} | {r.score:.4g} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Spearman rank correlation of the task score with each metric over the codec points "
        "(lower-is-better metrics that track the score have a negative rho)",
        "",
        "| task | metric | better | n | Spearman rho | p | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in correlations:
        rho = "n/a" if c.spearman is None else f"{c.spearman:+.3f}"
        p = "–" if c.p_value is None else f"{c.p_value:.3g}"
        arrow = "↑" if c.higher_is_better else "↓"
        lines.append(
            f"| {c.task} | {c.quality_metric} | {arrow} | {c.n} | {rho} | {p} | {c.note} |"
        )
    return "\n".join(lines) + "\n"


def _drops_md(rows: Sequence[DropRow]) -> str:
    lines = [
        "BD-metric vs uncompressed: mean drop of the task score from the uncompressed level over "
        "each codec's log-bpp range (positive = compression costs score)",
        "",
        "| task | metric | codec | uncompressed | BD drop | log-bpp range | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = "n/a" if r.bd_drop is None else f"{r.bd_drop:+.4f}"
        span = (
            "–" if r.log_rate_interval is None else "[{:.3f}, {:.3f}]".format(*r.log_rate_interval)
        )
        lines.append(
            f"| {r.task} | {r.metric} | {r.codec} | {r.ceiling:.4f} | {value} | {span} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def _bd_md(rows: Sequence[BDRow]) -> str:
    if not rows:
        return "BD of the task score: needs two codecs with 2+ rate points each.\n"
    lines = [
        f"BD of the task score at equal rate vs {rows[0].anchor} (positive = the codec keeps "
        "more of the VLM's score at the same bpp)",
        "",
        "| task | metric | codec | BD score | note |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        value = "n/a" if r.bd_score is None else f"{r.bd_score:+.4f}"
        lines.append(f"| {r.task} | {r.metric} | {r.test} | {value} | {r.note} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: BenchResult, tasks: Sequence[Task]) -> dict[str, Path]:
    """summary.json, summary.csv, table.md, bd.json, bd.md (atomically)."""
    out = result.output_dir
    summary = {
        "prompt_version": PROMPT_VERSION,
        "answerer": result.answerer,
        "tasks": {
            t.name: {"task_type": t.task_type, "items": len(t), "source": str(t.source)}
            for t in tasks
        },
        "rows": [asdict(r) for r in result.rows],
        "bd": [asdict(b) for b in result.bd],
        "bd_vs_uncompressed": [asdict(d) for d in result.drops],
        "quality_correlation": [asdict(c) for c in result.correlations],
        "failed_answers": result.failed,
        "skipped_items": result.skipped_items,
    }
    paths = {"summary": atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1))}
    with atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*CSV_COLUMNS, *EXTRA_COLUMNS])
        for r in result.rows:
            d = asdict(r)
            writer.writerow(
                ["" if d[c] is None else d[c] for c in CSV_COLUMNS]
                + [r.extra.get(c, "") for c in EXTRA_COLUMNS]
            )
    paths["csv"] = out / "summary.csv"
    paths["table"] = atomic_write_text(out / "table.md", _md_table(result.rows))
    paths["bd_json"] = atomic_write_text(
        out / "bd.json", json.dumps([asdict(b) for b in result.bd], indent=1)
    )
    paths["bd"] = atomic_write_text(
        out / "bd.md", _drops_md(result.drops) + "\n" + _bd_md(result.bd)
    )
    paths["quality"] = atomic_write_text(
        out / "quality.md", _quality_md(result.rows, result.correlations)
    )
    return paths


def load_summary(output_dir: str | Path) -> tuple[list[ScoreRow], dict[str, Any]]:
    """The score rows and the answerer identity of a finished run (its ``summary.json``)."""
    path = Path(output_dir)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such summary (run `compressai-vlic vlm-bench run` first)")
    try:
        data = json.loads(path.read_text())
        rows = [ScoreRow(**r) for r in data["rows"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a vlm-bench summary ({exc})") from None
    return rows, data.get("answerer", {})


def plot_rate_accuracy(result: BenchResult, path: str | Path, codecs: Sequence[Codec]) -> Path:
    """One panel per task (score against real bpp), one line per codec, the uncompressed
    ceiling dashed; drawn by the ``compare`` plotter."""
    from compressai_vlic.evaluation.compare import ComparisonResult, CurvePoint
    from compressai_vlic.evaluation.plots import plot_rate_quality

    names: dict[str, str] = {}
    points, ceilings = [], {}
    for r in result.rows:
        name = names.setdefault(r.task, f"{r.task} {r.metric}")
        if r.codec == UNCOMPRESSED:
            ceilings[name] = r.score
            continue
        if r.bpp is None or not math.isfinite(r.bpp):
            continue
        points.append(CurvePoint(r.codec, r.rate_point, r.bpp, r.n, {name: r.score}))
    view = ComparisonResult(
        rows=[],
        points=points,
        codecs={c.name: c for c in codecs},
        skipped={},
        notices=[],
        output_dir=result.output_dir,
        metric_names=list(names.values()),
        distribution_names=[],
        higher_is_better={n: True for n in names.values()},
        reconstructions={},
        originals={},
    )
    return plot_rate_quality(view, path, ceilings=ceilings)
