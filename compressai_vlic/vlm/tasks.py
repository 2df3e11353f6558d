"""Task files for the VLM benchmark, in the formats people already have.

- VLMEvalKit-style TSV (MMBench, SEEDBench, POPE, MME): columns ``index``, ``image`` (base64 of
  the encoded image, or for MMBench the ``index`` of another row whose image it shares),
  ``question``, option columns ``A``, ``B``, ``C``, ... (empty or ``nan`` when a question has
  fewer options), ``answer`` (a letter, or yes/no), optional ``category`` and ``hint``; an
  ``image_path`` column (relative to the file) may replace ``image``.
- JSONL (one object per line) or CSV with image paths relative to the file: ``image``,
  ``question``, ``answer`` (a string) or ``answers`` (a list, e.g. the ten VQA answers or five
  captions; in CSV a JSON list), optional ``options`` (``{"A": ..}`` or a list) or ``A``..
  columns, ``index``/``id``, ``category``, ``hint``.

Task types: ``yes_no``, ``multiple_choice``, ``short_answer`` (exact match / VQA accuracy),
``ocr`` (ANLS / exact match) and ``caption`` (CIDEr). ``"auto"`` infers multiple choice (options
present) or yes/no (every answer yes or no), else short answer; OCR and captions must be named.

Image paths are resolved under the task file's folder (its root): a path that leads outside it
(``../``, an absolute path, a symbolic link pointing out) raises :class:`ImageOutsideRootError`
unless ``allow_outside_root=True`` (``vlm-bench run --allow-outside-root``), so a task file
cannot make the benchmark copy, or send to an endpoint, any other image on the machine.

Every malformed row raises :class:`TaskFileError` with its file and line; images are read only
through :func:`compressai_vlic.image_io.load_image`, so its pixel limit refuses decompression
bombs (:class:`~compressai_vlic.errors.ImageTooLargeError`) before any decoder runs.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import string
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from compressai_vlic.errors import DatasetError, ImageReadError
from compressai_vlic.image_io import load_image
from compressai_vlic.options import check_option

TaskType = Literal["auto", "yes_no", "multiple_choice", "short_answer", "ocr", "caption"]
TASK_TYPES = ("yes_no", "multiple_choice", "short_answer", "ocr", "caption")
LETTERS = tuple(string.ascii_uppercase)
_MISSING = {"", "nan", "none", "null"}
_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
# A VLMEvalKit row whose image field is this short names the row that holds the image.
_REFERENCE_MAX_LEN = 64


class TaskFileError(DatasetError):
    """A task file (TSV, JSONL, CSV) is malformed: a missing column, a bad answer, a broken row."""


class ImageOutsideRootError(TaskFileError):
    """A task row names an image outside the task file's folder (and that was not allowed)."""


def _image_under(root: Path, text: str, where: str, allow_outside_root: bool) -> Path:
    """``text`` (a row's image path) resolved against ``root``; it must stay under ``root``
    (symbolic links followed) unless ``allow_outside_root``."""
    path = root / text
    if allow_outside_root:
        return path
    resolved, base = path.resolve(), root.resolve()
    if not resolved.is_relative_to(base):
        raise ImageOutsideRootError(
            f"{where}: image {text!r} resolves to {resolved}, outside the task file's folder "
            f"{base}; task images must lie under it (pass --allow-outside-root, or "
            "allow_outside_root=True, if you trust this task file)"
        )
    return path


