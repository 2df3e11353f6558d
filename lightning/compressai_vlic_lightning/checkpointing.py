"""Training checkpoints and logs that survive hostile files, kills and resumes.

Every LightningModule of this package derives from :class:`ResumableModule`. At ``setup`` it
puts :class:`SafeCheckpointIO` into the Trainer, which

- loads checkpoints (``fit``/``validate``/``test --ckpt_path``; ``load_from_checkpoint`` too)
  from local files, ``http(s)://`` and fsspec URLs through
  :func:`compressai_vlic.checkpoints.load_checkpoint`, always with ``weights_only=True`` (a
  checkpoint cannot run code); a refused file is one typed line;
- writes checkpoints beside their target and renames them into place (fsync-ed), so a kill during
  a save leaves the previous ``last.ckpt`` whole, whatever file system holds the temp folder.

The module keeps the training's random streams (torch CPU and CUDA, numpy, Python ``random``)
apart from whatever runs between steps (validation, data-loader start-up), stores them in the
checkpoint and restores them right before the first training step after a resume. With the data
modules of :mod:`.data` (sample order and crops are functions of the seed, the epoch and the
position, and the position within the epoch is restored), a resumed CPU run repeats the
uninterrupted one step for step. :class:`CSVLogger` (the configs' logger) keeps ``metrics.csv``
across a resume: rows of the steps before the resume point stay, rows the killed run logged after
its checkpoint are replaced by the resumed run's.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from compressai_vlic.errors import CheckpointError

log = logging.getLogger(__name__)

#: Checkpoint key of the random streams (see :func:`collect_rng_states`).
RNG_KEY = "vlic_rng_states"
#: Every checkpoint Lightning writes carries it (its migration code fails without it).
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"


# ------------------------------------------------------------------------------ checkpoint I/O
class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never runs code from a checkpoint and never tears one.

    Loading goes through :func:`compressai_vlic.checkpoints.load_checkpoint` (``weights_only=True``
    for local files, ``http(s)://`` and fsspec URLs alike); ``weights_only=False`` is refused.
    Local saves are written beside the target, fsync-ed and renamed into place.
    """

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` (a file or URL), on the CPU; :class:`CheckpointError` if
        it is missing, damaged, holds code, or is not a Lightning checkpoint."""
        from compressai_vlic.checkpoints import is_url, load_checkpoint

        name = str(path) if is_url(str(path)) else Path(path)
        if weights_only is False:
            raise CheckpointError(
                f"{name}: weights_only=False is refused; checkpoints load with weights_only=True "
                "so that loading one cannot run code"
            )
        checkpoint = load_checkpoint(name)
        missing = [
            key
            for key in ("state_dict", LIGHTNING_VERSION_KEY)
            if not isinstance(checkpoint, dict) or key not in checkpoint
        ]
        if missing or not isinstance(checkpoint["state_dict"], dict):
            keys = list(checkpoint)[:3] if isinstance(checkpoint, dict) else []
            raise CheckpointError(
                f"{name}: not a Lightning training checkpoint (no {' or '.join(missing)}; a "
                f"{type(checkpoint).__name__} with keys {keys}); to start from a model's weights "
                "use --model.weights instead of --ckpt_path"
            )
        return checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` atomically beside ``path`` (remote paths: Lightning's way)."""
        from compressai_vlic.checkpoints import is_url

        if storage_options is not None or is_url(str(path)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        from compressai_vlic.atomic import atomic_path

        with atomic_path(path) as tmp:  # same folder: the rename is atomic, the old file whole
            torch.save(checkpoint, tmp)


def use_safe_checkpoint_io(trainer: pl.Trainer) -> None:
    """Put :class:`SafeCheckpointIO` in place of Lightning's default checkpoint I/O.

    A checkpoint I/O the user configured (another class) is left alone, with a warning.
    """
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    inner = getattr(current, "checkpoint_io", None)  # e.g. AsyncCheckpointIO wraps another
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()
    elif inner is not None and type(inner) is TorchCheckpointIO:
        current.checkpoint_io = SafeCheckpointIO()
    elif not isinstance(current, SafeCheckpointIO) and not isinstance(inner, SafeCheckpointIO):
        log.warning(
            "the trainer uses its own checkpoint I/O (%s): checkpoints it loads are not checked "
            "by compressai_vlic",
            type(current).__name__,
        )


# ------------------------------------------------------------------------------ random streams
def collect_rng_states() -> dict[str, Any]:
    """Every random stream of this process, in types ``weights_only=True`` loads."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned."""
    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states.get("numpy")
    if n is not None:
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = states.get("python")
    if p is not None:
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------------------ metrics.csv
class ResumableExperimentWriter(ExperimentWriter):
    """CSV writer that keeps an existing ``metrics.csv``: at its first save, rows of steps from
    the first step it writes on are dropped (a killed run's steps after its checkpoint, which the
    resumed run logs again) and the rest stay; every rewrite is atomic."""

    def __init__(self, log_dir: str) -> None:
        self._trimmed = False
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        pass

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._rewrite(fieldnames, None)

    def _rewrite(self, fieldnames: list[str], before_step: int | None) -> None:
        from compressai_vlic.atomic import atomic_path

        with open(self.metrics_file_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if before_step is not None:
            rows = [r for r in rows if (_step(r) if _step(r) is not None else -1) < before_step]
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def save(self) -> None:
        """Append the rows logged since the last save (see the class docstring)."""
        if not self.metrics:
            return
        if not self._trimmed and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                header = next(csv.reader(fh), [])
            first = min(int(m.get("step", 0)) for m in self.metrics)
            self.metrics_keys = sorted(set(header) | set(self.metrics_keys))
            self._rewrite(self.metrics_keys, first)
        self._trimmed = True
        super().save()


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, except that a resumed run keeps ``metrics.csv``: rows of the steps
    before the resume point stay, rows a killed run logged after its checkpoint are replaced.
    (Lightning's deletes the file when a run starts in a folder that has one.)"""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        """The writer (created on first use)."""
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment


# ------------------------------------------------------------------------------ the module base
class ResumableModule(pl.LightningModule):
    """Base of the package's LightningModules: safe checkpoint loading, atomic saves, kept
    metrics and exact resumes (see the module docstring). Subclasses that override a hook below
    call ``super()``."""

    #: The training's random streams as the last step left them (None while a step runs).
    _rng_between_steps: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        if self._trainer is not None:  # set up by hand (no Trainer): nothing to install
            use_safe_checkpoint_io(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = self._rng_between_steps or collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_checkpoint_fits(checkpoint)
        states = checkpoint.get(RNG_KEY)
        self._rng_between_steps = states if isinstance(states, dict) else None

    def _check_checkpoint_fits(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another model or configuration is one typed line, not a traceback."""
        name = getattr(self._trainer, "ckpt_path", None) if self._trainer else None
        name = name or "the checkpoint"
        state = checkpoint.get("state_dict") or {}
        own = {k: v for k, v in self.state_dict().items() if k in state or not self._optional(k)}
        missing = sorted(k for k in own if k not in state)
        unexpected = sorted(k for k in state if k not in own and not self._optional(k))
        if missing or unexpected:
            raise CheckpointError(
                f"{name}: does not fit this model ({len(missing)} missing keys, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); resume with "
                "the config of the run that wrote it"
            )
        shapes = [
            k
            for k, v in own.items()
            if isinstance(state.get(k), torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
        ]
        if shapes:
            k = shapes[0]
            raise CheckpointError(
                f"{name}: does not fit this model ({len(shapes)} tensors of another shape, e.g. "
                f"{k!r}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}); resume with the "
                "config of the run that wrote it"
            )
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and "optimizer_states" not in checkpoint:
            raise CheckpointError(
                f"{name}: holds weights only (no optimizer state), so a run cannot resume from "
                "it; start from its weights with --model.weights instead"
            )

    def _optional(self, key: str) -> bool:
        """State-dict keys a checkpoint may lack (rebuilt on load); none by default."""
        return False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # What ran between two steps (validation, new data-loader iterators, a resume) does not
        # move the training's random streams: each step starts where the last one ended.
        if self._rng_between_steps is not None:
            set_rng_states(self._rng_between_steps)
            self._rng_between_steps = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._rng_between_steps = collect_rng_states()

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: Any,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, always with ``weights_only=True`` (through
        :class:`SafeCheckpointIO`: local files and URLs, one typed line for a refused file)."""
        import io

        if weights_only is False:
            raise CheckpointError(
                f"{checkpoint_path}: weights_only=False is refused; checkpoints load with "
                "weights_only=True so that loading one cannot run code"
            )
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            return super().load_from_checkpoint(
                checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
            )
        checkpoint = SafeCheckpointIO().load_checkpoint(checkpoint_path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(
            buffer, map_location, hparams_file, strict, weights_only=True, **kwargs
        )
