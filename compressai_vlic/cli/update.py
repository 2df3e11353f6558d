"""`compressai-vlic update ...`: CompressAI's own ``update_model`` with the plugins registered.

The arguments are CompressAI's, unchanged; the exported file is ``NAME-<sha256[:8]>.pth.tar``
(CompressAI's convention), whose path this wrapper prints since CompressAI prints nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compressai_vlic.cli.eval import call_main, safe_checkpoint_loads

#: Exit status of a typed error (main prints it): 1, as for a failed input.
ERROR_STATUS = 1


def _expected_output(module: object, argv: Sequence[str]) -> tuple[Path, str, str] | None:
    """(folder, stem, suffixes) the way update_model names its output; None if argv is invalid."""
    try:
        args = module.setup_args().parse_args(list(argv))  # type: ignore[attr-defined]
    except SystemExit:
        return None
    source = Path(args.filepath).resolve()
    stem = Path(args.name) if args.name else source
    while not args.name and stem.suffixes:
        stem = Path(stem.stem)
    folder = Path(args.dir) if args.dir is not None else Path.cwd()
    return folder, str(stem), "".join(source.suffixes)


def run_argv(argv: Sequence[str]) -> int:
    """Forward ``argv`` to ``python -m compressai.utils.update_model``."""
    from compressai_vlic.plugins import register_entry_points

    register_entry_points()
    import compressai.utils.update_model.__main__ as update_model
    from compressai.zoo.image import model_architectures

    # update_model copies CompressAI's dict when first imported; add plugins registered later.
    for name, cls in model_architectures.items():
        update_model.models.setdefault(name, cls)
    expected = _expected_output(update_model, argv)
    with safe_checkpoint_loads(update_model):
        status = call_main(update_model.main, argv)
    if status == 0 and expected is not None:
        folder, stem, suffixes = expected
        written = sorted(
            folder.glob(f"{stem}-{'[0-9a-f]' * 8}{suffixes}"), key=lambda p: p.stat().st_mtime
        )
        if written:
            print(f"wrote {written[-1]}")
    return status
