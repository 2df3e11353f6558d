"""The package's layers, read from every module's imports (``ast``, nothing is imported).

The library never imports the command line, subpackages depend on each other without cycles,
and test fixtures stay out of the runtime package.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compressai_vlic"
TRAINING = ROOT / "lightning" / "compressai_vlic_lightning"
# Test fixtures: importable from tests and downstream projects, never from the runtime code.
FIXTURES = ("compressai_vlic.testing",)


def _module_name(path: Path) -> str:
    base = TRAINING.parent if TRAINING in path.parents else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute names, relative imports resolved), with lines."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # `from compressai_vlic import cli` imports the subpackage itself
            out += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _runtime_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts)


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "compressai_vlic" or len(parts) < 2:
        return None
    candidate = PACKAGE / parts[1]
    return parts[1] if candidate.is_dir() else None


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_parser_resolves_relative_and_absolute_imports():
    """The checks below are only as good as the import reader: it must see every form."""
    imports = {m for m, _ in _imports(PACKAGE / "judges" / "audit" / "run.py")}
    assert "compressai_vlic.judges.audit.collect" in imports
    assert "compressai_vlic.judges.compose" in imports
    assert (
        _module_name(PACKAGE / "judges" / "audit" / "__init__.py") == "compressai_vlic.judges.audit"
    )
    assert _module_name(TRAINING / "stage2.py") == "compressai_vlic_lightning.stage2"


def test_the_library_never_imports_the_command_line():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for root in (PACKAGE, TRAINING)
        for path in sorted(root.rglob("*.py"))
        if not _is_under(_module_name(path), "compressai_vlic.cli")
        for module, line in _imports(path)
        if _is_under(module, "compressai_vlic.cli")
    ]
    assert not offenders, "\n".join(offenders)


def test_no_cycle_between_subpackages():
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], str] = {}
    for path in _runtime_modules():
        source = _subpackage(_module_name(path))
        for module, line in _imports(path):
            target = _subpackage(module)
            if source and target and target != source:
                graph[source].add(target)
                where.setdefault((source, target), f"{path.relative_to(ROOT)}:{line}")
    # depth-first search for a back edge
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            edges = [where[(a, b)] for a, b in itertools.pairwise(cycle)]
            pytest.fail(f"import cycle {' -> '.join(cycle)}: " + ", ".join(edges))


def test_no_test_fixture_in_the_runtime_package():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for root in (PACKAGE, TRAINING)
        for path in (_runtime_modules() if root == PACKAGE else sorted(root.rglob("*.py")))
        for module, line in _imports(path)
        if any(_is_under(module, f) for f in FIXTURES)
    ]
    assert not offenders, "\n".join(offenders)
    # the fixtures themselves live in testing/, not next to the judges
    for name in ("loopback_server.py", "tiny_vlm.py", "bench.py"):
        assert not (PACKAGE / "judges" / name).exists(), name
    fixtures = {p.name for p in (PACKAGE / "testing").glob("*.py")}
    assert {"loopback_server.py", "tiny_vlm.py"} <= fixtures
    # and nothing in the runtime package starts an HTTP server or builds a random VLM
    for path in _runtime_modules():
        text = path.read_text()
        assert "ThreadingHTTPServer" not in text, path
        assert "build_tiny_vlm" not in text, path


def _module_files() -> dict[str, Path]:
    """Every module of the package and of the training package, by dotted name."""
    files = {}
    for root in (PACKAGE, TRAINING):
        for path in sorted(root.rglob("*.py")):
            files[_module_name(path)] = path
    return files


def test_judges_import_neither_the_bitstream_format_nor_the_student():
    """``judges`` judges: the student registers itself (an entry point) and codec pair-making
    lives with its users, so no judges module reaches the bitstream format or the student, even
    through another module of the package, a function-local import or a "module:attr" string."""
    files = _module_files()
    graph = {
        name: {m for m, _ in _imports(path) if m in files and m != name}
        for name, path in files.items()
    }
    forbidden = ("compressai_vlic.bitstream", "compressai_vlic.student")
    offenders = []
    for name, path in files.items():
        if not _is_under(name, "compressai_vlic.judges"):
            continue
        for word in forbidden:  # lazy tables and importlib names are strings
            if word in path.read_text():
                offenders.append(f"{path.relative_to(ROOT)} names {word}")
        parent: dict[str, str] = {name: ""}
        stack = [name]
        while stack:
            here = stack.pop()
            for nxt in sorted(graph[here] - set(parent)):
                parent[nxt] = here
                stack.append(nxt)
        for reached in sorted(parent):
            if any(_is_under(reached, f) for f in forbidden):
                chain = [reached]
                while parent[chain[-1]]:
                    chain.append(parent[chain[-1]])
                offenders.append(" -> ".join(reversed(chain)))
    assert not offenders, "\n".join(offenders)
    assert not (PACKAGE / "judges" / "student").exists()
    assert not (PACKAGE / "judges" / "pair_codes.py").exists()


def test_the_package_never_calls_torch_jit_script():
    """``torch.jit.script`` is deprecated; pytest filters its warning by message only because
    torch_geometric calls it when compressai is imported (torch names itself as the source)."""
    offenders = []
    for path in _module_files().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "script":
                if isinstance(node.value, ast.Attribute) and node.value.attr == "jit":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "torch.jit":
                if any(alias.name == "script" for alias in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "\n".join(offenders)


_IMPORT_EVERY_MODULE = r"""
import importlib, json, sys, warnings
found = {}
for name in json.loads(sys.argv[1]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional extra that is not installed: not this test's
            print(f"skipped {name}: {exc}", file=sys.stderr)
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            where = f"{w.filename}:{w.lineno}"
            found.setdefault(name, []).append(f"{w.category.__name__} at {where}: {w.message}")
print(json.dumps(found))
"""


@pytest.mark.slow
def test_no_module_raises_a_deprecation_warning_on_import():
    """Import every module of both packages in a fresh interpreter with every warning recorded
    (Python hides DeprecationWarning outside ``__main__`` by default; here none is hidden): no
    DeprecationWarning, PendingDeprecationWarning or FutureWarning, from this package's own code
    or from what it imports, reaches a user's import."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TRAINING.parent)])
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_MODULE, json.dumps(sorted(_module_files()))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not found, json.dumps(found, indent=1)
