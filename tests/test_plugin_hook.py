"""The start-up hook, in fresh interpreters: cheap at start-up, effective, off-switchable, unbreakable.

Needs the package pip-installed (the .pth file and the entry points come from the installation);
the source tree goes first on PYTHONPATH so the code under test is this checkout's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _installed() -> None:
    try:
        files = distribution("compressai-vlic").files or []
    except PackageNotFoundError:
        pytest.fail("compressai-vlic is not installed: run `pip install --no-deps .` first")
    if not any(f.name == "compressai_vlic_startup.pth" for f in files):
        pytest.fail("the installed compressai-vlic lacks its .pth hook: reinstall it")


def run_python(
    code: str, cwd: Path, extra_path: list[Path] = (), **env: str
) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with the site hooks active (no -S / -I)."""
    _installed()
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"COMPRESSAI_PLUGINS", "PYTHONPATH"}
    }
    full_env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(REPO)])
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_startup_imports_nothing_heavy(tmp_path):
    proc = run_python(
        """
        import json, sys
        heavy = ["torch", "numpy", "compressai", "compressai_vlic", "importlib.metadata"]
        state = {"hook": "_compressai_vlic_hook" in sys.modules,
                 "finder": any(type(f).__name__ == "_CompressAIPluginFinder"
                               for f in sys.meta_path),
                 "heavy": [m for m in heavy if m in sys.modules]}
        import compressai_vlic  # the package itself is light too
        state["after_package"] = [m for m in heavy[:3] if m in sys.modules]
        print(json.dumps(state))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state == {"hook": True, "finder": True, "heavy": [], "after_package": []}


def test_hook_off_hides_the_plugin_from_the_literal_command(tmp_path):
    proc = run_python(
        """
        import sys
        from compressai.utils.eval_model.__main__ import main
        main(["checkpoint", ".", "-a", "vlic", "-p", "missing.pth.tar"])
        """,
        tmp_path,
        COMPRESSAI_PLUGINS="0",
    )
    assert proc.returncode == 2
    assert "invalid choice: 'vlic'" in proc.stderr


def test_hook_survives_a_broken_compressai_vlic(tmp_path):
    shadow = tmp_path / "shadow" / "compressai_vlic"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    proc = run_python(
        """
        import compressai.zoo as zoo
        print("vlic" in zoo.image_models, "mbt2018" in zoo.image_models)
        """,
        tmp_path,
        extra_path=[shadow.parent],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
    assert "plugin registration failed (RuntimeError: broken on purpose)" in proc.stderr


def test_hook_registers_lazily_and_survives_bogus_and_clashing_entry_points(tmp_path):
    site = tmp_path / "site"
    dist = site / "bogus_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bogus-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[compressai.zoo]\nbogus = no_such_module_xyz:factory\nmbt2018 = no_such_module_xyz:f\n"
        "[compressai.architectures]\nbogus = no_such_module_xyz:Model\n"
    )
    proc = run_python(
        """
        import json, sys, warnings
        warnings.simplefilter("always")
        import compressai.zoo as zoo
        from compressai import registry
        from compressai.zoo.image import model_architectures
        state = {
            "zoo": type(zoo.image_models["vlic"]).__name__,
            "arch": type(model_architectures["vlic"]).__name__,
            "registry": "vlic" in registry.MODELS and "vlic_dpo" in registry.CRITERIONS,
            "model_imported": "compressai_vlic.models" in sys.modules,
            "finder_left": any(type(f).__name__ == "_CompressAIPluginFinder"
                               for f in sys.meta_path),
            "plugins": sorted(k for k in ("bogus", "vlic") if k in zoo.image_models),
            "mbt2018": type(zoo.image_models["mbt2018"]).__name__,
        }
        try:
            model_architectures["bogus"].from_state_dict({})
        except ImportError as exc:
            state["bogus_error"] = str(exc)
        print(json.dumps(state))
        """,
        tmp_path,
        extra_path=[site],
    )
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    error = state.pop("bogus_error")
    assert state == {
        "zoo": "LazyEntryPoint",
        "arch": "LazyArchitecture",
        "registry": True,
        "model_imported": False,  # nothing behind the entry points is imported until used
        "finder_left": False,  # one-shot: removed itself after compressai.zoo was imported
        "plugins": ["bogus", "vlic"],
        "mbt2018": "function",  # CompressAI's own factory, not overwritten
    }
    assert "'mbt2018'" in proc.stderr and "clashes" in proc.stderr
    assert error.startswith("CompressAI plugin 'bogus'") and "no_such_module_xyz" in error