@dataclass(frozen=True)
class TaskItem:
    """One question about one image, with its reference answer(s)."""

    index: str
    question: str
    answers: tuple[str, ...]  # one, or several (VQA's ten, COCO's five captions)
    options: dict[str, str] = field(default_factory=dict)  # letter -> text (multiple choice)
    category: str | None = None
    hint: str | None = None
    image_path: Path | None = None  # an image file ...
    image_b64: str | None = None  # ... or the encoded image in base64 (VLMEvalKit TSV)
    where: str = ""  # "file:line", for messages

    def load_image(self, max_pixels: int | None = None) -> torch.Tensor:
        """The image as a (3, H, W) float tensor in [0, 1].

        Args:
            max_pixels: pixel limit checked on the header before decoding (default: the
                package's limit, ``$COMPRESSAI_VLIC_MAX_PIXELS``; 0 = none).

        Raises :class:`ImageReadError` (or its :class:`ImageTooLargeError`) naming the row.
        """
        if self.image_path is not None:
            try:
                return load_image(self.image_path, max_pixels).tensor
            except ImageReadError as exc:
                raise type(exc)(f"{self.where} (index {self.index}): {exc}") from None
        if self.image_b64 is None:
            raise ImageReadError(f"{self.where} (index {self.index}): the row has no image")
        try:
            data = base64.b64decode(self.image_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageReadError(
                f"{self.where} (index {self.index}): the image field is not valid base64 ({exc})"
            ) from None
        # through a file, so exactly the reader (and the pixel limit) of every other image runs
        with tempfile.TemporaryDirectory(prefix="vlic-task-") as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(data)
            try:
                return load_image(path, max_pixels).tensor
            except ImageReadError as exc:
                text = str(exc).replace(str(path), "base64 image")
                raise type(exc)(f"{self.where} (index {self.index}): {text}") from None


@dataclass
class Task:
    """A named list of items of one task type, read from ``source``."""

    name: str
    task_type: str
    items: list[TaskItem]
    source: Path

    def __len__(self) -> int:
        return len(self.items)


def item_key(item: TaskItem) -> str:
    """Digest of what is asked and expected (not the image bytes, which are hashed after
    decoding): a changed task file never reuses old answers."""
    payload = json.dumps(
        [item.index, item.question, list(item.answers), item.options, item.hint], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- helpers
def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING else text


def _answers(value: Any, where: str, csv_cell: bool = False) -> tuple[str, ...]:
    if csv_cell and isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise TaskFileError(f"{where}: answer {value!r} is not a JSON list ({exc})") from None
    if isinstance(value, list):
        out = tuple(t for t in (_text(v) for v in value) if t is not None)
    else:
        single = _text(value)
        out = () if single is None else (single,)
    if not out:
        raise TaskFileError(f"{where}: the row has no answer")
    return out


def _options_from(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        value = dict(zip(LETTERS, value))
    if not isinstance(value, dict):
        raise TaskFileError(f"{where}: options must be an object {{'A': ..}} or a list")
    out = {}
    for letter, text in value.items():
        letter = str(letter).strip().upper()
        if letter not in LETTERS:
            raise TaskFileError(f"{where}: option key {letter!r} is not a letter A-Z")
        t = _text(text)
        if t is not None:
            out[letter] = t
    return out


def _letter_columns(row: dict[str, Any]) -> dict[str, str]:
    out = {}
    for letter in LETTERS:
        if letter in row:
            t = _text(row[letter])
            if t is not None:
                out[letter] = t
    return out


def _infer_type(items: list[TaskItem]) -> str:
    if any(item.options for item in items):
        return "multiple_choice"
    if items and all(a.lower() in _YES_NO for item in items for a in item.answers):
        return "yes_no"
    return "short_answer"


def _check_items(items: list[TaskItem], task_type: str) -> list[TaskItem]:
    """Validate answers against the task type; yes/no answers become "yes"/"no", a multiple
    choice answer given as option text becomes its letter."""
    out = []
    for item in items:
        if task_type == "yes_no":
            bad = [a for a in item.answers if a.lower() not in _YES_NO]
            if bad:
                raise TaskFileError(f"{item.where}: yes/no answer expected, got {bad[0]!r}")
            item = _replace(item, answers=tuple(_YES_NO[a.lower()] for a in item.answers))
        elif task_type == "multiple_choice":
            if len(item.options) < 2:
                raise TaskFileError(
                    f"{item.where}: a multiple-choice row needs at least two options, got "
                    f"{sorted(item.options)}"
                )
            letters = []
            for answer in item.answers:
                letter = answer.strip().upper().strip("().")
                if letter not in item.options:
                    by_text = [k for k, v in item.options.items() if v.strip() == answer.strip()]
                    if len(by_text) != 1:
                        raise TaskFileError(
                            f"{item.where}: answer {answer!r} is none of the options "
                            f"{sorted(item.options)}"
                        )
                    letter = by_text[0]
                letters.append(letter)
            item = _replace(item, answers=tuple(letters))
        elif not item.question and task_type != "caption":
            raise TaskFileError(f"{item.where}: the row has no question")
        out.append(item)
    indices = [item.index for item in out]
    if len(set(indices)) != len(indices):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise TaskFileError(f"index {dup!r} appears more than once: indices must be unique")
    return out


def _replace(item: TaskItem, **changes: Any) -> TaskItem:
    from dataclasses import replace

    return replace(item, **changes)


# ----------------------------------------------------------------------------- readers
def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(2**31 - 1)  # base64 images are long fields
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames:
                raise TaskFileError(f"{path}: empty file (no header row)")
            for row in reader:
                if None in row:  # more cells than header columns
                    raise TaskFileError(
                        f"{path}:{reader.line_num}: more cells than the header has columns"
                    )
                if any(v is None for v in row.values()):
                    raise TaskFileError(
                        f"{path}:{reader.line_num}: fewer cells than the header has columns"
                    )
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc})") from None
    except csv.Error as exc:
        raise TaskFileError(f"{path}: not a readable table ({exc})") from None


def _require(row: dict[str, Any], column: str, where: str) -> Any:
    if column not in row:
        raise TaskFileError(f"{where}: column {column!r} is missing")
    return row[column]


def read_tsv(path: str | Path, allow_outside_root: bool = False) -> list[TaskItem]:
    """Items of a VLMEvalKit-style TSV (see the module docstring).

    Args:
        path: the file.
        allow_outside_root: accept ``image_path`` values outside the file's folder.
    """
    path = Path(path)
    rows = list(_csv_rows(path, "\t"))
    if not rows:
        raise TaskFileError(f"{path}: no rows")
    header = set(rows[0][1])
    if "image" not in header and "image_path" not in header:
        raise TaskFileError(f"{path}: needs an 'image' (base64) or 'image_path' column")
    for column in ("index", "question", "answer"):
        if column not in header:
            raise TaskFileError(f"{path}: column {column!r} is missing")
    by_index = {str(row["index"]).strip(): row for _, row in rows}
    items = []
    for line, row in rows:
        where = f"{path}:{line}"
        index = _text(row["index"])
        if index is None:
            raise TaskFileError(f"{where}: the row has no index")
        image_b64, image_path = None, None
        if "image" in row and _text(row["image"]) is not None:
            image_b64 = "".join(str(row["image"]).split())
            short = len(image_b64) <= _REFERENCE_MAX_LEN
            if short and (image_b64 in by_index or image_b64.isdigit()):
                # MMBench: the image of another row, named by its index
                target = by_index.get(image_b64)
                if target is None or len(str(target.get("image", ""))) <= _REFERENCE_MAX_LEN:
                    raise TaskFileError(
                        f"{where}: image field {image_b64!r} is neither base64 nor the index of "
                        "a row with an image"
                    )
                image_b64 = "".join(str(target["image"]).split())
        elif "image_path" in row and _text(row["image_path"]) is not None:
            image_path = _image_under(
                path.parent, str(row["image_path"]).strip(), where, allow_outside_root
            )
        else:
            raise TaskFileError(f"{where}: the row has no image")
        items.append(
            TaskItem(
                index=index,
                question=_text(row["question"]) or "",
                answers=_answers(row["answer"], where),
                options=_letter_columns(row),
                category=_text(row.get("category")),
                hint=_text(row.get("hint")),
                image_path=image_path,
                image_b64=image_b64,
                where=where,
            )
        )
    return items


def _record_item(
    obj: dict[str, Any], base: Path, where: str, csv_cell: bool, allow_outside_root: bool
) -> TaskItem:
    image = _text(obj.get("image", obj.get("image_path")))
    if image is None:
        raise TaskFileError(f"{where}: the row has no 'image' path")
    if "answers" in obj:
        answers = _answers(obj["answers"], where, csv_cell)
    else:
        answers = _answers(_require(obj, "answer", where), where, csv_cell)
    options = _options_from(obj.get("options"), where)
    if not options:
        options = _letter_columns(obj)
    index = _text(obj.get("index", obj.get("id")))
    return TaskItem(
        index=index if index is not None else where.rsplit(":", 1)[-1],
        question=_text(obj.get("question")) or "",
        answers=answers,
        options=options,
        category=_text(obj.get("category")),
        hint=_text(obj.get("hint")),
        image_path=_image_under(base, image, where, allow_outside_root),
        where=where,
    )


def read_jsonl(path: str | Path, allow_outside_root: bool = False) -> list[TaskItem]:
    """Items of a JSONL file, one object per line, image paths relative to the file.

    Args:
        path: the file.
        allow_outside_root: accept image paths outside the file's folder.
    """
    path = Path(path)
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise TaskFileError(f"{where}: not a JSON object ({exc})") from None
        if not isinstance(obj, dict):
            raise TaskFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        items.append(_record_item(obj, path.parent, where, False, allow_outside_root))
    return items


def read_csv(path: str | Path, allow_outside_root: bool = False) -> list[TaskItem]:
    """Items of a CSV file with a header row, image paths relative to the file.

    Args:
        path: the file.
        allow_outside_root: accept image paths outside the file's folder.
    """
    path = Path(path)
    return [
        _record_item(row, path.parent, f"{path}:{line}", True, allow_outside_root)
        for line, row in _csv_rows(path, ",")
    ]


READERS = {".tsv": read_tsv, ".jsonl": read_jsonl, ".csv": read_csv}


def load_task(
    path: str | Path,
    task_type: TaskType = "auto",
    name: str | None = None,
    max_items: int | None = None,
    allow_outside_root: bool = False,
) -> Task:
    """Read one task file.

    Args:
        path: a ``.tsv`` (VLMEvalKit), ``.jsonl`` or ``.csv`` file.
        task_type: one of :data:`TASK_TYPES`, or ``"auto"`` (default) to infer multiple choice,
            yes/no or short answer from the rows.
        name: the task's name in outputs (default: the file's stem, e.g. ``POPE``).
        max_items: keep only the first N rows (default: all), e.g. for a quick check.
        allow_outside_root: accept image paths that lead outside the task file's folder
            (default False: :class:`ImageOutsideRootError`).
    """
    check_option("task_type", task_type, TaskType)
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such task file")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise TaskFileError(f"{path}: unknown task file type; use one of {sorted(READERS)}")
    items = reader(path, allow_outside_root)
    if not items:
        raise TaskFileError(f"{path}: no rows")
    if max_items is not None:
        if max_items < 1:
            raise TaskFileError(f"max_items must be >= 1, got {max_items}")
        items = items[:max_items]
    resolved = _infer_type(items) if task_type == "auto" else task_type
    return Task(name or path.stem, resolved, _check_items(items, resolved), path)


def parse_task_spec(spec: str) -> tuple[str | None, Path, str]:
    """``[NAME=]PATH[@TYPE]`` -> (name or None, path, task type or "auto"), e.g.
    ``pope=POPE.tsv``, ``ocr=ocrbench.jsonl@ocr``, ``captions.csv@caption``."""
    name = None
    head, sep, rest = spec.partition("=")
    if sep and head and all(c.isalnum() or c in "_.-" for c in head) and head[0].isalpha():
        name, spec = head, rest
    task_type = "auto"
    path_text, at, kind = spec.rpartition("@")
    if at and kind in (*TASK_TYPES, "auto"):
        spec, task_type = path_text, kind
    if not spec:
        raise TaskFileError("empty task spec; give [NAME=]PATH[@TYPE]")
    return name, Path(spec), task_type
