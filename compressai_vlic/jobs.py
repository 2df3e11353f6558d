"""Map input files and folders to output files, refusing collisions before any work is done.

``compressai-vlic encode`` / ``decode`` plan their work with :func:`plan_jobs`: a single file
may name its output file, folders are mirrored, and two inputs that would write the same output
are refused up front.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "Plan", "plan_jobs"]


@dataclass(frozen=True)
class Job:
    """One input file and the file its result goes to."""

    source: Path
    target: Path


@dataclass
class Plan:
    """Jobs to run, plus inputs refused before any work (missing paths)."""

    jobs: list[Job]
    refused: list[str]


def plan_jobs(
    inputs: Sequence[Path],
    output: Path,
    find: Callable[[Path], list[Path]],
    suffix: str,
    overwrite: bool = False,
) -> Plan:
    """Map inputs to outputs: a single file may name its output file, folders are mirrored.

    With one folder the tree under it is mirrored into ``output``; with several inputs each
    folder keeps its own name as a sub-folder. Two inputs that would write the same file are
    refused up front (e.g. ``a.png`` and ``a.jpg``) rather than one silently overwriting the other;
    so is a target that exists already (unless ``overwrite``) and, always, a target that is one of
    the run's own input files.
    """
    jobs: list[Job] = []
    refused: list[str] = []
    single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    if single_file and output.suffix.lower() == suffix:
        jobs.append(Job(Path(inputs[0]), output))
        inputs = []
    for item in map(Path, inputs):
        if item.is_dir():
            base = output if len(inputs) == 1 else output / item.name
            jobs += [Job(p, base / p.relative_to(item).with_suffix(suffix)) for p in find(item)]
        elif item.is_file():
            jobs.append(Job(item, output / item.with_suffix(suffix).name))
        else:
            refused.append(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    kept: list[Job] = []
    sources = {job.source.resolve() for job in jobs}
    for job in jobs:
        if job.target.resolve() in sources:
            refused.append(
                f"{job.source}: its output {job.target} is an input of this run; choose another -o"
            )
            continue
        if not overwrite and job.target.exists():
            refused.append(
                f"{job.source}: {job.target} exists already; pass --overwrite to replace it"
            )
            continue
        if job.target in seen:
            refused.append(
                f"{job.source}: would overwrite {job.target}, also written from {seen[job.target]}"
                "; rename one of them or give them separate runs"
            )
            continue
        seen[job.target] = job.source
        kept.append(job)
    return Plan(kept, refused)
