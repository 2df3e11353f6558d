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
